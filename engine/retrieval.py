"""Top-K retrieval with faiss, and identity-level scores from the retrieved images.

Embeddings are L2-normalised, so inner product = cosine similarity. A dense query x gallery
matrix is never formed (140k images would need 78 GB): faiss scores
blocks and keeps only the top K, and queries go in batches so memory stays bounded.

Results stay compact: (Q, k) arrays of identity codes and scores, padded with -1 / -inf, which
index `RetrievalResult.identities`; `candidates()` turns them into per-query lists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import metadata
from typing import List, Sequence, Tuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.errors import ConfigError, DataError
from core.schema import RetrievalConfig
from core.suggest import did_you_mean

# The PyPI builds of faiss; each installs the same `faiss` module, so two of them overwrite each other's
# files and leave a module that fails in odd ways. GPU: `pip uninstall -y faiss-cpu` first (docs/install.md).
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12")


def installed_faiss() -> List[str]:
    """The faiss distributions installed here."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def check_faiss_install(found: Sequence[str]) -> None:
    """One faiss build, or an ImportError that says how to keep one."""
    if len(found) > 1:
        raise ImportError(
            f"{' and '.join(found)} are both installed: they ship the same `faiss` module, so one has overwritten "
            f"the other's files. Keep one: `pip uninstall -y {' '.join(found)}`, then `pip install faiss-gpu-cu12` "
            "for a CUDA 12 GPU or `pip install faiss-cpu` (docs/install.md)")


check_faiss_install(installed_faiss())
import faiss  # noqa: E402  (after the check: a mixed install fails inside faiss with no hint)

INDEXES = ("flat", "ivf", "hnsw")
AGGREGATIONS = ("max", "mean_top_m")
QUERY_BATCH = 8192  # queries per faiss call: bounds the (batch, k) buffers, not the speed
ADD_CHUNK = 65536  # gallery rows added per call, so large galleries show progress
IVF_TRAIN_PER_LIST = 40  # faiss k-means wants >= 39 points per cluster; more only costs time
PAD_CODE = -1
PAD_SCORE = -np.inf

Candidates = List[List[Tuple[str, float]]]


def as_float32(x: np.ndarray, name: str) -> np.ndarray:
    """2-D C-contiguous float32 view (copied only when needed)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, dims), got shape {x.shape}")
    return x


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = as_float32(x, "embeddings")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check_normalised(x: np.ndarray, name: str) -> None:
    # A sample suffices: embeddings of one model are normalised all or none.
    norms = np.linalg.norm(x[:1024], axis=1)
    if len(norms) and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"{name} must be L2-normalised (row norms {norms.min():.3f}..{norms.max():.3f}); "
                         "use engine.retrieval.l2_normalize")


def _check_config(cfg: RetrievalConfig) -> None:
    if cfg.index not in INDEXES:
        raise ConfigError(f"retrieval.index: unknown index '{cfg.index}'{did_you_mean(cfg.index, INDEXES)}")
    if cfg.aggregation not in AGGREGATIONS:
        raise ConfigError(f"retrieval.aggregation: unknown '{cfg.aggregation}'"
                          f"{did_you_mean(cfg.aggregation, AGGREGATIONS)}")
    for key in ("k", "m", "nprobe", "hnsw_m", "ef_search"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"retrieval.{key} must be >= 1, got {getattr(cfg, key)}")


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU (faiss-cpu: never)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _ivf_lists(cfg: RetrievalConfig, n: int) -> int:
    # The default also keeps >= 39 points per list, so k-means is well posed on small galleries.
    nlist = cfg.nlist or min(int(round(4 * math.sqrt(n))), n // 39)
    return max(1, min(nlist, n))


def build_index(gallery: np.ndarray, cfg: RetrievalConfig | None = None, progress: bool = False):
    """A faiss inner-product index over `gallery` ((N, D) float32, L2-normalised).

    flat: exact IndexFlatIP. ivf: IndexIVFFlat, nlist = cfg.nlist or 4*sqrt(N), k-means trained
    on a random sample, nprobe = cfg.nprobe. hnsw: IndexHNSWFlat, M = cfg.hnsw_m, efSearch =
    cfg.ef_search. Flat and IVF move to the GPU when cfg.use_gpu and faiss sees one; HNSW has no
    faiss GPU version and stays on the CPU.
    """
    cfg = cfg or RetrievalConfig()
    _check_config(cfg)
    x = as_float32(gallery, "gallery")
    if len(x) == 0:
        raise DataError("the gallery is empty: there is nothing to retrieve from")
    _check_normalised(x, "gallery")
    n, dim = x.shape
    if cfg.index == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.index == "ivf":
        nlist = _ivf_lists(cfg, n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(cfg.nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(cfg.ef_construction, cfg.ef_search)
        index.hnsw.efSearch = cfg.ef_search
    if cfg.use_gpu and cfg.index != "hnsw" and gpu_available():
        index = faiss.index_cpu_to_all_gpus(index)
    if cfg.index == "ivf":
        sample_size = min(n, IVF_TRAIN_PER_LIST * _ivf_lists(cfg, n))
        rows = np.sort(np.random.default_rng(0).choice(n, size=sample_size, replace=False))
        index.train(x[rows])
    for start in tqdm(range(0, n, ADD_CHUNK), desc=f"index ({cfg.index})", unit="chunk",
                      disable=not progress or n <= ADD_CHUNK):
        index.add(x[start:start + ADD_CHUNK])
    return index


def _batched(run, queries: np.ndarray, k: int, batch_size: int, progress: bool) -> Tuple[np.ndarray, np.ndarray]:
    q = len(queries)
    scores = np.full((q, k), PAD_SCORE, dtype=np.float32)
    indices = np.full((q, k), -1, dtype=np.int64)
    for start in tqdm(range(0, q, batch_size), desc="search", unit="batch",
                      disable=not progress or q <= batch_size):
        stop = min(start + batch_size, q)
        scores[start:stop], indices[start:stop] = run(queries[start:stop])
    # faiss pads missing neighbours (IVF with few probed lists) with -1 and a sentinel distance.
    scores[indices < 0] = PAD_SCORE
    return scores, indices


def search(index, queries: np.ndarray, k: int, batch_size: int = QUERY_BATCH,
           progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k (scores (Q, k) float32 best first, gallery rows (Q, k) int64), k clipped to the gallery size."""
    x = as_float32(queries, "queries")
    k = min(int(k), index.ntotal)
    if k < 1:
        raise ValueError(f"k must be >= 1 and the index non-empty (k={k}, ntotal={index.ntotal})")
    return _batched(lambda batch: index.search(batch, k), x, k, batch_size, progress)


