"""Open-set evaluation: models -> embeddings -> retrieval -> calibration -> soft vote -> threshold
-> submission.csv, metrics.json, manifest.json, report.html.

Decisions made here:
* **Image size.** Each model sees images at the input size and normalisation recorded with it
  (its export's config.json; timm's data config for off-the-shelf backbones), since that is what
  it was trained with: an ensemble may mix sizes. `data.image_size`, `data.mean` and `data.std`
  are training settings and only fill in for a model that records none. A model that cannot
  take its own input size (a trial forward pass fails) stops with a clear error.
* **Gallery.** The labelled database images; database images without an identity (Humpback's
  `new_whale` training photos) cannot be matched and are left out. When identities are
  namespaced by `dataset` (none appears in two datasets, as in AnimalCLEF and WildlifeReID-10k),
  a query is matched only against its own dataset's images, and calibration pairs are formed
  the same way; otherwise against the whole gallery.
* **Classifiers.** A model whose forward returns logits votes with its softmax over the
  identities it was trained on, as long as all of them are database identities. Classes that
  partly are not (the model was trained on another version of this data) stop with an error;
  classes that share nothing with the database (another dataset) make the classifier vote
  with its penultimate-feature embedding like an embedder. Logits are averaged over TTA views.
* **Threshold.** Tuned without query labels, on a split carved from the labelled database:
  some identities are held out, a fraction of them act as "new" (all their images become
  validation queries), the others send half their images to the validation queries; the
  validation queries are matched against the rest of the database. When the models' label maps
  show which identities they were trained on and at least MIN_UNSEEN_IDENTITIES of a dataset's
  identities are unseen by all of them (train.py holds validation identities out), the
  held-out identities are drawn from those: scores of training images are optimistic, so a
  threshold tuned on them would not transfer to new photos. Calibrators are fitted on the same
  remaining database, never on the validation queries.
* **Nothing half-written.** Outputs go to a temporary folder next to `output_dir`, renamed into
  place at the end; on any error `output_dir` is left as it was.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from core.config import save_config, to_dict
from core.errors import ConfigError, DataError, list_some
from core.schema import EvalConfig
from data.dataset import ReIDDataset
from data.formats import load_table
from data.images import ImageLoader
from data.splits import open_set_split, split_from_column
from data.table import labelled
from data.transforms import build_tta_transform, num_tta_views
from data.validate import require_query
from engine.evaluation.calibration import (
    METHODS,
    fit_calibrator,
    pair_scores_for_calibration,
    soft_vote,
    softmax_candidates,
)
from engine.embed_cache import (
    EmbeddingCache,
    cache_key,
    image_list_fingerprint,
    resolve_embed_cache_dir,
    transform_description,
)
from engine.extraction import EMBEDDING, LOGITS, extract
from engine.metrics import animalclef_score, cmc, map_at_5, mean_average_precision
from engine.evaluation.openset import decide, humpback_guesses, thresholds_for, tune_threshold
from engine.retrieval import Candidates, RetrievalResult, retrieve, to_candidates
from engine.evaluation.submission import submission_kind, write_submission

TUNING_QUERY_FRACTION = 0.5  # of a known held-out identity's images used as validation queries
MIN_UNSEEN_IDENTITIES = 4  # per dataset, to tune on identities no model was trained on
MIN_HELD_IDENTITIES = 2  # per dataset: one known and one new at least
TIE_BREAK = 1e-6  # weight of the raw score added to calibrated probabilities (see _calibrated)
CANDIDATES = 20  # identities per query and model entering the vote: enough for the decision and top-5
PAIR_NEIGHBOURS = 10  # calibration pairs: each database image against its top-k neighbours
MANIFEST = "manifest.json"
PACKAGES = ("torch", "torchvision", "timm", "faiss-cpu", "faiss-gpu", "numpy", "pandas", "scikit-learn",
            "accelerate", "albumentations", "safetensors", "pytorch-metric-learning", "reidzoo")


@dataclass
class ModelOutput:
    """One model's vectors for the evaluation rows: the gallery rows first, then the queries."""

    name: str
    embeddings: np.ndarray
    logits: Optional[np.ndarray] = None
    label_map: Optional[Dict[str, int]] = None  # set when the model votes with its softmax
    weight: float = 1.0
    info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Everything decided for the queries, plus what the tuning split saw (for the report)."""

    candidates: Candidates  # fused identity ranking per query, best first
    best_ids: np.ndarray
    best_scores: np.ndarray
    threshold: Dict[str, Any]  # {"source", "global", "per_dataset", ...}
    decided: np.ndarray  # identity or new_individual per query
    predictions: list  # what the submission holds (AnimalCLEF labels or Humpback guess lists)
    tuning: Optional[Dict[str, Any]]  # best_scores, known, datasets of the validation queries
    rankings: Dict[str, ImageRanking]  # per embedding model: top-k gallery images of each query
    calibrators: Dict[str, Dict[str, Any]]


def _say(accelerator, *parts) -> None:
    if accelerator is None or accelerator.is_main_process:
        print(*parts, flush=True)


def check_eval_config(cfg: EvalConfig) -> None:
    """Fail fast, before any data is read or model loaded."""
    if not cfg.models:
        raise ConfigError("models is empty: give at least one export folder, zoo name or timm name")
    if cfg.weights and len(cfg.weights) != len(cfg.models):
        raise ConfigError(f"weights has {len(cfg.weights)} values for {len(cfg.models)} models")
    if any(w < 0 for w in cfg.weights) or (cfg.weights and sum(cfg.weights) <= 0):
        raise ConfigError(f"weights must be non-negative with a positive sum, got {cfg.weights}")
    num_tta_views(cfg.tta)
    if cfg.calibration not in METHODS:
        raise ConfigError(f"calibration: unknown method '{cfg.calibration}'; valid: {', '.join(METHODS)}")
    submission_kind(cfg.data.format, cfg.submission)
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    check_output_dir(Path(cfg.output_dir))
    for spec in cfg.models:
        if _looks_like_path(spec) and not Path(spec).expanduser().exists():
            raise DataError(f"no model at {spec}: run `python train.py` first or pass models=[...]")
    if cfg.threshold.value is None:
        for key in ("holdout_fraction", "unknown_fraction"):
            value = getattr(cfg.threshold, key)
            if not 0 < value < 1:
                raise ConfigError(f"threshold.{key} must be in (0, 1) to tune the threshold, got {value} "
                                  "(or set threshold.value)")


# ----------------------------------------------------------------------------- models


def _looks_like_path(spec: str) -> bool:
    return ":" not in spec and (any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")))


def _state_checksum(model: torch.nn.Module, spec: str) -> str:
    digest = hashlib.sha256(spec.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_eval_model(spec: str):
    """(model in eval mode, meta, checksum) of an export folder, zoo name or timm name."""
    from zoo import load_model, model_checksum  # the zoo imports timm: only once the config is valid

    model, meta = load_model(spec)
    checksum = model_checksum(spec) if Path(spec).expanduser().is_dir() else _state_checksum(model, spec)
    return model, meta, checksum


def _probe(model: torch.nn.Module, spec: str, size: int, device: torch.device) -> Dict[str, Any]:
    """One forward pass on blank images: the model takes this input size, and what it returns."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, size, size, device=device))
    except (RuntimeError, ValueError, AssertionError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"model {spec} does not accept {size}x{size} images: {first_line}") from err
    if not isinstance(out, dict) or "embedding" not in out:
        raise DataError(f"model {spec} is not a reidzoo model: its forward returns no 'embedding'")
    logits = out.get(LOGITS)
    return {"embed_dim": int(out["embedding"].shape[1]), "classes": None if logits is None else int(logits.shape[1])}


