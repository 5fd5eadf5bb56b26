"""Keypoint re-ranking of the global shortlist: features per distinct image (keypoints.py), matches
per shortlisted pair (pairs.py), and the matcher as a shortlist scorer of the ensemble (scorer.py)."""
