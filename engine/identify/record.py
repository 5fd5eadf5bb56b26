"""What identification decided with: the threshold, where it came from, and every weight, margin and
scoring chosen beside it on the held-out split. The console, the report, metrics.json and
manifest.json read it; `to_dict` is the form those files record."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from engine.openset import TunedThreshold
from engine.scoring.adaptive import MarginChoice
from engine.scoring.choice import ScoringChoice


@dataclass
class WeightChoice:
    """A scorer kind's weight (or a scorer's option: a keypoint weighting on or off, a geometry) chosen
    on the held-out split, and the validation score of each value tried."""

    chosen: Any
    validation_score: Dict[str, float]

    def to_dict(self) -> Dict[str, Any]:
        return {"chosen": self.chosen, "validation_score": self.validation_score}


@dataclass
class ThresholdRecord:
    source: str  # where the threshold comes from: tuned on the held-out split, or threshold.value
    threshold: TunedThreshold
    splits: Optional[int] = None  # held-out splits pooled to tune it
    weights: Dict[str, WeightChoice] = field(default_factory=dict)  # per scorer kind, in the order tuned
    adaptive: Optional[MarginChoice] = None  # rerank.adaptive's margin
    new_whale: Optional[Dict[str, float]] = None  # Humpback: where new_whale goes, and its MAP@5
    scoring_choice: Optional[ScoringChoice] = None  # with a fusion model
    options: Dict[str, WeightChoice] = field(default_factory=dict)  # "<scorer kind>: <option>" -> its choice, in the order set

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"source": self.source}
        if self.splits is not None:
            out["splits"] = self.splits
        out.update(self.threshold.to_dict())
        out.update({f"{kind}_weight": choice.to_dict() for kind, choice in self.weights.items()})
        if self.adaptive is not None:
            out["adaptive"] = self.adaptive.to_dict()
        if self.new_whale is not None:
            out["new_whale"] = self.new_whale
        if self.scoring_choice is not None:
            out["scoring_choice"] = self.scoring_choice.to_dict()
        if self.options:
            out["options"] = {name: choice.to_dict() for name, choice in self.options.items()}
        return out