def voting_classes(spec: str, meta: Dict[str, Any], classes: Optional[int],
                   database_identities: set) -> Optional[Dict[str, int]]:
    """The label map a classifier votes over, None if it votes with its embedding (see module doc)."""
    if classes is None:
        return None
    label_map = meta.get("label_map") or {}
    if len(label_map) != classes:
        raise DataError(f"model {spec} outputs {classes} classes but its label map names {len(label_map)} "
                        "identities: the export is inconsistent")
    foreign = sorted(set(label_map) - database_identities)
    if len(foreign) == len(label_map):
        return None
    if foreign:
        raise DataError(f"the classes of model {spec} do not fit this dataset: {len(foreign)} of its {classes} "
                        f"identities are not database identities ({list_some(foreign)}); it was trained on "
                        "other data, so its softmax cannot vote here")
    return {str(k): int(v) for k, v in label_map.items()}


def _runtime(accelerator) -> Dict[str, str]:
    """Device type and precision: part of the cache key, since bf16 and fp32 embeddings differ."""
    if accelerator is None:
        return {"device": "cuda" if torch.cuda.is_available() else "cpu", "precision": "no"}
    return {"device": accelerator.device.type, "precision": str(accelerator.mixed_precision)}


def model_outputs(spec: str, weight: float, cfg: EvalConfig, rows: pd.DataFrame, gallery_identities: set,
                  cache: EmbeddingCache, images_fingerprint: str, accelerator=None) -> ModelOutput:
    """Load one model and extract (or read from the cache) its outputs for `rows`."""
    model, meta, checksum = load_eval_model(spec)
    device = accelerator.device if accelerator is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    size = int(meta.get("input_size") or cfg.data.image_size)
    mean, std = meta.get("mean") or cfg.data.mean, meta.get("std") or cfg.data.std
    probe = _probe(model, spec, size, device)
    label_map = voting_classes(spec, meta, probe["classes"], gallery_identities)
    if probe["classes"] is not None and label_map is None:
        _say(accelerator, f"{spec}: its classes are none of the database identities; it votes with its embedding")
    heads = (EMBEDDING, LOGITS) if label_map is not None else (EMBEDDING,)
    transform = transform_description(size=size, mean=mean, std=std, tta=cfg.tta,
                                      orientation_rules=cfg.data.orientation_rules, crop_to_bbox=cfg.data.crop_to_bbox,
                                      bbox_padding=cfg.data.bbox_padding)
    transform["runtime"] = _runtime(accelerator)
    keys = {head: cache_key(checksum, images_fingerprint, transform, head) for head in heads}

    def compute() -> Dict[str, np.ndarray]:
        dataset = ReIDDataset(rows, ImageLoader(size, cfg.data.cache_dir, cfg.data.crop_to_bbox, cfg.data.bbox_padding),
                              build_tta_transform(cfg.tta, size, mean, std),
                              orientation_rules=cfg.data.orientation_rules)
        return extract(model, dataset, heads=heads, batch_size=cfg.batch_size, accelerator=accelerator,
                       num_workers=cfg.data.num_workers, desc=f"embedding {Path(spec).name or spec}")

    arrays = cache.get_or_compute(keys, compute, accelerator=accelerator, expected_rows=len(rows))
    info = {"spec": spec, "checksum": checksum, "architecture": meta.get("architecture"), "input_size": size,
            "mean": list(mean), "std": list(std), "embed_dim": probe["embed_dim"], "classes": probe["classes"],
            "votes_with": "softmax" if label_map is not None else "embedding", "cache_keys": keys,
            "training_identities": meta.get("label_map") or None}
    return ModelOutput(spec, arrays[EMBEDDING], arrays.get(LOGITS), label_map, weight, info)


