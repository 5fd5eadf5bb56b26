"""Eval-time choice of how an ensemble holding a fusion model scores: the fusion can only help.

A fusion model is fitted on its training species (PCA, learned whitening, pair head); on data unlike
it, it can score below its own members (see zoo/fusion.py and MODEL_ZOO.md). Its members' features
are extracted anyway (the fusion reads them), so the ensemble as given is set against the other ways
of scoring with the same members: each member alone, their static blend (raw cosine, equal
weights) and their calibrated soft vote. Every scoring is calibrated and its threshold tuned on the
same held-out database split (engine.identify.decision); per dataset, the scoring with the best
validation open-set score decides that dataset's queries, the ensemble as given winning ties.

A scoring is one class registered in SCORINGS: given the ensemble's outputs and the configured
calibration, it lists the (name, outputs that vote, calibration) it stands for, or none where it does
not apply (no fusion model among the outputs).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Sequence

from core.registry import Registry
from engine.scoring.scorers import ModelOutput

SCORINGS = Registry("scoring")
AS_GIVEN = "ensemble as given"


@dataclass
class Scoring:
    """One way to score the queries: the model outputs that vote, and how they are calibrated."""

    name: str
    outputs: List[ModelOutput]
    calibration: str


def fusion_members(outputs: Sequence[ModelOutput]) -> List[ModelOutput]:
    """The members of every fusion model among `outputs` (each once, by name), as outputs of their own."""
    seen: Dict[str, ModelOutput] = {}
    for output in outputs:
        for member in output.members:
            seen.setdefault(member.name, member)
    return list(seen.values())


class Alternative(ABC):
    @abstractmethod
    def scorings(self, outputs: Sequence[ModelOutput], calibration: str) -> List[Scoring]:
        """The scorings this kind stands for with these outputs (none where it does not apply)."""


@SCORINGS.register("as_given")
class AsGiven(Alternative):
    """The ensemble the user asked for (first: it wins ties)."""

    def scorings(self, outputs, calibration):
        return [Scoring(AS_GIVEN, list(outputs), calibration)]


@SCORINGS.register("member_alone")
class MemberAlone(Alternative):
    """Each fusion member alone, voting with its embedding."""

    def scorings(self, outputs, calibration):
        return [Scoring(f"member {m.name} alone", [replace(m, weight=1.0)], calibration)
                for m in fusion_members(outputs)]


@SCORINGS.register("member_blend")
class MemberBlend(Alternative):
    """The members' raw cosine scores averaged with equal weights (calibration none)."""

    def scorings(self, outputs, calibration):
        members = fusion_members(outputs)
        if len(members) < 2:
            return []
        return [Scoring("members' static blend (raw cosine, equal weights)",
                        [replace(m, weight=1.0) for m in members], "none")]


@SCORINGS.register("member_soft_vote")
class MemberSoftVote(Alternative):
    """The members each calibrated, then soft-voted with equal weights."""

    def scorings(self, outputs, calibration):
        members = fusion_members(outputs)
        if len(members) < 2:
            return []
        return [Scoring("members' calibrated soft vote", [replace(m, weight=1.0) for m in members], calibration)]


def scorings_for(outputs: Sequence[ModelOutput], calibration: str, alternatives: bool = True) -> List[Scoring]:
    """The ensemble as given first, then every registered alternative; only the ensemble where it
    holds no fusion model or without `alternatives`."""
    if not alternatives or not fusion_members(outputs):
        return AsGiven().scorings(outputs, calibration)
    found: List[Scoring] = []
    for name in SCORINGS.names():
        for scoring in SCORINGS.get(name)().scorings(outputs, calibration):
            if scoring.name not in {s.name for s in found}:
                found.append(scoring)
    found.sort(key=lambda s: s.name != AS_GIVEN)  # stable: the ensemble as given first
    return found


def choose(validation: Dict[str, Dict[str, float]], datasets: Sequence[str]) -> Dict[str, str]:
    """{dataset: name of the scoring with the best validation score there}; `validation` maps each
    scoring's name (the ensemble as given first) to its score per dataset. Ties go to the earlier
    scoring, so the ensemble as given keeps a dataset unless another scores strictly better."""
    chosen = {}
    for dataset in datasets:
        names = [n for n in validation if dataset in validation[n]]
        chosen[dataset] = max(names, key=lambda n: (round(validation[n][dataset], 9), -names.index(n)))
    return chosen


@dataclass
class ScoringChoice:
    """Per dataset (or "all"), the scoring chosen, and every scoring's validation score there."""

    chosen: Dict[str, str]
    per_dataset: bool
    validation_score: Dict[str, Dict[str, float]]
    rule: str = ("per dataset, the scoring with the best open-set score on the held-out database split; "
                 "the ensemble as given wins ties")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def describe_choice(record: ScoringChoice) -> str:
    """What eval.py prints: per dataset, the scoring chosen and every scoring's validation score."""
    lines = ["scoring chosen on the threshold's held-out database split (open-set score per scoring; "
             "the ensemble as given wins ties):"]
    for dataset, name in record.chosen.items():
        tried = ", ".join(f"{n}: {scores[dataset]:.3f}" for n, scores in record.validation_score.items()
                          if dataset in scores)
        why = "" if name == AS_GIVEN else " (it scores above the ensemble as given here: the pipeline falls back)"
        lines.append(f"  {dataset}: {name}{why}; {tried}")
    return "\n".join(lines)
