"""Crop detectors on the synthetic scenes: training speed, accuracy, cropping speed, and re-ID on crops.

    python scripts/bench/bench_detector.py                          # the issue's measurements (about 40 min on 2 cores)
    python scripts/bench/bench_detector.py --minutes 5 --reid-minutes 2 --skip reid
    python scripts/bench/bench_detector.py --tiny                   # the plumbing in a minute: figures mean nothing

Stages (each one's figures land in OUT/results.json and OUT/results.md):
1. throughput: training images per second of the same YOLO model, batch, image size, workers and
   float32 precision through our loop (train.py task=detector) and through ultralytics' own
   trainer, one after the other in this process; steps after the first `--skip-steps` are timed.
   Our loop in bf16 (where the CPU has it) is added as a third line.
2. detector: `python train.py --config configs/train/detector_yolo.yaml` for `--minutes` on the
   scenes of the synthetic set (seed `--seed`), then mAP50 / mAP50-95 on its own held-out
   identities and on a scene set nobody trained on (generator seed `--seed` + 1).
3. crop: detection over that unseen scene set with an empty cache (images per second, decode
   included), how many fell back to the full frame, and the mean IoU of the chosen box with the true one.
4. reid: the default re-ID recipe for `--reid-minutes` on the scenes, then eval.py, three ways:
   full frames, the detector's crops, and the true boxes (the ceiling); `--matcher sift` adds
   keypoint re-ranking of each (the scenes share backgrounds, which fool keypoints on full frames).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
from benchmarking import REPO, cpu_line

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.config import load_config
from core.detector_schema import DetectorTrainConfig
from core.errors import cli_entry
from core.schema import CropConfig, DataConfig
from data.formats import load_table_with_root
from data.synthetic import ensure_synthetic
from data.synthetic_scene import box_iou
from detectors import load_detector
from engine.crops import crop_with_manifest
from engine.detection.annotations import load_annotations, write_yolo_dataset
from engine.detection.validation import measure_map

RECIPE = REPO / "configs" / "train" / "detector_yolo.yaml"
STAGES = ("throughput", "detector", "crop", "reid")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_detector")
    parser.add_argument("--minutes", type=float, default=15.0, help="detector training budget")
    parser.add_argument("--reid-minutes", type=float, default=3.0, help="each re-ID training budget")
    parser.add_argument("--individuals", type=int, default=120)
    parser.add_argument("--images", type=int, default=12, help="photos per individual")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the training scenes")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="throughput: optimizer steps timed per trainer")
    parser.add_argument("--skip-steps", type=int, default=5, help="throughput: first steps left out (warm-up)")
    parser.add_argument("--reid-overrides", default="", help="reid: extra train.py/eval.py overrides, space-separated")
    parser.add_argument("--matcher", default="", help="reid: also re-rank with this matcher (e.g. sift)")
    parser.add_argument("--skip", default="", help=f"comma-separated stages to leave out: {', '.join(STAGES)}")
    parser.add_argument("--tiny", action="store_true", help="check the plumbing in a minute")
    parser.add_argument("--measure-ours", nargs=2, metavar=("PRECISION", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.minutes, args.reid_minutes, args.individuals, args.images = 0.3, 0.2, 12, 4
        args.imgsz, args.batch_size, args.steps, args.skip_steps = 64, 4, 4, 1
        args.reid_overrides = "train.batch_size=8 data.image_size=32"
    return args


def scenes(args, seed: int) -> Path:
    return ensure_synthetic(seed=seed, individuals=args.individuals, images_per_individual=args.images, scenes=True)


def scene_overrides(args, seed: int) -> List[str]:
    return ["data.format=synthetic", "data.synthetic.scenes=true", f"data.synthetic.seed={seed}",
            f"data.synthetic.individuals={args.individuals}", f"data.synthetic.images_per_individual={args.images}"]


def images_per_second(stamps: List[float], batch: int, skip: int) -> float:
    timed = stamps[skip:]
    return (len(timed) - 1) * batch / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")


# ----------------------------------------------------------------------------- 1. throughput
def ours(args, out: Path, precision: str) -> float:
    from engine.detection.loop import DetectorTrainer  # the training loop's imports, only when it trains

    overrides = [f"output_dir={out}", f"imgsz={args.imgsz}", f"train.batch_size={args.batch_size}",
                 f"train.max_steps={args.steps}", "train.max_minutes=0", "train.checkpoint_every=0",
                 f"train.mixed_precision={precision}", "val.max_images=1", *scene_overrides(args, args.seed)]
    trainer = DetectorTrainer(load_config(DetectorTrainConfig, RECIPE, overrides))
    stamps: List[float] = []
    step = trainer._micro_step

    def timed(*a):
        done = step(*a)
        if done:
            stamps.append(time.perf_counter())
        return done

    trainer._micro_step = timed
    trainer.fit()
    return images_per_second(stamps, args.batch_size, args.skip_steps)


def theirs(args, layout: Path, out: Path, train_images: int) -> float:
    from detectors.reference import ultralytics_batch_times

    stamps = ultralytics_batch_times(layout, out, cfg="yolov8n.yaml", imgsz=args.imgsz, batch_size=args.batch_size,
                                     steps=args.steps, train_images=train_images)
    return images_per_second(stamps, args.batch_size, args.skip_steps)


def ours_in_a_process(args, out: Path, precision: str, argv) -> float:
    """`ours` in a fresh process: Accelerate fixes the mixed precision once per process."""
    done = subprocess.run([sys.executable, __file__, *argv, "--measure-ours", precision, str(out)], check=True,
                          cwd=REPO, capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def throughput(args, out: Path, argv) -> Dict[str, float]:
    result = {"fp32_ours": ours_in_a_process(args, out / "ours-fp32", "no", argv)}
    layout = out / "ours-fp32" / "yolo_data" / "data.yaml"
    train_images = len(list((layout.parent / "images" / "train").iterdir()))
    result["fp32_ultralytics"] = theirs(args, layout, out, train_images)
    result["ratio"] = result["fp32_ours"] / result["fp32_ultralytics"]
    result["auto_ours"] = ours_in_a_process(args, out / "ours-auto", "auto", argv)
    return result


# ----------------------------------------------------------------------------- 2-3. detector and cropping
def unseen_scene_map(args, export: Path, out: Path) -> Dict[str, float]:
    detector, meta = load_detector(export)
    table, root = load_table_with_root(load_config(DataConfig, None, [o[len("data."):] for o in scene_overrides(args, args.seed + 1)]))
    layout = write_yolo_dataset(load_annotations("yolo", images=str(root / "images"), path=str(root / "labels")),
                                out / "unseen_layout", val_fraction=0.5, seed=0)
    images = [str(layout.parent / "images" / part) for part in ("train", "val")]
    dataset = detector.build_dataset(images, train=False, batch_size=args.batch_size)
    cfg = load_config(DetectorTrainConfig, RECIPE, [f"val.max_images={len(dataset)}", "val.grid=0"]).val
    metrics, _ = measure_map(detector, detector.module, dataset, cfg, batch_size=args.batch_size, device="cpu")
    return {"own_split": meta["metrics"], "unseen_scenes": metrics, "images": len(dataset)}


def crop_speed(args, export: Path, out: Path) -> Dict[str, float]:
    table, _ = load_table_with_root(load_config(DataConfig, None, [o[len("data."):] for o in scene_overrides(args, args.seed + 1)]))
    cache = out / "crop_cache"
    shutil.rmtree(cache, ignore_errors=True)
    crop = CropConfig(detector=str(export), cache=str(cache))
    start = time.perf_counter()
    cropped, manifest = crop_with_manifest(table, crop)
    seconds = time.perf_counter() - start
    manifest.to_csv(out / "crops.csv", index=False)
    # A fallback crops nothing: it counts as IoU 0 with the true box.
    ious = np.array([0.0 if row.fallback else box_iou([row.x, row.y, row.w, row.h], truth)
                     for row, truth in zip(manifest.itertuples(), table["bbox"])])
    return {"images": len(table), "seconds": seconds, "images_per_second": len(table) / seconds,
            "fallback": int(manifest["fallback"].sum()), "mean_iou_with_true_box": float(ious.mean()),
            "iou_at_least_0.5": float((ious >= 0.5).mean())}


# ----------------------------------------------------------------------------- 4. re-ID on crops
def reid(args, export: Path, out: Path) -> Dict[str, Dict[str, float]]:
    views = {"full frames": ["data.crop_to_bbox=false"],
             "detector crops": [f"data.crop.detector={export}", f"data.crop.cache={out / 'crop_cache'}"],
             "true boxes": []}
    results = {}
    for name, view in views.items():
        run = out / "reid" / name.replace(" ", "_")
        data = scene_overrides(args, args.seed) + view
        subprocess.run([sys.executable, str(REPO / "train.py"), f"output_dir={run}", f"train.max_minutes={args.reid_minutes}",
                        *data, *args.reid_overrides.split()], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        for matcher in ["none"] + ([args.matcher] if args.matcher else []):
            ev = run / f"eval-{matcher}"
            subprocess.run([sys.executable, str(REPO / "eval.py"), f"models=[{run / 'export'}]", f"output_dir={ev}",
                            "embed_cache=none", f"rerank.matcher={matcher}", *data], check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL)
            results[f"{name}, re-rank {matcher}"] = summary(json.loads((ev / "metrics.json").read_text()))
    return results


def summary(metrics: Dict) -> Dict[str, float]:
    """eval.py's metrics.json -> the ensemble's rank-1 and the tuned threshold's BAKS, BAUS, score."""
    tuned = metrics["tuned"]
    return {"rank1": metrics["retrieval"]["ensemble (identity ranking)"]["rank1"],
            **{key: tuned[key] for key in ("BAKS", "BAUS", "score")}}


