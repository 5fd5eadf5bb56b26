"""rerank.adaptive: queries certain on the global vote skip the shortlist scorers; the margin is
chosen on the held-out database split, and where queries are certain the submission is the
full vote's with fewer pairs re-scored."""
from __future__ import annotations

import numpy as np

from core.config import load_config
from core.schema import EvalConfig
from engine.scoring.adaptive import MARGINS, certain, choose_margin
from tests.test_rerank import RECIPE


def test_a_query_is_certain_far_from_its_threshold_and_above_the_second_identity():
    vote = [[("a", 0.95), ("b", 0.1)], [("a", 0.95), ("b", 0.9)], [("a", 0.1)], [("a", 0.55)], []]
    sure = certain(vote, np.full(5, 0.5), 0.3)
    assert sure.tolist() == [True, False, True, False, True]  # close second / near the threshold: matched
    assert not certain(vote, np.full(5, 0.5), None).any()


def test_the_smallest_margin_that_keeps_the_validation_score_is_chosen():
    global_vote = [[("a", 0.9)], [("b", 0.65)]]
    full_vote = [[("a", 0.9)], [("b", 0.2)]]  # matching turns the second query into a new individual
    limits = np.full(2, 0.5)
    record = choose_margin(global_vote, full_vote, limits, lambda c: -sum(x[0][1] > 0.5 for x in c if x))
    assert record.margin == 0.2  # 0.15 keeps the second query unmatched and loses its decision
    assert record.skipped_fraction["0.2"] == 0.5 and set(record.validation_score) == {str(m) for m in MARGINS}


def _evaluate(adaptive: bool):
    from engine.identify.decision import evaluate_outputs
    from engine.scoring.scorers import ModelOutput
    from tests.embedding_worlds import clustered

    gallery, query, vectors = clustered(seed=1, identities=12, noise=0.05)  # tight identities: most queries certain
    cfg = load_config(EvalConfig, RECIPE, ["rerank.matcher=none", "rerank.shortlist=10", "threshold.min_queries=30",
                                           "rerank.neighbours=[kreciprocal]", f"rerank.adaptive={str(adaptive).lower()}"])
    return query, evaluate_outputs(cfg, gallery, query, [ModelOutput("m", vectors)])


def test_where_queries_are_certain_the_adaptive_shortlist_gives_the_same_submission_with_fewer_pairs():
    query, full = _evaluate(False)
    _, adaptive = _evaluate(True)
    assert full.threshold.adaptive is None and full.skipped == 0
    assert adaptive.threshold.adaptive.margin is not None
    assert adaptive.skipped >= len(query) * 0.8  # 25 of 30: the others are matched as before
    assert list(adaptive.decided) == list(full.decided)
    sure = (adaptive.shortlist < 0).all(axis=1)
    assert sure.sum() == adaptive.skipped and (adaptive.shortlist[~sure] == full.shortlist[~sure]).all()
    assert (adaptive.shortlist >= 0).sum() < (full.shortlist >= 0).sum()
