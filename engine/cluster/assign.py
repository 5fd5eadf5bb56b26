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

from typing import Dict, List, Optional, Sequence

import numpy as np

from core.schema import ClusterConfig
from engine.cluster.graph import Graph, raw_similarity
from engine.cluster.methods import Clusterer
from engine.cluster.search import MEAN
from engine.cluster.tuning import Tuned
from engine.cluster.unlabelled import UNLABELLED, ThresholdChoice, Unlabelled
from engine.scoring.scorers import MatchSpace, Scorer

OWN, GIVEN, ONE_FOR_ALL = "own", "cluster.threshold", "one for all datasets"


def choose_thresholds(cluster: ClusterConfig, tuned: Optional[Tuned], graph: Graph, anchors: np.ndarray,
                      space: MatchSpace, scorers: Sequence[Scorer], datasets: Sequence[str], clusterer: Clusterer,
                      seed: int) -> Dict[str, ThresholdChoice]:
    """The choice of every dataset in `datasets` (graph node e is row e of the space)."""
    if tuned is None:
        given = float(cluster.threshold)
        return {d: ThresholdChoice(given, GIVEN, "given", given) for d in datasets}
    plausible_count = tuned.plausible(tuned.count, seed)
    ends = tuned.search.ends()
    if not cluster.per_dataset:
        return {d: _at_end(ThresholdChoice(tuned.overall, ONE_FOR_ALL, "cluster.per_dataset=false: the threshold best "
                                           "on average over the labelled datasets", tuned.count.overall,
                                           plausible_count[MEAN]), ends.get(MEAN))
                for d in datasets}
    out = {}
    for dataset in datasets:
        if dataset in tuned.per_dataset:
            out[dataset] = _at_end(ThresholdChoice(
                tuned.per_dataset[dataset], OWN, f"tuned by {tuned.criterion.upper()} on its own held-out train "
                f"identities", tuned.count.per_dataset[dataset], plausible_count[dataset]), ends.get(dataset))
            continue
        members = np.flatnonzero(space.datasets[:graph.n] == dataset)
        sub = graph.subgraph(members)
        case = Unlabelled(dataset, sub, anchors[members],
                          raw_similarity(scorers, space, members[sub.i], members[sub.j]), clusterer, tuned, plausible_count,
                          seed)
        found = {name: UNLABELLED.build(name).choose(case) for name in UNLABELLED.names()}
        chosen = found[cluster.unlabelled]
        chosen.alternatives = {name: c for name, c in found.items() if name != cluster.unlabelled}
        grid = tuned.search.grid
        end = "lowest" if chosen.threshold <= grid[0] else "highest" if chosen.threshold >= grid[-1] else None
        out[dataset] = _at_end(chosen, ends.get(MEAN) if chosen.threshold == tuned.overall else end)
    return out


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
        if c.alternatives:
            lines.append("  the other strategies would have chosen: "
                         + ", ".join(f"{n} {a.threshold:.4g}" for n, a in sorted(c.alternatives.items())))
        if c.at_end:
            lines.append(f"warning: {dataset}: the threshold {c.threshold:.4g} is at the {c.at_end} end of the "
                         f"searched range ({grid[0]:.4g} .. {grid[-1]:.4g}), where what chose it had not turned: the "
                         "best threshold may lie beyond")
    return lines