def write_report(out: Path, results: Dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = [f"# Crop detectors on synthetic scenes\n\nCPU: {results['cpu']}.\n"]
    if "throughput" in results:
        t = results["throughput"]
        lines += ["## Training throughput (images/s, same model, batch and size)\n",
                  f"- ours, float32: {t['fp32_ours']:.2f}", f"- ultralytics' trainer, float32: {t['fp32_ultralytics']:.2f}",
                  f"- ratio ours / ultralytics: **{t['ratio']:.2f}x**", f"- ours, mixed precision auto: {t['auto_ours']:.2f}\n"]
    if "detector" in results:
        d = results["detector"]
        lines += [f"## Detector ({d['minutes']} min, {d['steps']} steps)\n",
                  f"- own held-out identities: mAP50 {d['own_split']['mAP50']:.3f}, mAP50-95 {d['own_split']['mAP50-95']:.3f}",
                  f"- unseen scene set ({d['images']} images): mAP50 **{d['unseen_scenes']['mAP50']:.3f}**, "
                  f"mAP50-95 {d['unseen_scenes']['mAP50-95']:.3f}\n"]
    if "crop" in results:
        c = results["crop"]
        lines += ["## Cropping\n", f"- {c['images']} images in {c['seconds']:.1f} s: **{c['images_per_second']:.1f} img/s**",
                  f"- fell back to the full frame: {c['fallback']}; mean IoU with the true box {c['mean_iou_with_true_box']:.3f} "
                  f"({c['iou_at_least_0.5']:.1%} at IoU >= 0.5)\n"]
    if "reid" in results:
        lines += ["## Re-identification, same budget\n", "| images | rank-1 | BAKS | BAUS | score |", "|---|---|---|---|---|"]
        for name, m in results["reid"].items():
            lines.append(f"| {name} | {m.get('rank1', float('nan')):.3f} | {m.get('BAKS', float('nan')):.3f} | "
                         f"{m.get('BAUS', float('nan')):.3f} | {m.get('score', float('nan')):.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


@cli_entry
def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.measure_ours:
        print(ours(args, Path(args.measure_ours[1]), args.measure_ours[0]))
        return {}
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    skip = {s for s in args.skip.split(",") if s}
    results: Dict = {"cpu": cpu_line(), "args": vars(args)}
    for seed in (args.seed, args.seed + 1):  # generated before any timing starts
        scenes(args, seed)
    if "throughput" not in skip:
        results["throughput"] = throughput(args, Path(tempfile.mkdtemp(prefix="throughput-", dir=out)), list(argv or []))
        write_report(out, results)
    export = out / "detector" / "export"
    if "detector" not in skip:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(RECIPE), f"output_dir={out / 'detector'}",
                        f"train.max_minutes={args.minutes}", f"imgsz={args.imgsz}", f"train.batch_size={args.batch_size}",
                        *scene_overrides(args, args.seed)], check=True, cwd=REPO)
        measured = unseen_scene_map(args, export, out)
        results["detector"] = {"minutes": args.minutes, "steps": measured["own_split"]["step"],
                               "wall_seconds": time.perf_counter() - start, **measured}
        write_report(out, results)
    if "crop" not in skip:
        results["crop"] = crop_speed(args, export, out)
        write_report(out, results)
    if "reid" not in skip:
        results["reid"] = reid(args, export, out)
        write_report(out, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
