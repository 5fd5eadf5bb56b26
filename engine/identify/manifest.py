"""manifest.json of task=identify: the shared parts (engine.outputs.artifacts) with the threshold, the
scorers and their calibrators, the re-ranking and the held-out split."""
from __future__ import annotations

from typing import Any, Dict

from core.schema import EvalConfig
from engine.identify.decision import Evaluation
from engine.outputs.artifacts import run_manifest
from engine.prepare import RunData, RunInputs
from engine.scoring.embed_cache import image_list_fingerprint


def identify_manifest(cfg: EvalConfig, data: RunData, inputs: RunInputs, ev: Evaluation) -> Dict[str, Any]:
    table, matcher = data.table, inputs.matcher
    rerank = None if matcher is None else {**matcher.describe(), "shortlist": cfg.rerank.shortlist,
                                           "pairs_matched": matcher.pairs.matched,
                                           "pairs_verified": matcher.pairs.verified,
                                           "pairs_rejected_early": matcher.pairs.rejected,
                                           "images_extracted": matcher.pairs.store.extracted}
    return run_manifest(
        cfg, data.kind, inputs.outputs,
        {"images": len(table), "database": int((table["split"] == "database").sum()),
         "query": int((table["split"] == "query").sum()), "fingerprint": image_list_fingerprint(table)},
        threshold=ev.threshold.to_dict(), scorers={name: s.to_dict() for name, s in ev.scorers.items()}, rerank=rerank,
        tuning_split=None if ev.tuning is None else ev.tuning.summary())
