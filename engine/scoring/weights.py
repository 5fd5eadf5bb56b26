"""The weights a held-out split may choose for a kind of scorer: tuned by identification
(rerank.tune_weight, rerank.tune_pair_weight) and by clustering alike."""

MATCHER_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # 0: the matcher (or a neighbour re-ranker) does not help here
PAIR_HEAD_FACTORS = (0.0, 0.25, 0.5, 1.0)  # of a pair head's share of its model's weight
# A scorer option (a keypoint weighting, a geometry) leaves its preferred value only for one that
# beats it by this much on the held-out split: a few dozen validation queries move by more than that
# between equivalent settings.
OPTION_MARGIN = 0.005
