"""What every eval.py task starts from: the config checked before anything is read, the dataset split
into labelled database (train) rows and query (test) rows, every model's outputs over them (cached) and
the keypoint matcher of rerank.matcher. engine/identify and engine/cluster build on it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pandas as pd

from core.config import from_dict, to_dict
from core.errors import DataError
from core.schema import EvalConfig
from data.splits import gallery_and_query
from data.validate import require_query
from engine.outputs.artifacts import check_output_dir, eval_reads
from engine.outputs.submission import submission_kind
from engine.scoring.model_outputs import all_model_outputs
from engine.scoring.scorers import ModelOutput, Scorer
from engine.tables import dataset_table
from zoo.loading import looks_like_path


@dataclass
class RunData:
    table: pd.DataFrame  # the whole dataset
    gallery: pd.DataFrame  # labelled database rows
    query: pd.DataFrame  # query rows, in table order
    rows: pd.DataFrame  # gallery then query: the rows models embed
    kind: str  # submission kind


@dataclass
class RunInputs:
    data: RunData
    outputs: List[ModelOutput]
    matcher: Optional[Scorer]  # the keypoint matcher (engine.matching.scorer), with rerank.matcher


def check_run_config(cfg: EvalConfig) -> str:
    """Fail fast, before any data is read or model loaded; returns the submission kind. Values are
    checked by the schema's rules (again here, for configs built in code rather than read by load_config)."""
    from_dict(EvalConfig, to_dict(cfg))
    kind = submission_kind(cfg.data.format, cfg.submission, cfg.task)
    check_output_dir(Path(cfg.output_dir), eval_reads(cfg))
    for spec in cfg.models:
        if looks_like_path(spec) and not Path(spec).expanduser().exists():
            raise DataError(f"no model at {spec}: run `python train.py` first or pass models=[...]")
    return kind


def load_run_data(cfg: EvalConfig) -> RunData:
    """The dataset split into database and queries; no query is a DataError."""
    table = dataset_table(cfg.data)
    require_query(table, filters=", ".join(f"{k}={v}" for k, v in (("data.datasets", cfg.data.datasets),
                                                                   ("data.species", cfg.data.species)) if v))
    gallery, query = gallery_and_query(table)
    return RunData(table, gallery, query, pd.concat([gallery, query], ignore_index=True),
                   submission_kind(cfg.data.format, cfg.submission, cfg.task))


def prepare_run(cfg: EvalConfig, data: RunData, accelerator=None) -> RunInputs:
    """The models' outputs over data.rows and the matcher, split across processes under `accelerate launch`."""
    outputs = all_model_outputs(cfg, data.rows, set(data.gallery["identity"]), accelerator)
    matcher = None
    if cfg.rerank.matcher != "none":
        from engine.matching.scorer import build_matcher_scorer

        matcher = build_matcher_scorer(cfg, data.rows, accelerator)
    return RunInputs(data, outputs, matcher)
