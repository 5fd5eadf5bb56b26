"""Training and evaluation engine: training loop plumbing, metrics, retrieval, calibration, submissions."""
