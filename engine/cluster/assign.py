"""Which threshold each dataset is clustered at, who set it and why (eval.py prints it).

* `cluster.threshold` given: that one, everywhere.
* A dataset with its own tuned threshold (train identities to hold out, `cluster.per_dataset`):
  "own", tuned on its held-out train identities.
* A dataset without: the strategy `cluster.unlabelled` names (unlabelled.py); what every other
  registered strategy would have chosen is recorded beside it, so the report and metrics.json can
  show how much the count depends on the choice.
* `cluster.per_dataset=false`: every dataset the one threshold best on average.
A threshold at an end of the searched range is flagged (`at_end`), and eval.py warns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from core.schema import ClusterConfig
from engine.cluster.criteria import CRITERIA
from engine.cluster.graph import Graph, raw_similarity
from engine.cluster.methods import Clusterer
from engine.cluster.search import MEAN
from engine.cluster.tuning import Tuned
from engine.cluster.unlabelled import UNLABELLED, Context, Strategy, Target, ThresholdChoice
from engine.scoring.scorers import MatchSpace, Scorer

OWN, GIVEN, ONE_FOR_ALL = "own", "cluster.threshold", "one for all datasets"


@dataclass
class Check:
    """A strategy on the labelled datasets left out one at a time (see the module doc)."""

    errors: List[float]  # log(count / individuals), one per dataset left out
    summary: str


def choose_thresholds(cluster: ClusterConfig, tuned: Optional[Tuned], graph: Graph, anchors: np.ndarray,
                      space: MatchSpace, scorers: Sequence[Scorer], datasets: Sequence[str], clusterer: Clusterer,
                      seed: int) -> Dict[str, ThresholdChoice]:
    """The choice of every dataset in `datasets` (graph node e is row e of the space)."""
    if tuned is None:
        given = float(cluster.threshold)
        return {d: ThresholdChoice(given, GIVEN, "given", given) for d in datasets}
    reps = tuned.replicates(tuned.count, seed)
    ends = tuned.search.ends()
    if not cluster.per_dataset:
        draws = [(t, 0.0) for t in reps.thresholds[MEAN]]
        return {d: _at_end(ThresholdChoice(tuned.overall, ONE_FOR_ALL, "cluster.per_dataset=false: the threshold best "
                                           "on average over the labelled datasets", tuned.count.overall, draws),
                           ends.get(MEAN))
                for d in datasets}
    context = Context(clusterer, tuned, reps, seed)
    checks: Dict[str, Check] = {}
    out = {}
    for dataset in datasets:
        if dataset in tuned.per_dataset:
            out[dataset] = _at_end(ThresholdChoice(
                tuned.per_dataset[dataset], OWN, f"tuned by {tuned.criterion.upper()} on its own held-out train "
                f"identities", tuned.count.per_dataset[dataset],
                list(zip(reps.thresholds[dataset], reps.errors[dataset], strict=True))), ends.get(dataset))
            continue
        if not checks:
            context.labelled = _labelled_targets(tuned, space, scorers)
            checks = {name: left_out_check(UNLABELLED.build(name), context) for name in UNLABELLED.names()}
        members = np.flatnonzero(space.datasets[:graph.n] == dataset)
        sub = graph.subgraph(members)
        target = Target(dataset, sub, anchors[members], raw_similarity(scorers, space, members[sub.i], members[sub.j]))
        found = {name: _unlabelled_choice(name, target, context, sorted(tuned.per_dataset), checks[name])
                 for name in UNLABELLED.names()}
        chosen = found[cluster.unlabelled]
        chosen.alternatives = {name: c for name, c in found.items() if name != cluster.unlabelled}
        grid = tuned.search.grid
        end = "lowest" if chosen.threshold <= grid[0] else "highest" if chosen.threshold >= grid[-1] else None
        out[dataset] = _at_end(chosen, ends.get(MEAN) if chosen.threshold == tuned.overall else end)
    return out


def _unlabelled_choice(name: str, target: Target, context: Context, labelled: List[str], check: Check) -> ThresholdChoice:
    """Strategy `name`'s thresholds for `target`; each draw of its count threshold paired with the
    count error of a dataset left out (drawn at random), or 0 where none could be checked."""
    setting = UNLABELLED.build(name).set(target, context, labelled, draws=True)
    rng = np.random.default_rng(context.seed)
    errors = check.errors or [0.0]
    draws = [(t, float(errors[rng.integers(len(errors))])) for t in setting.count_thresholds]
    return ThresholdChoice(setting.threshold, name, setting.why, setting.count_threshold, draws, checked=check.summary)


def _labelled_targets(tuned: Tuned, space: MatchSpace, scorers: Sequence[Scorer]) -> Dict[str, Target]:
    """Every labelled dataset's train images as if unlabelled: its graph without anchors, and its truth."""
    targets = {}
    for dataset in sorted(tuned.per_dataset):
        members = np.flatnonzero(space.datasets[:tuned.graph.n] == dataset)
        sub = tuned.graph.subgraph(members)
        targets[dataset] = Target(dataset, sub, np.full(len(members), -1),
                                  raw_similarity(scorers, space, members[sub.i], members[sub.j]),
                                  space.labels[members].astype(str))
    return targets


def left_out_check(strategy: Strategy, context: Context) -> Check:
    """Each labelled dataset clustered as if unlabelled at what `strategy` sets from the others."""
    ari = CRITERIA.build("ari")
    errors, parts = [], []
    for dataset, target in context.labelled.items():
        others = [d for d in context.labelled if d != dataset]
        if not others:
            continue
        setting = strategy.set(target, context, others, draws=False)
        distinct = sorted({setting.threshold, setting.count_threshold})
        found = dict(zip(distinct, context.clusterer.labels(target.graph, target.anchors, distinct), strict=True))
        count, individuals = len(np.unique(found[setting.count_threshold])), len(np.unique(target.truth))
        errors.append(float(np.log(count / individuals)))
        parts.append(f"{dataset} {count} for {individuals} individuals, ARI "
                     f"{ari.score(target.truth, found[setting.threshold]):.3f}")
    summary = ("its train images clustered as if unlabelled, each labelled dataset left out in turn: " + "; ".join(parts)
               if parts else "no other labelled dataset to check it on")
    return Check(errors, summary)


def _at_end(choice: ThresholdChoice, end: Optional[str]) -> ThresholdChoice:
    choice.at_end = end
    return choice


def choice_lines(choices: Dict[str, ThresholdChoice], has_train: Sequence[str], grid: Sequence[float]) -> List[str]:
    """What eval.py prints: per dataset its threshold, who set it and why, and the warnings."""
    lines = []
    for dataset, c in sorted(choices.items()):
        without = "" if c.strategy in (OWN, GIVEN, ONE_FOR_ALL) else (
            " (no train images)" if dataset not in has_train else " (too few train identities to tune on)")
        lines.append(f"{dataset}{without}: threshold {c.threshold:.4g} (population counted at {c.count_threshold:.4g}) "
                     f"set by {c.strategy}: {c.why}")
        if c.checked:
            lines.append(f"  checked on {c.checked}")
        for name, other in sorted(c.alternatives.items()):
            lines.append(f"  {name} would have set {other.threshold:.4g} (count at {other.count_threshold:.4g}); "
                         f"checked on {other.checked}")
        if c.at_end:
            lines.append(f"warning: {dataset}: the threshold {c.threshold:.4g} is at the {c.at_end} end of the "
                         f"searched range ({grid[0]:.4g} .. {grid[-1]:.4g}), where what chose it had not turned: the "
                         "best threshold may lie beyond")
    return lines