def exact_search(queries: np.ndarray, gallery: np.ndarray, k: int, batch_size: int = QUERY_BATCH,
                 progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product straight from the gallery array: faiss's IndexFlatIP kernel
    without the index, which would hold a second copy of the gallery."""
    x, g = as_float32(queries, "queries"), as_float32(gallery, "gallery")
    if x.shape[1] != g.shape[1]:
        raise ValueError(f"queries have {x.shape[1]} dims, the gallery {g.shape[1]}")
    k = min(int(k), len(g))
    if k < 1:
        raise ValueError(f"k must be >= 1 and the gallery non-empty (k={k}, gallery={len(g)})")
    return _batched(lambda batch: faiss.knn(batch, g, k, metric=faiss.METRIC_INNER_PRODUCT),
                    x, k, batch_size, progress)


def encode_labels(gallery_labels: Sequence) -> Tuple[np.ndarray, np.ndarray]:
    """(codes (N,) int64, identities (I,) object); unlabelled gallery images (None) get code -1."""
    codes, uniques = pd.factorize(pd.Series(list(gallery_labels), dtype=object))
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def aggregate_identities(scores: np.ndarray, indices: np.ndarray, gallery_codes: np.ndarray,
                         aggregation: str = "max", m: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """Identity ranking per query from its retrieved images: (codes (Q, k), scores (Q, k)).

    An identity's score is the max over its retrieved images, or with "mean_top_m" the mean of its
    best m (of those retrieved; fewer when fewer were retrieved). Rows are sorted by score, best
    first, padded with code -1 / score -inf. Gallery images with code -1 (no identity) are ignored.
    Vectorised over all (query, image) pairs: one sort, no Python loop per element.
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation '{aggregation}'{did_you_mean(aggregation, AGGREGATIONS)}")
    q, k = indices.shape
    out_codes = np.full((q, k), PAD_CODE, dtype=np.int64)
    out_scores = np.full((q, k), PAD_SCORE, dtype=np.float32)
    codes = np.where(indices >= 0, gallery_codes[np.maximum(indices, 0)], PAD_CODE).ravel()
    keep = codes >= 0
    if not keep.any():
        return out_codes, out_scores
    rows = np.repeat(np.arange(q), k)[keep]
    codes, values = codes[keep], scores.ravel()[keep].astype(np.float64)
    # Sort by (query, identity, score descending): each identity's images become one run, best first.
    order = np.lexsort((-values, codes, rows))
    rows, codes, values = rows[order], codes[order], values[order]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (codes[1:] != codes[:-1])
    starts = np.flatnonzero(first)
    if aggregation == "max":
        agg = values[starts]
    else:
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
        top = rank < m
        agg = np.add.reduceat(np.where(top, values, 0.0), starts) / np.add.reduceat(top.astype(np.int64), starts)
    rows, codes = rows[starts], codes[starts]
    order = np.lexsort((-agg, rows))
    rows, codes, agg = rows[order], codes[order], agg[order]
    position = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    out_codes[rows, position] = codes
    out_scores[rows, position] = agg
    return out_codes, out_scores


def to_candidates(identities: np.ndarray, codes: np.ndarray, scores: np.ndarray,
                  top: int | None = None) -> Candidates:
    """Per-query [(identity, score), ...] best first, padding dropped."""
    names = list(identities)
    width = codes.shape[1] if top is None else min(top, codes.shape[1])
    return [[(names[c], s) for c, s in zip(crow, srow, strict=True) if c >= 0]
            for crow, srow in zip(codes[:, :width].tolist(), scores[:, :width].tolist(), strict=True)]


def identity_scores(scores: np.ndarray, indices: np.ndarray, gallery_labels: Sequence,
                    aggregation: str = "max", m: int = 3) -> Candidates:
    """Per-query [(identity, score), ...] sorted descending; see `aggregate_identities`."""
    gallery_codes, identities = encode_labels(gallery_labels)
    codes, agg = aggregate_identities(scores, indices, gallery_codes, aggregation, m)
    return to_candidates(identities, codes, agg)


@dataclass
class RetrievalResult:
    """Image-level top-k and identity-level ranking of Q queries against one gallery."""

    scores: np.ndarray  # (Q, k) float32 similarity of the retrieved gallery images, best first
    indices: np.ndarray  # (Q, k) int64 gallery rows, -1 where nothing was retrieved
    image_codes: np.ndarray  # (Q, k) int64 identity code of each retrieved image, -1 if none
    identity_codes: np.ndarray  # (Q, k) int64 identities ranked by aggregated score, -1 padded
    identity_scores: np.ndarray  # (Q, k) float32 aggregated scores, -inf padded
    identities: np.ndarray  # (I,) object: identity of each code

    def _labels(self, codes: np.ndarray) -> np.ndarray:
        names = np.append(self.identities, None).astype(object)
        return names[np.where(codes >= 0, codes, len(self.identities))]

    def image_labels(self) -> np.ndarray:
        """(Q, k) identities of the retrieved images (None padded): input of CMC and mAP."""
        return self._labels(self.image_codes)

    def ranked_identities(self) -> np.ndarray:
        """(Q, k) identity ranking (None padded)."""
        return self._labels(self.identity_codes)

    def best(self) -> Tuple[np.ndarray, np.ndarray]:
        """(best identity per query (None if none), its score (-inf if none))."""
        return self._labels(self.identity_codes[:, 0]), self.identity_scores[:, 0].astype(np.float64)

    def candidates(self, top: int | None = None) -> Candidates:
        return to_candidates(self.identities, self.identity_codes, self.identity_scores, top)


def retrieve(queries: np.ndarray, gallery: np.ndarray, gallery_labels: Sequence,
             cfg: RetrievalConfig | None = None, progress: bool = False) -> RetrievalResult:
    """Search `queries` against `gallery` and rank identities (cfg.aggregation, cfg.m)."""
    cfg = cfg or RetrievalConfig()
    _check_config(cfg)
    x, g = as_float32(queries, "queries"), as_float32(gallery, "gallery")
    if len(g) == 0:
        raise DataError("the gallery is empty: there is nothing to retrieve from")
    if len(gallery_labels) != len(g):
        raise ValueError(f"{len(gallery_labels)} gallery labels for {len(g)} gallery vectors")
    _check_normalised(x, "queries")
    _check_normalised(g, "gallery")
    if cfg.index == "flat" and not (cfg.use_gpu and gpu_available()):
        scores, indices = exact_search(x, g, cfg.k, progress=progress)
    else:
        scores, indices = search(build_index(g, cfg, progress), x, cfg.k, progress=progress)
    gallery_codes, identities = encode_labels(gallery_labels)
    image_codes = np.where(indices >= 0, gallery_codes[np.maximum(indices, 0)], PAD_CODE)
    codes, agg = aggregate_identities(scores, indices, gallery_codes, cfg.aggregation, cfg.m)
    return RetrievalResult(scores, indices, image_codes, codes, agg, identities)