# ----------------------------------------------------------------------------- open-set decision


def training_identities(metas: Sequence[Optional[Dict[str, int]]]) -> Optional[set]:
    """Identities any model was trained on, from their label maps; None when no model records one."""
    maps = [m for m in metas if m]
    return set().union(*(set(m) for m in maps)) if maps else None


def tuning_split(gallery: pd.DataFrame, cfg: EvalConfig, seen: Optional[set] = None) -> pd.DataFrame:
    """Held-out database identities as a labelled open-set split (`split` = database | query).

    Per dataset, `threshold.holdout_fraction` of the identities (at least MIN_HELD_IDENTITIES, so
    one can act as new) are drawn from those no model was trained on when there are enough of
    them, else from all; data.splits.open_set_split then makes `threshold.unknown_fraction` of
    them new individuals.
    """
    held = []
    for dataset, part in gallery.groupby("dataset", sort=True):
        identities = sorted(part["identity"].unique())
        if len(identities) < 2:
            continue
        unseen = [i for i in identities if seen is not None and i not in seen]
        pool, most = (unseen, len(unseen)) if len(unseen) >= MIN_UNSEEN_IDENTITIES else (identities, len(identities) - 1)
        wanted = min(max(MIN_HELD_IDENTITIES, round(cfg.threshold.holdout_fraction * len(identities))), most)
        rng = np.random.default_rng([cfg.seed, zlib.crc32(str(dataset).encode())])
        held.append(part[part["identity"].isin(set(rng.permutation(pool)[:wanted]))])
    if not held:
        raise DataError("every dataset of the database has a single identity: no held-out identities can tune "
                        "the threshold; set threshold.value")
    return open_set_split(pd.concat(held), unknown_fraction=cfg.threshold.unknown_fraction,
                          query_fraction=TUNING_QUERY_FRACTION, seed=cfg.seed)


