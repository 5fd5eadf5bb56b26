"""Animal detectors that crop photos before re-identification (ultralytics YOLO first).

    train:  python train.py --config configs/train/detector_yolo.yaml
    crop:   python scripts/crop.py --detector runs/detector/export --format folders --root PHOTOS
    use:    python train.py data.crop.detector=runs/detector/export ...   (also eval.py)

Only this package imports ultralytics (AGPL-3.0, the `detect` extra).
"""
from detectors.base import DETECTORS, Detections, Detector, build_detector
from detectors.export import detector_checksum, is_detector_export, load_detector, save_detector
from detectors.publishing import PublishedDetector  # noqa: F401  (registers the store's `detector` kind)

# Only this package imports ultralytics, and only once a YOLO detector is used: it is the `detect` extra.
DETECTORS.register_lazy("yolo", "detectors.yolo", requires="ultralytics: pip install -e '.[detect]'")

__all__ = ["DETECTORS", "Detections", "Detector", "build_detector", "detector_checksum", "is_detector_export",
           "load_detector", "save_detector"]
