"""Scoring shared by every task: the models' outputs (extracted once, cached), the scorers of the
ensemble, their calibration to probabilities, the soft vote, the neighbour re-rankers and the choice
between a fusion model and its members. Tasks (identify, cluster) build on it; it knows none of them."""
