"""Scores against the query labels (metrics.json): with the tuned threshold, with the best threshold
in hindsight (an upper bound, never a result), and retrieval metrics per scorer and for the ensemble."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pandas as pd

from core.errors import DataError
from core.schema import ThresholdConfig
from engine.identify.decision import Evaluation
from engine.metrics import animalclef_score, cmc, map_at_5, mean_average_precision
from engine.openset import decide, humpback_guesses, thresholds_for, tune_threshold
from engine.outputs.artifacts import finite


def has_query_labels(query: pd.DataFrame) -> bool:
    """Scorable when some query names its individual; the others count as new individuals."""
    return bool(query["identity"].notna().any())


def query_metrics(threshold: ThresholdConfig, gallery: pd.DataFrame, query: pd.DataFrame, ev: Evaluation) -> Dict[str, Any]:
    """Scores against the query labels: with the tuned threshold, and with the best one in hindsight."""
    truth = query["identity"].to_numpy(dtype=object)
    datasets = query["dataset"].tolist()
    known = set(gallery["identity"])
    limits = thresholds_for(datasets, ev.threshold.threshold, len(query))
    whale = ev.threshold.new_whale["global"] if ev.threshold.new_whale else None

    def scored(decided, limits_used) -> Dict[str, Any]:
        places = limits_used if whale is None else np.full(len(query), whale)
        guesses = [humpback_guesses(c, t) for c, t in zip(ev.candidates, places, strict=True)]
        return {**animalclef_score(truth, decided, datasets, known), "MAP@5": map_at_5(truth, guesses)}

    result: Dict[str, Any] = {
        "queries": len(query), "known_queries": int(pd.Series(truth, dtype=object).isin(known).sum()),
        "tuned": {"threshold": {k: v for k, v in ev.threshold.to_dict().items() if k != "validation"},
                  **scored(ev.decided, limits)},
    }
    try:
        best = tune_threshold(ev.best_scores, ev.best_ids, truth, known, datasets, per_dataset=threshold.per_dataset)
        chosen = best if threshold.per_dataset else best.overall
        hindsight_limits = thresholds_for(datasets, chosen, len(query))
        result["hindsight"] = {
            "note": "threshold chosen WITH the query labels: an upper bound for this model, not a result",
            "threshold": {"global": best.overall, "per_dataset": best.per_dataset if threshold.per_dataset else {}},
            **scored(decide(ev.best_ids, ev.best_scores, chosen, datasets), hindsight_limits)}
    except DataError as err:
        result["hindsight"] = {"note": f"not computed: {err}"}
    ranked = [[identity for identity, _ in c] for c in ev.candidates]
    result["retrieval"] = {"ensemble (identity ranking)": cmc(ranked, truth, ks=(1, 5), gallery_identities=known)}
    gallery_labels = gallery["identity"].to_numpy(dtype=object)
    for name, ranking in ev.rankings.items():
        image_labels = ranking.labels(gallery_labels)
        result["retrieval"][name] = {**cmc(image_labels, truth, ks=(1, 5), gallery_identities=known),
                                     "mAP": mean_average_precision(image_labels, truth, gallery_labels=gallery_labels)}
    return finite(result)


