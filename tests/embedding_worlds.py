"""Embeddings of made-up identities for evaluation tests that need no model."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from core.schema import RerankConfig
from data.table import make_table
from engine.matching.scorer import MatcherScorer


def clustered(seed=0, identities=12, per_identity=6, new=3, dim=16, noise=0.6, datasets=("A", "B")):
    """Gallery and query tables with embeddings: each identity a direction plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities + new, dim))
    rows, vectors = [], []
    for i, centre in enumerate(centres):
        dataset = datasets[(i + 1) % len(datasets)]  # odd identities in the first dataset
        for k in range(per_identity):
            split = "query" if i >= identities or k == 0 else "database"
            rows.append({"image_id": f"{i}-{k}", "identity": f"{dataset}{i}", "path": f"/x/{i}-{k}.jpg",
                         "split": split, "dataset": dataset})
            vectors.append(centre + rng.normal(scale=noise, size=dim))
    table = make_table(rows)
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    is_query = (table["split"] == "query").to_numpy()
    gallery, query = table[~is_query].reset_index(drop=True), table[is_query].reset_index(drop=True)
    return gallery, query, np.concatenate([vectors[~is_query], vectors[is_query]])


class OracleMatcher(MatcherScorer):
    """A shortlist scorer of kind "matcher" that knows the truth (or, with `noise`, nothing at all)."""

    def __init__(self, identities: np.ndarray, noise: bool):
        self.output, self.pairs = None, SimpleNamespace(matched=0)  # pairs "matched": scored
        self.cfg = RerankConfig(matcher="sift")
        self.weight, self.calibrator, self.calibration_queries = 1.0, None, 200
        self.identities, self.noise = identities, noise

    def pair_scores(self, space, q_rows, g_rows):
        self.pairs.matched += len(q_rows)
        if self.noise:
            return np.random.default_rng(len(q_rows)).random(len(q_rows))
        return (self.identities[q_rows] == self.identities[g_rows]).astype(float) + 0.01 * np.arange(len(q_rows)) % 1
