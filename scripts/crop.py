"""Detect the animal in every image of a dataset and write the crops manifest.

    python scripts/crop.py --detector runs/detector/export --format folders --root PHOTOS
    python scripts/crop.py --detector runs/detector/export --format humpback --root DIR --choose central

The manifest (`--out`, default crops.csv) has one row per image: image_id, path, the chosen box
x, y, w, h in the full image's pixels, its confidence, whether the image fell back to its full
frame (nothing reached --min-confidence) and how many boxes did. Detections are cached (the same
cache as `data.crop.detector=...` in train.py and eval.py), so those runs then crop without
detecting again; a second run of this script reads the cache too.
"""
from __future__ import annotations

import argparse
import sys
import time

import engine.components  # noqa: F401  (the built-in names a config may use, registered)
from core.config import load_config
from core.csv_cells import safe_cells
from core.errors import cli_entry
from core.files import atomic_write_text
from core.schema import SYNTHETIC, CropConfig, DataConfig
from core.schema_rules import BOX_CHOICES
from data.formats import DATASETS, load_table_with_root
from detectors import load_detector
from engine.crops import crop_with_manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector", required=True, help="detector export folder (train.py task=detector) or zoo name")
    parser.add_argument("--format", default="folders", choices=[*DATASETS.names(), SYNTHETIC], help="dataset format")
    parser.add_argument("--root", default="", help="dataset root (not needed for --format synthetic)")
    parser.add_argument("--out", default="crops.csv", help="manifest CSV to write")
    parser.add_argument("--min-confidence", type=float, default=CropConfig.min_confidence,
                        help="below this the full frame is kept")
    parser.add_argument("--choose", default=CropConfig.choose, choices=BOX_CHOICES,
                        help="with several animals in view: the most confident, or the one nearest the centre")
    parser.add_argument("--batch-size", type=int, default=CropConfig.batch_size, help="images per forward pass")
    parser.add_argument("--cache", default="", help="detection cache folder ('none' = off)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="data config overrides, e.g. synthetic.scenes=true")
    return parser


@cli_entry
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    data = load_config(DataConfig, None, [f"format={args.format}", f"root={args.root}", *args.overrides])
    crop = load_config(CropConfig, None, [f"detector={args.detector}", f"min_confidence={args.min_confidence}",
                                          f"choose={args.choose}", f"batch_size={args.batch_size}", f"cache={args.cache}"])
    table, _ = load_table_with_root(data)
    detector, _ = load_detector(args.detector)
    start = time.perf_counter()
    _, manifest = crop_with_manifest(table, crop, detector=detector)
    seconds = time.perf_counter() - start
    atomic_write_text(args.out, safe_cells(manifest).to_csv(index=False, lineterminator="\n"))
    fallback = int(manifest["fallback"].sum())
    print(f"{len(manifest)} images in {seconds:.1f} s ({len(manifest) / max(seconds, 1e-9):.1f} img/s, cache included): "
          f"{len(manifest) - fallback} cropped, {fallback} kept their full frame; manifest {args.out}")
    return {"images": len(manifest), "fallback": fallback, "seconds": seconds, "manifest": args.out}


if __name__ == "__main__":
    main(sys.argv[1:])