def _calibrated(result: RetrievalResult, calibrator) -> Candidates:
    """Calibrated identity candidates. Isotonic maps are flat in places (and a logistic one with no
    evidence is flat everywhere), which would tie candidates that the raw scores rank; a tiny share
    of the raw score keeps the model's own order within a tie without moving the probabilities."""
    raw = result.identity_scores.astype(np.float64)
    finite = np.isfinite(raw)
    probabilities = np.where(finite, calibrator(np.where(finite, raw, 0.0)) + TIE_BREAK * np.where(finite, raw, 0.0),
                             -np.inf)
    return to_candidates(result.identities, result.identity_codes, probabilities, top=CANDIDATES)


def _masked_softmax(logits: np.ndarray, label_map: Dict[str, int], allowed: set, top: int) -> Candidates:
    """Softmax candidates restricted to `allowed` identities (the validation gallery's)."""
    masked = logits.astype(np.float64, copy=True)
    blocked = [index for identity, index in label_map.items() if identity not in allowed]
    masked[:, blocked] = -np.inf
    if len(blocked) == len(label_map):
        return [[] for _ in range(len(logits))]
    return softmax_candidates(masked, label_map, top=top)


def _best(candidates: Candidates):
    ids = np.array([c[0][0] if c else None for c in candidates], dtype=object)
    scores = np.array([c[0][1] if c else -np.inf for c in candidates], dtype=np.float64)
    return ids, scores


@dataclass
class ImageRanking:
    """One model's top-k gallery images per query: gallery rows (-1 padded) and their raw scores."""

    indices: np.ndarray
    scores: np.ndarray

    def labels(self, gallery_labels: np.ndarray) -> np.ndarray:
        """(Q, k) identities of the retrieved images, None where nothing was retrieved."""
        names = np.append(gallery_labels, None).astype(object)
        return names[np.where(self.indices >= 0, self.indices, len(gallery_labels))]


def namespaced_by_dataset(gallery: pd.DataFrame) -> bool:
    """True when no identity appears in two datasets: then a query is only matched within its own
    dataset (a lynx is never a salamander), else against the whole gallery."""
    return bool(gallery.groupby("identity")["dataset"].nunique().max() <= 1)


def _groups(datasets: np.ndarray, q_rows: np.ndarray, g_rows: np.ndarray, by_dataset: bool) -> list:
    """[(positions in q_rows, gallery rows)] to match: one group per query dataset, or one in all."""
    if not by_dataset:
        return [(np.arange(len(q_rows)), g_rows)]
    q_sets, g_sets = datasets[q_rows], datasets[g_rows]
    return [(np.flatnonzero(q_sets == name), g_rows[g_sets == name]) for name in sorted(set(q_sets.tolist()))]


