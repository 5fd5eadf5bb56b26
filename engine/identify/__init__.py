"""The open-set identification task (eval.py task=identify): the threshold and weights tuned on a
held-out split of the database, the known / new decision per query, predictions, metrics and report."""
