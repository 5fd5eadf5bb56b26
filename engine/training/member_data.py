"""Training data of a model over other models' embeddings (fusion): the members' features of the
training rows, the PCA fitted on them, and a loader of feature rows.

The members' features are extracted for the rows eval.py embeds on the same data (labelled
database images, then queries), with eval.py's settings and precision, so one extraction serves
both (engine.scoring.cached_outputs). The identity split, the batch sampler, the per-item seeding and the
open-set validation are those of image models (engine.training.data); only the items differ.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import faiss
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from core.config import to_dict
from core.errors import ConfigError, DataError
from core.schema import TrainConfig
from data.dataset import ReIDDataset, build_label_map
from data.images import ImageLoader, resolve_cache_dir
from data.samplers import build_batch_sampler
from data.splits import gallery_and_query
from data.transforms import build_eval_transform
from engine.accel import eval_precision, say
from engine.scoring.cached_outputs import CachedRows, ImageViews
from engine.scoring.embed_cache import EmbeddingCache, image_list_fingerprint, resolve_embed_cache_dir
from engine.scoring.member_features import FeatureDataset, Member, load_members, member_features
from engine.tables import dataset_table
from engine.training.data import TrainData, split_validation, training_part
from engine.training.seeding import SeededBatchSampler, SeededDataset
from zoo.export import RUN_EXPORT

ROW = "_feature_row"  # position of a training row in the extracted feature arrays


def fit_pca(features: np.ndarray, dim: int, whiten: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(A (d, D), b (d,)) of faiss's PCA fitted on `features` (N, D), so that y = x @ A.T + b.

    `dim` is capped at D and at N - 1 (no more components than the data has). With `whiten`, each
    component is scaled to unit variance on these features.
    """
    n, d_in = features.shape
    d_out = max(1, min(dim, d_in, n - 1))
    pca = faiss.PCAMatrix(d_in, d_out, 0.0)
    pca.train(np.ascontiguousarray(features, dtype=np.float32))
    a = faiss.vector_to_array(pca.A).reshape(d_out, d_in).astype(np.float32)
    b = faiss.vector_to_array(pca.b).astype(np.float32)
    if whiten:
        std = (features @ a.T + b).std(axis=0)
        scale = 1.0 / np.maximum(std, 1e-6)
        a, b = a * scale[:, None], b * scale
    return a, b