def _vote(cfg: EvalConfig, outputs: Sequence[ModelOutput], labels: np.ndarray, datasets: np.ndarray,
          g_rows: np.ndarray, q_rows: np.ndarray, calibrators: Dict[str, Any], by_dataset: bool) -> tuple:
    """Fused candidates of rows `q_rows` against gallery rows `g_rows` (rows index the models' outputs;
    gallery rows come first, so they also index `labels`), and each embedding model's image ranking."""
    k = cfg.retrieval.k
    voters: List[Candidates] = [[[] for _ in q_rows] for _ in outputs]
    rankings = {o.name: ImageRanking(np.full((len(q_rows), k), -1, np.int64), np.full((len(q_rows), k), -np.inf))
                for o in outputs if o.label_map is None}
    for positions, gallery_rows in _groups(datasets, q_rows, g_rows, by_dataset):
        if len(gallery_rows) == 0:
            continue  # a dataset with no database images: its queries can only be new individuals
        rows = q_rows[positions]
        for voter, out in zip(voters, outputs, strict=True):
            if out.label_map is not None:
                found = _masked_softmax(out.logits[rows], out.label_map, set(labels[gallery_rows]), CANDIDATES)
            else:
                result = retrieve(out.embeddings[rows], out.embeddings[gallery_rows], labels[gallery_rows], cfg.retrieval)
                found = _calibrated(result, calibrators[out.name])
                width = result.indices.shape[1]
                ranking = rankings[out.name]
                ranking.indices[positions, :width] = np.where(result.indices >= 0,
                                                              gallery_rows[np.maximum(result.indices, 0)], -1)
                ranking.scores[positions, :width] = result.scores
            for position, candidates in zip(positions, found, strict=True):
                voter[position] = candidates
    return soft_vote(voters, [o.weight for o in outputs]), rankings


def _fit_calibrators(cfg: EvalConfig, outputs: Sequence[ModelOutput], labels: np.ndarray, datasets: np.ndarray,
                     g_rows: np.ndarray, by_dataset: bool) -> Dict[str, Any]:
    """One calibrator per embedding model, on database pairs formed as queries will be matched."""
    rng = np.random.default_rng(cfg.seed)
    groups = [rows for _, rows in _groups(datasets, g_rows, g_rows, by_dataset) if len(rows) >= 2]
    calibrators = {}
    for out in outputs:
        if out.label_map is None:
            pairs = [pair_scores_for_calibration(out.embeddings[rows], labels[rows], k=PAIR_NEIGHBOURS, rng=rng)
                     for rows in groups]
            scores = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0)
            same = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, bool)
            calibrators[out.name] = fit_calibrator(scores, same, cfg.calibration)
    return calibrators


def evaluate_outputs(cfg: EvalConfig, gallery: pd.DataFrame, query: pd.DataFrame, outputs: Sequence[ModelOutput],
                     kind: str = "animalclef") -> Evaluation:
    """The open-set decision for every query from the models' outputs (rows: gallery, then query)."""
    n_gallery = len(gallery)
    all_gallery = np.arange(n_gallery)
    q_rows = np.arange(n_gallery, n_gallery + len(query))
    labels = gallery["identity"].to_numpy(dtype=object)
    datasets = np.concatenate([gallery["dataset"].to_numpy(dtype=object), query["dataset"].to_numpy(dtype=object)])
    by_dataset = namespaced_by_dataset(gallery)
    tuning = None
    if cfg.threshold.value is None:
        seen = None if any(o.label_map is not None for o in outputs) else \
            training_identities([o.info.get("training_identities") for o in outputs])
        split = tuning_split(gallery, cfg, seen)
        position = pd.Series(all_gallery, index=gallery["image_id"])
        val_q = position[split.loc[split["split"] == "query", "image_id"]].to_numpy()
        val_g = np.setdiff1d(all_gallery, val_q)
        calibrators = _fit_calibrators(cfg, outputs, labels, datasets, val_g, by_dataset)
        val_ids, val_scores = _best(_vote(cfg, outputs, labels, datasets, val_g, val_q, calibrators, by_dataset)[0])
        truth = labels[val_q]
        known = pd.Series(truth, dtype=object).isin(set(labels[val_g])).to_numpy()
        try:
            tuned = tune_threshold(val_scores, val_ids, truth, known, datasets[val_q],
                                   per_dataset=cfg.threshold.per_dataset)
        except DataError as err:
            raise DataError(f"{err}; or set threshold.value") from err
        threshold = {"source": "tuned on held-out database identities", **tuned}
        if not cfg.threshold.per_dataset:
            threshold["per_dataset"] = {}
        tuning = {"best_scores": val_scores, "known": known, "datasets": datasets[val_q],
                  "queries": int(len(val_q)), "identities": int(split["identity"].nunique()),
                  "new_identities": int(len(set(truth[~known])))}
    else:
        calibrators = _fit_calibrators(cfg, outputs, labels, datasets, all_gallery, by_dataset)
        threshold = {"source": "threshold.value", "global": float(cfg.threshold.value), "per_dataset": {}}
    # Queries are matched against the whole gallery with the calibrators fitted above.
    candidates, rankings = _vote(cfg, outputs, labels, datasets, all_gallery, q_rows, calibrators, by_dataset)
    best_ids, best_scores = _best(candidates)
    datasets_q = query["dataset"].tolist()
    decided = decide(best_ids, best_scores, threshold, datasets_q)
    if kind == "humpback":
        limits = thresholds_for(datasets_q, threshold, len(query))
        fallback = gallery["identity"].value_counts().index[:5].tolist()
        predictions = [humpback_guesses(c, t, fallback) for c, t in zip(candidates, limits, strict=True)]
    else:
        predictions = list(decided)
    return Evaluation(candidates, best_ids, best_scores, threshold, decided, predictions, tuning, rankings,
                      {name: c.to_dict() for name, c in calibrators.items()})


