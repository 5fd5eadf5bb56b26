"""Re-ranking without pixels, from the faiss top-k graph of the embeddings: k-reciprocal encoding
(Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017, as
fast-reid and torchreid ship it), alpha query expansion (alpha-QE) and database-side augmentation
(DBA, Radenovic et al.).

Nothing here forms a dense N x N matrix: each image's k1 + 1 nearest neighbours come from faiss
(`engine.retrieval`), its k-reciprocal set and its expansion are masks over those lists, the
encodings V are sparse rows (scipy CSR, about k1 * k2 non-zeros each), and the Jaccard distance is
computed only for the pairs asked for, in chunks. Memory grows with N * k1 * k2, never N^2.

Distances on L2-normalised embeddings: d(i, j) = 1 - cos(i, j), in [0, 2]. The k-reciprocal
distance of a pair is (1 - lambda) * Jaccard(V_i, V_j) + lambda * d(i, j), as in the paper.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.sparse as sp

from core.schema import RetrievalConfig
from engine.retrieval import as_float32, build_index, exact_search, search

ROW_CHUNK = 1024  # images per vectorised step of the expansion (about 5 MB of masks at k1 = 20)
PAIR_CHUNK = 65536  # pairs per sparse minimum in the Jaccard distance


def knn_graph(x: np.ndarray, k: int, cfg: RetrievalConfig | None = None) -> Tuple[np.ndarray, np.ndarray]:
    """(N, k) cosine similarities and indices of each row's k nearest rows, itself first (ties
    aside), from faiss: exact by default, or the index of `cfg` (ivf, hnsw) for large N."""
    x = as_float32(x, "embeddings")
    k = min(k, len(x))
    if cfg is None or cfg.index == "flat":
        scores, indices = exact_search(x, x, k)
    else:
        scores, indices = search(build_index(x, cfg), x, k)
    # Make every row its own first neighbour (duplicates may come back in any order).
    own = np.arange(len(x))[:, None]
    is_self = indices == own
    missing = ~is_self.any(axis=1)
    indices[missing, -1] = own[missing, 0]  # drop the last neighbour for self when faiss missed it
    scores[missing, -1] = 1.0
    order = np.argsort(~(indices == own), axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def _reciprocal(indices: np.ndarray, width: int) -> np.ndarray:
    """(N, width) bool: j = indices[i, t] is a k-reciprocal neighbour (i is among j's first `width`)."""
    top = indices[:, :width]
    back = top[np.maximum(top, 0)]  # (N, width, width): the lists of i's neighbours
    return (back == np.arange(len(indices))[:, None, None]).any(axis=2) & (top >= 0)


def k_reciprocal_encoding(x: np.ndarray, k1: int = 20, k2: int = 6,
                          cfg: RetrievalConfig | None = None) -> Tuple[sp.csr_matrix, np.ndarray]:
    """Sparse (N, N) V: row i holds exp(-d(i, j)) over i's expanded k-reciprocal set R*(i, k1),
    normalised to sum 1, then averaged over i's k2 nearest neighbours (local query expansion);
    and the (N, k1 + 1) neighbour indices it was built from."""
    x = as_float32(x, "embeddings")
    n = len(x)
    _, indices = knn_graph(x, k1 + 1, cfg)
    width, half = indices.shape[1], min(int(round(k1 / 2)) + 1, indices.shape[1])
    full = _reciprocal(indices, width)  # R(i, k1) as a mask over i's list
    halves = _reciprocal(indices, half)  # R(c, k1/2) as a mask over c's first `half`
    rows, cols, weights = [], [], []
    for start in range(0, n, ROW_CHUNK):
        stop = min(start + ROW_CHUNK, n)
        members = np.where(full[start:stop], indices[start:stop], -1)  # (B, width): R(i)
        cands = np.maximum(members, 0)
        theirs = np.where(halves[cands], indices[cands, :half], -2)  # (B, width, half): R(c, k1/2)
        inside = (theirs[:, :, :, None] == members[:, None, None, :]).any(axis=3)  # each in R(i)?
        size = (theirs >= 0).sum(axis=2)
        added = (members >= 0) & (inside.sum(axis=2) > 2 / 3 * size)  # the paper's expansion rule
        expanded = np.concatenate([members, np.where(added[:, :, None], theirs, -1).reshape(stop - start, -1)], 1)
        expanded = np.sort(expanded, axis=1)
        keep = (expanded >= 0) & np.concatenate([np.ones((stop - start, 1), bool),
                                                 expanded[:, 1:] != expanded[:, :-1]], axis=1)
        r, c = np.nonzero(keep)
        rows.append((r + start).astype(np.int32))
        cols.append(expanded[r, c].astype(np.int32))
        distance = 1.0 - np.einsum("ij,ij->i", x[rows[-1]], x[cols[-1]])
        weights.append(np.exp(-distance).astype(np.float32))
    v = sp.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    v = sp.diags(1.0 / np.maximum(np.asarray(v.sum(axis=1)).ravel(), 1e-12)).astype(np.float32) @ v
    if k2 > 1:  # V_i = mean of V over i's k2 nearest neighbours (itself first)
        near = indices[:, :min(k2, width)]
        q = sp.csr_matrix((np.full(near.size, 1.0 / near.shape[1], np.float32),
                           (np.repeat(np.arange(n), near.shape[1]), near.ravel())), shape=(n, n))
        v = (q @ v).tocsr()
    return v, indices


def jaccard_distance(v: sp.csr_matrix, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(P,) 1 - sum(min(V_a, V_b)) / sum(max(V_a, V_b)) of the pairs (first[p], second[p])."""
    out = np.empty(len(first))
    totals = np.asarray(v.sum(axis=1)).ravel()
    for start in range(0, len(first), PAIR_CHUNK):
        a, b = first[start:start + PAIR_CHUNK], second[start:start + PAIR_CHUNK]
        common = np.asarray(v[a].minimum(v[b]).sum(axis=1)).ravel()
        union = totals[a] + totals[b] - common
        out[start:start + PAIR_CHUNK] = 1.0 - common / np.maximum(union, 1e-12)
    return out


def k_reciprocal_distance(x: np.ndarray, v: sp.csr_matrix, first: np.ndarray, second: np.ndarray,
                          lambda_value: float = 0.3) -> np.ndarray:
    """(P,) the k-reciprocal distance of the pairs: (1 - lambda) Jaccard + lambda (1 - cos)."""
    cosine = np.empty(len(first))
    for start in range(0, len(first), PAIR_CHUNK):  # in chunks: the pairs' vectors are never all copied at once
        a, b = first[start:start + PAIR_CHUNK], second[start:start + PAIR_CHUNK]
        cosine[start:start + PAIR_CHUNK] = np.einsum("ij,ij->i", x[a].astype(np.float64), x[b].astype(np.float64))
    return (1 - lambda_value) * jaccard_distance(v, first, second) + lambda_value * (1.0 - cosine)


def expanded(x: np.ndarray, sources: np.ndarray, k: int, alpha: float, exclude_self: bool) -> np.ndarray:
    """alpha-QE / DBA: each row of `x` replaced by the L2-normalised sum of itself and its k nearest
    rows of `sources` (faiss, exact), each weighted by max(cos, 0) ** alpha. With `exclude_self`,
    a row found among the sources (the same vector) is not counted twice."""
    x, sources = as_float32(x, "embeddings"), as_float32(sources, "embeddings")
    if len(sources) == 0 or k < 1:
        return x.copy()
    extra = int(exclude_self)
    scores, indices = exact_search(x, sources, min(k + extra, len(sources)))
    if exclude_self:  # drop one exact copy of the row itself, else the last neighbour
        same = np.isclose(scores, 1.0, atol=1e-6) & (np.abs(sources[np.maximum(indices, 0)] - x[:, None]).max(2) < 1e-6)
        drop = np.where(same.any(axis=1), same.argmax(axis=1), scores.shape[1] - 1)
        keep = np.ones_like(same)
        keep[np.arange(len(x)), drop] = False
        scores, indices = scores[keep].reshape(len(x), -1), indices[keep].reshape(len(x), -1)
    scores, indices = scores[:, :k], indices[:, :k]
    weights = np.where(indices >= 0, np.maximum(scores, 0) ** alpha, 0).astype(np.float32)
    out = x + np.einsum("qk,qkd->qd", weights, sources[np.maximum(indices, 0)])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
