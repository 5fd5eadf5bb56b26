"""Detector jobs: training (loop.py, data.py, validation.py) and cropping datasets (crops.py)."""
