"""ultralytics' own trainer on one of our layouts, timed: the reference our loop's speed is measured
against (scripts/bench/bench_detector.py). Here because only `detectors/` imports ultralytics."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List

import detectors.yolo  # noqa: F401  (first import of ultralytics, with the process state it patches restored)


def ultralytics_batch_times(layout: Path, out: Path, *, cfg: str, imgsz: int, batch_size: int, steps: int,
                            train_images: int, workers: int = 2) -> List[float]:
    """Clock time at the end of each of `steps` float32 training batches of model YAML `cfg` on the
    layout's data.yaml, with AdamW at 2e-3 and no warmup, as our detector recipe trains."""
    from ultralytics import YOLO

    stamps: List[float] = []
    model = YOLO(cfg)
    model.add_callback("on_train_batch_end", lambda trainer: stamps.append(time.perf_counter()))
    # One epoch over a fraction of the images: exactly `steps` batches (ultralytics drops no last batch).
    fraction = min(1.0, steps * batch_size / train_images)
    model.train(data=str(layout), epochs=1, imgsz=imgsz, batch=batch_size, workers=workers, device="cpu",
                amp=False, val=False, plots=False, optimizer="AdamW", lr0=2e-3, warmup_epochs=0, close_mosaic=0,
                fraction=fraction, project=str(out), name="ultralytics", exist_ok=True, verbose=False, seed=0)
    return stamps
