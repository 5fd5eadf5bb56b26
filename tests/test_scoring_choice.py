"""Eval-time choice when an ensemble holds a fusion model (engine.scoring.choice): the fusion,
its members alone, their blend and soft vote are tuned on the held-out database split, and each
dataset's queries are scored by the best; a fusion can only help."""
from __future__ import annotations

import numpy as np
import pytest

from core.schema import EvalConfig
from engine.identify.decision import evaluate_outputs
from engine.metrics import animalclef_score
from engine.scoring.choice import AS_GIVEN, SCORINGS, ScoringChoice, choose, describe_choice, scorings_for
from engine.scoring.scorers import ModelOutput
from tests.embedding_worlds import clustered


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _fusion(vectors, members, fused=None):
    return ModelOutput("fusion", vectors if fused is None else fused, members=members)


def test_only_an_ensemble_holding_a_fusion_model_has_alternatives():
    a, b = ModelOutput("a", np.eye(3, dtype=np.float32)), ModelOutput("b", np.eye(3, dtype=np.float32))
    assert [s.name for s in scorings_for([a, b], "isotonic")] == [AS_GIVEN]
    names = [s.name for s in scorings_for([_fusion(np.eye(3, dtype=np.float32), [a, b])], "isotonic")]
    assert names[0] == AS_GIVEN and len(names) == 5 and set(SCORINGS.names()) >= {"member_alone", "member_blend"}
    blend = next(s for s in scorings_for([_fusion(np.eye(3, dtype=np.float32), [a, b])], "isotonic") if "blend" in s.name)
    assert blend.calibration == "none" and [o.name for o in blend.outputs] == ["a", "b"]
    assert [s.name for s in scorings_for([_fusion(np.eye(3, dtype=np.float32), [a, b])], "isotonic",
                                         alternatives=False)] == [AS_GIVEN]


def test_ties_go_to_the_ensemble_as_given_and_each_dataset_chooses_its_own():
    validation = {AS_GIVEN: {"A": 0.5, "B": 0.7}, "member a alone": {"A": 0.5, "B": 0.9}, "blend": {"A": 0.4, "B": 0.2}}
    assert choose(validation, ["A", "B"]) == {"A": AS_GIVEN, "B": "member a alone"}
    record = ScoringChoice({"A": AS_GIVEN}, True, {AS_GIVEN: {"A": 0.5}, "member a alone": {"A": 0.5}})
    assert "A: ensemble as given; ensemble as given: 0.500, member a alone: 0.500" in describe_choice(record)


def _score(ev, gallery, query):
    return animalclef_score(query["identity"], ev.decided, query["dataset"], set(gallery["identity"]))["score"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_fusion_that_carries_no_identity_falls_back_to_its_members_per_dataset(seed):
    """Dataset A: the fused embedding is noise (a fusion met a species it was not fitted on), the
    members are informative; dataset B: the fusion is the clean signal and the members are noisy.
    The choice keeps the fusion on B and falls back on A, and beats the fusion alone."""
    gallery, query, clean = clustered(seed=seed, identities=24, per_identity=8, new=6, dim=32, noise=0.5)
    rng = np.random.default_rng(seed + 10)
    rows = np.concatenate([gallery["dataset"].to_numpy(), query["dataset"].to_numpy()])
    on_a = (rows == "A")[:, None]
    noise = _unit(rng.normal(size=clean.shape))
    noisy_members = [_unit(clean + rng.normal(scale=0.45, size=clean.shape)) for _ in range(2)]
    members = [ModelOutput(f"m{i}", np.where(on_a, noisy_members[i], _unit(noise + 0.05 * clean)))
               for i in range(2)]
    fused = np.where(on_a, noise, clean)
    cfg = EvalConfig()
    chosen = evaluate_outputs(cfg, gallery, query, [_fusion(None, members, fused)])
    choice = chosen.threshold.scoring_choice
    assert choice.chosen["B"] == AS_GIVEN
    assert choice.chosen["A"] != AS_GIVEN
    assert set(choice.validation_score) == {AS_GIVEN, "member m0 alone", "member m1 alone",
                                               "members' static blend (raw cosine, equal weights)",
                                               "members' calibrated soft vote"}
    from dataclasses import replace

    alone = evaluate_outputs(replace(cfg, choose_scoring=False), gallery, query, [_fusion(None, members, fused)])
    assert alone.threshold.scoring_choice is None
    assert _score(chosen, gallery, query) > _score(alone, gallery, query)
    # Queries of B are decided exactly as the fusion alone decides them.
    on_b = (query["dataset"] == "B").to_numpy()
    assert (chosen.decided[on_b] == alone.decided[on_b]).all()