def fit_learned_whitening(features: np.ndarray, labels: np.ndarray, dim: int,
                          shrinkage: float) -> Tuple[np.ndarray, np.ndarray]:
    """(A (d, D), b (d,)) of a whitening learned from identities, so that y = x @ A.T + b.

    The scatter of each identity's features around its own mean (shrunk towards a multiple of the
    identity matrix by `shrinkage`, which keeps it invertible with few photos per individual) is
    whitened, so that directions in which photos of one individual differ count less; then the
    whitened features are rotated onto their principal axes and the first `dim` kept (capped at D).
    """
    features = np.asarray(features, dtype=np.float64)
    n, d_in = features.shape
    centre = features.mean(axis=0)
    within = np.zeros((d_in, d_in))
    for label in np.unique(labels):
        rows = features[labels == label]
        deviations = rows - rows.mean(axis=0)
        within += deviations.T @ deviations
    within /= n
    within = (1.0 - shrinkage) * within + shrinkage * np.trace(within) / d_in * np.eye(d_in)
    values, vectors = np.linalg.eigh(within)
    whiten = (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
    whitened = (features - centre) @ whiten.T
    _, axes = np.linalg.eigh(np.cov(whitened, rowvar=False))
    rotate = axes[:, ::-1][:, :max(1, min(dim, d_in))].T
    a = rotate @ whiten
    return a.astype(np.float32), (-(centre @ a.T)).astype(np.float32)


def _resolve_args(cfg: TrainConfig) -> Tuple[List[str], int, Dict[str, Any]]:
    """(member specs, PCA size, the other model arguments) of the fusion block."""
    args = dict(cfg.model.args)
    specs = args.pop("members", None)
    if not isinstance(specs, (list, tuple)) or not specs or not all(isinstance(s, str) and s for s in specs):
        raise ConfigError("model 'fusion' needs model.args.members: a list of export folders, zoo names or timm "
                          f"names (e.g. [runs/a/export, runs/b/export]), got {specs!r}")
    if "pca_dims" in args:
        raise ConfigError("model.args.pca_dims is set by training; give model.args.pca_dim (one size for every member)")
    pca_dim = args.pop("pca_dim", 256)
    if not isinstance(pca_dim, int) or pca_dim < 1:
        raise ConfigError(f"model.args.pca_dim must be a positive integer, got {pca_dim!r}")
    return list(specs), pca_dim, args


def evaluation_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows eval.py embeds for this table (labelled database images, then queries), in its order."""
    return pd.concat(gallery_and_query(table), ignore_index=True)


def build_member_feature_data(cfg: TrainConfig, *, num_replicas: int = 1, rank: int = 0, pin_memory: bool = False,
                              accelerator=None) -> TrainData:
    specs, pca_dim, own_args = _resolve_args(cfg)
    rows = evaluation_rows(training_part(dataset_table(cfg.data), cfg, accelerator))
    gallery = rows[rows["split"] == "database"].copy()
    if gallery.empty:
        raise DataError("the training set is empty: no labelled images in the database split")
    gallery[ROW] = np.arange(len(gallery))
    train_table, val_table = split_validation(gallery, cfg)

    device = accelerator.device if accelerator is not None else torch.device("cpu")
    members = load_members(specs, device)
    features_cfg = cfg.features
    cache = EmbeddingCache(resolve_embed_cache_dir(features_cfg.cache))
    fingerprint = image_list_fingerprint(rows)
    precision = eval_precision()

    views = ImageViews(cfg.data, features_cfg.tta, features_cfg.batch_size)

    def features_for(tta: Sequence[str]) -> List[np.ndarray]:
        return member_features(members, replace(views, tta=tta), CachedRows(rows, cache, fingerprint), accelerator, precision)

    averaged = features_for(features_cfg.tta)
    per_view = [np.concatenate(features_for([view]), axis=1) for view in features_cfg.train_views]
    train_rows = train_table[ROW].to_numpy()
    transforms = [fit_pca(block[train_rows], pca_dim, bool(own_args.get("whiten", False))) for block in averaged]
    export = Path(cfg.output_dir) / RUN_EXPORT  # members are recorded relative to the export that names them
    model_args = {**own_args, "members": [m.record(block.shape[1], views, export)
                                          for m, block in zip(members, averaged, strict=True)],
                  "pca_dims": [a.shape[0] for a, _ in transforms]}
    requested = own_args.get("learned_whitening_dim")
    if isinstance(requested, int) and requested > 0:  # other values are refused when the model is built
        model_args["learned_whitening_dim"] = min(requested, sum(model_args["pca_dims"]))
    _describe(members, averaged, transforms, pca_dim, len(train_rows), accelerator)
    warn_shared_identities(members, cfg, accelerator)

    all_features = [np.concatenate(averaged, axis=1), *per_view]
    label_map = build_label_map(train_table["identity"])
    labels = [label_map[i] for i in train_table["identity"]]
    image_loader = ImageLoader(cfg.data.image_size, resolve_cache_dir(cfg.data.cache_dir),
                               crop_to_bbox=cfg.data.crop_to_bbox, bbox_padding=cfg.data.bbox_padding)

    def dataset(table: pd.DataFrame, item_labels=None) -> FeatureDataset:
        images = ReIDDataset(table, image_loader, build_eval_transform(cfg.data.image_size, cfg.data.mean, cfg.data.std),
                             orientation_rules=cfg.data.orientation_rules)
        picked = table[ROW].to_numpy()
        return FeatureDataset([f[picked] for f in all_features], item_labels, images)

    sampler = build_batch_sampler(cfg.sampler, labels, cfg.train.batch_size, cfg.seed, num_replicas=num_replicas, rank=rank)
    if len(sampler) == 0:
        raise DataError(f"the training set ({len(train_table)} images) gives no full batch of {cfg.train.batch_size}; "
                        "lower train.batch_size")
    batches = SeededBatchSampler(sampler, cfg.seed)
    # Feature rows are ready in memory: worker processes would only add their start-up time.
    train_set = dataset(train_table, labels)
    loader = DataLoader(SeededDataset(train_set, reseed=train_set.set_random_seed), batch_sampler=batches, num_workers=0,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(cfg.seed))
    val_set = dataset(val_table) if val_table is not None else None
    def setup_model(model) -> None:
        whitening = None
        if model.has_whitening:  # fitted once the model has checked its arguments
            reduced = np.concatenate([block[train_rows] @ a.T + b for block, (a, b) in zip(averaged, transforms,
                                                                                             strict=True)], axis=1)
            whitening = fit_learned_whitening(reduced, train_table["identity"].astype(str).to_numpy(),
                                              model.model_args["learned_whitening_dim"],
                                              model.model_args["learned_whitening_shrinkage"])
        model.set_pca(transforms, whitening)

    return TrainData(train_table, val_table, label_map, loader, batches, val_set, model_args=model_args,
                     setup_model=setup_model)


def _same_data(member_data: Dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a member's recorded training data is this run's (same format, root and generated set)."""
    if member_data.get("format") != cfg.data.format:
        return False
    if cfg.data.format == "synthetic" and not cfg.data.root:
        return not member_data.get("root") and member_data.get("synthetic") == to_dict(cfg.data.synthetic)
    return bool(member_data.get("root")) and Path(member_data["root"]).absolute() == Path(cfg.data.root).absolute()


def shares_identities(meta: Dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a member (its export's metadata) was trained on identities this fusion run trains on.

    Disjoint only when both used the same number of identity parts and different parts; members
    trained elsewhere (other data, pretrained timm models) share none.
    """
    member_data = (meta.get("train_config") or {}).get("data") or {}
    if not member_data or not _same_data(member_data, cfg):
        return False
    parts, part = member_data.get("identity_parts", 1), member_data.get("identity_part", 0)
    return not (parts == cfg.data.identity_parts > 1 and part != cfg.data.identity_part)


def warn_shared_identities(members: Sequence[Member], cfg: TrainConfig, accelerator) -> None:
    shared = [m.spec for m in members if shares_identities(m.meta, cfg)]
    if shared:
        say(accelerator, f"warning: fusion member(s) {', '.join(shared)} trained on the identities this fusion trains "
                         "on: their features of these individuals are cleaner than of a new photo's, and the fusion "
                         "learns to trust them (measured below a plain blend of the members). Train the members with "
                         "data.identity_parts=2 data.identity_part=0 and the fusion with data.identity_parts=2 "
                         "data.identity_part=1.")


def _describe(members: Sequence[Member], blocks: Sequence[np.ndarray], transforms, pca_dim: int, n_train: int,
              accelerator) -> None:
    if accelerator is not None and not accelerator.is_main_process:
        return
    for member, block, (a, _) in zip(members, blocks, transforms, strict=True):
        capped = "" if a.shape[0] == pca_dim else f" (pca_dim={pca_dim} capped by the features' size or count)"
        print(f"fusion member {member.spec}: {block.shape[1]}-D features, PCA to {a.shape[0]}{capped}, "
              f"fitted on the {n_train} training images", flush=True)