# ----------------------------------------------------------------------------- metrics


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def has_query_labels(query: pd.DataFrame) -> bool:
    """Scorable when some query names its individual; the others count as new individuals."""
    return bool(query["identity"].notna().any())


def query_metrics(cfg: EvalConfig, gallery: pd.DataFrame, query: pd.DataFrame, ev: Evaluation) -> Dict[str, Any]:
    """Scores against the query labels: with the tuned threshold, and with the best one in hindsight."""
    truth = query["identity"].to_numpy(dtype=object)
    datasets = query["dataset"].tolist()
    known = set(gallery["identity"])
    limits = thresholds_for(datasets, ev.threshold, len(query))

    def scored(decided, limits_used) -> Dict[str, Any]:
        guesses = [humpback_guesses(c, t) for c, t in zip(ev.candidates, limits_used, strict=True)]
        return {**animalclef_score(truth, decided, datasets, known), "MAP@5": map_at_5(truth, guesses)}

    result: Dict[str, Any] = {
        "queries": len(query), "known_queries": int(pd.Series(truth, dtype=object).isin(known).sum()),
        "tuned": {"threshold": {k: v for k, v in ev.threshold.items() if k != "validation"},
                  **scored(ev.decided, limits)},
    }
    try:
        best = tune_threshold(ev.best_scores, ev.best_ids, truth, known, datasets, per_dataset=cfg.threshold.per_dataset)
        chosen = best if cfg.threshold.per_dataset else best["global"]
        hindsight_limits = thresholds_for(datasets, chosen, len(query))
        result["hindsight"] = {
            "note": "threshold chosen WITH the query labels: an upper bound for this model, not a result",
            "threshold": {"global": best["global"], "per_dataset": best["per_dataset"] if cfg.threshold.per_dataset else {}},
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
    return _finite(result)


# ----------------------------------------------------------------------------- outputs


def _is_our_output(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return not any(folder.iterdir()) or (folder / MANIFEST).is_file()


def check_output_dir(final: Path) -> None:
    """The output folder is replaced as a whole, so it must be new, empty or an earlier eval output."""
    final = final.expanduser().absolute()
    if final.exists() and not _is_our_output(final):
        raise ConfigError(f"output_dir {final} exists and is not an eval output folder (no {MANIFEST}): "
                          "choose a new or empty folder")


@contextlib.contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A temporary folder next to `final` that replaces it when the block completes; removed on error."""
    final = final.expanduser().absolute()
    check_output_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent)) / "previous"
        os.replace(final, old)
    try:
        os.replace(staging, final)
    except OSError:
        if old is not None:
            os.replace(old, final)  # put the previous outputs back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def _versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _git_commit() -> Optional[Dict[str, Any]]:
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def manifest(cfg: EvalConfig, table: pd.DataFrame, outputs: Sequence[ModelOutput], ev: Evaluation,
             kind: str) -> Dict[str, Any]:
    import platform

    return _finite({
        "tool": "reidzoo eval",
        "config": to_dict(cfg),
        "submission_kind": kind,
        "models": [{**{k: v for k, v in o.info.items() if k != "training_identities"}, "weight": o.weight,
                    "training_identities": len(o.info.get("training_identities") or {})} for o in outputs],
        "data": {"format": cfg.data.format, "root": cfg.data.root, "images": len(table),
                 "database": int((table["split"] == "database").sum()), "query": int((table["split"] == "query").sum()),
                 "fingerprint": image_list_fingerprint(table)},
        "threshold": ev.threshold,
        "calibrators": ev.calibrators,
        "tuning_split": None if ev.tuning is None else {k: ev.tuning[k] for k in ("queries", "identities", "new_identities")},
        "versions": {"python": platform.python_version(), **_versions()},
        "git": _git_commit(),
    })


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- the run


@dataclass
class EvaluationData:
    table: pd.DataFrame  # the whole dataset
    gallery: pd.DataFrame  # labelled database rows
    query: pd.DataFrame  # query rows, in table order
    rows: pd.DataFrame  # gallery then query: the rows models embed
    kind: str  # submission kind


def load_evaluation_data(cfg: EvalConfig) -> EvaluationData:
    """The dataset split into gallery and queries; an empty query set or gallery is a DataError."""
    table = load_table(cfg.data)
    require_query(table, filters=", ".join(f"{k}={v}" for k, v in (("data.datasets", cfg.data.datasets),
                                                                   ("data.species", cfg.data.species)) if v))
    database, query = split_from_column(table)
    gallery = labelled(database).reset_index(drop=True)
    if gallery.empty:
        raise DataError("the database has no labelled images: there is nothing to match the queries against")
    rows = pd.concat([gallery, query], ignore_index=True)
    return EvaluationData(table, gallery, query, rows, submission_kind(cfg.data.format, cfg.submission))


def run_evaluation(cfg: EvalConfig, accelerator=None) -> Dict[str, Any]:
    """Evaluate cfg.models on cfg.data and write the outputs into cfg.output_dir.

    Returns {"output_dir", "submission", "metrics" (or None), "report" (or None), "threshold"} on the
    main process; other processes help with extraction and return {}.
    """
    check_eval_config(cfg)
    data = load_evaluation_data(cfg)
    table, gallery, query, rows, kind = data.table, data.gallery, data.query, data.rows, data.kind
    cache = EmbeddingCache(resolve_embed_cache_dir(cfg.embed_cache))
    fingerprint = image_list_fingerprint(rows)
    weights = cfg.weights or [1.0] * len(cfg.models)
    identities = set(gallery["identity"])
    outputs = [model_outputs(spec, weight, cfg, rows, identities, cache, fingerprint, accelerator)
               for spec, weight in zip(cfg.models, weights, strict=True)]
    specs = list(cfg.models)
    for i, out in enumerate(outputs):
        if specs.count(out.name) > 1:  # the same model twice (e.g. with other weights)
            out.name = f"{out.name} #{i + 1}"
    if accelerator is not None and not accelerator.is_main_process:
        return {}
    _say(accelerator, f"matching {len(query)} queries against {len(gallery)} database images")
    ev = evaluate_outputs(cfg, gallery, query, outputs, kind)
    metrics = query_metrics(cfg, gallery, query, ev) if has_query_labels(query) else None
    final = Path(cfg.output_dir)
    with staged_directory(final) as staging:
        write_submission(staging / "submission.csv", kind, table, ev.predictions)
        if metrics is not None:
            _write_json(staging / "metrics.json", metrics)
        _write_json(staging / MANIFEST, manifest(cfg, table, outputs, ev, kind))
        save_config(cfg, staging / "config.yaml")
        if cfg.report:
            from engine.evaluation.report import write_report

            write_report(staging / "report.html", cfg=cfg, gallery=gallery, query=query, evaluation=ev,
                         metrics=metrics, rows=rows)
    final = final.expanduser().absolute()
    return {"output_dir": str(final), "submission": str(final / "submission.csv"),
            "metrics": metrics, "report": str(final / "report.html") if cfg.report else None,
            "threshold": ev.threshold}

