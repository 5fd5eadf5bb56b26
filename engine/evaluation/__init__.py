"""Evaluation: scorers, calibration, soft voting, the open-set decision, submissions, metrics and the report."""
