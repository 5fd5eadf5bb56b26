"""Database/query splits for training-time validation, threshold tuning and experiments.

Every split is deterministic by seed and independent of row order: identities and images are
sorted before the seeded shuffle, and each `dataset` draws from its own generator (seeded by the
seed and the dataset's name), so adding a dataset never changes another dataset's split. Rows
without an identity are dropped where labels are needed; no image lands in two parts.
"""
from __future__ import annotations

import zlib
from typing import Tuple

import numpy as np
import pandas as pd

from core.errors import ConfigError, DataError
from data.table import labelled


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _rng(seed: int, dataset: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(str(dataset).encode())])


def _labelled_groups(df: pd.DataFrame):
    """(dataset, its sorted identities, its rows) per dataset, over labelled rows only."""
    rows = labelled(df)
    if rows.empty:
        raise DataError("no labelled images (every identity is empty or unknown): nothing to split")
    for dataset, part in rows.groupby("dataset", sort=True):
        yield dataset, sorted(part["identity"].unique()), part


def _count(fraction: float, n: int) -> int:
    """How many of n items get `fraction`: at least one when fraction > 0 and n >= 2, never all."""
    if fraction <= 0 or n < 2:
        return 0
    return int(min(max(round(fraction * n), 1), n - 1))


def _query_count(fraction: float, n: int, rng: np.random.Generator) -> int:
    """Images of one identity sent to the query: stochastic rounding keeps the overall fraction
    unbiased when identities have few images; one image always stays in the database."""
    if n < 2:
        return 0
    return int(min(np.floor(fraction * n + rng.random()), n - 1))


def _with_split(df: pd.DataFrame, query_ids: set) -> pd.DataFrame:
    out = df.copy()
    out["split"] = np.where(out["image_id"].isin(query_ids), "query", "database")
    return out.reset_index(drop=True)


def identity_split(df: pd.DataFrame, fraction: float, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held_out): about `fraction` of each dataset's identities, with all their images, held out.

    Both parts are labelled reference material, so both get split `database`.
    """
    _check_fraction("identity split fraction", fraction)
    held = []
    for dataset, identities, part in _labelled_groups(df):
        rng = _rng(seed, dataset)
        chosen = rng.permutation(identities)[: _count(fraction, len(identities))]
        held.append(part[part["identity"].isin(set(chosen))])
    rows = labelled(df)
    held_ids = set(pd.concat(held)["image_id"]) if held else set()
    if fraction > 0 and not held_ids and rows["identity"].nunique() >= 2:
        # Each dataset has a single identity: hold out one identity over all of them.
        rng = _rng(seed, "")
        keys = sorted(set(zip(rows["dataset"], rows["identity"], strict=True)))
        dataset, identity = keys[int(rng.integers(len(keys)))]
        held_ids = set(rows["image_id"][(rows["dataset"] == dataset) & (rows["identity"] == identity)])
    in_held = rows["image_id"].isin(held_ids)
    rest, held_out = rows[~in_held].copy(), rows[in_held].copy()
    rest["split"] = "database"
    held_out["split"] = "database"
    return rest.reset_index(drop=True), held_out.reset_index(drop=True)


def identity_part(df: pd.DataFrame, parts: int, part: int) -> pd.DataFrame:
    """The labelled rows of part `part` of `parts` disjoint, near-equal parts of each dataset's
    identities (`parts` = 1: `df` unchanged).

    The parts depend on the identities alone (a fixed seed, not the run's), so runs with different
    seeds or recipes agree on them: a fusion model's members train on one part and the fusion on
    another, and the fusion never learns from features of individuals its members were fitted to.
    """
    if parts < 1 or not 0 <= part < parts:
        raise ConfigError(f"identity part {part} of {parts}: the part must be in 0..{parts - 1}")
    if parts == 1:
        return df
    kept = []
    for dataset, identities, rows in _labelled_groups(df):
        if len(identities) < parts:
            raise DataError(f"dataset {dataset!r} has {len(identities)} identities: too few for {parts} identity parts")
        chosen = np.array_split(_rng(0, dataset).permutation(identities), parts)[part]
        kept.append(rows[rows["identity"].isin(set(chosen))])
    return pd.concat(kept).reset_index(drop=True)


def open_set_split(df: pd.DataFrame, *, unknown_fraction: float = 0.2, query_fraction: float = 0.2,
                   seed: int = 0) -> pd.DataFrame:
    """Per dataset, `unknown_fraction` of identities appear only in the query (the "new" individuals);
    each other identity sends about `query_fraction` of its images to the query, the rest to the
    database, and an identity with a single image stays in the database. Identities are kept, so
    the query can be scored."""
    _check_fraction("unknown_fraction", unknown_fraction)
    _check_fraction("query_fraction", query_fraction)
    query_ids: set = set()
    for dataset, identities, part in _labelled_groups(df):
        rng = _rng(seed, dataset)
        unknown = set(rng.permutation(identities)[: _count(unknown_fraction, len(identities))])
        by_identity = dict(tuple(part.groupby("identity", sort=True)))
        for identity in identities:
            images = sorted(by_identity[identity]["image_id"])
            if identity in unknown:
                query_ids.update(images)
            else:
                n_query = _query_count(query_fraction, len(images), rng)
                query_ids.update(rng.permutation(images)[:n_query])
    return _with_split(labelled(df), query_ids)


def closed_set_split(df: pd.DataFrame, *, query_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Every query identity also has database images (an open-set split with no new individuals)."""
    return open_set_split(df, unknown_fraction=0.0, query_fraction=query_fraction, seed=seed)


def time_aware_split(df: pd.DataFrame, *, query_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Per identity, its latest-dated images go to the query, so the query is later than the database.

    Ties on the date are broken by image_id. An identity with no parseable dates falls back to a
    random choice; undated images of a dated identity stay in the database.
    """
    _check_fraction("query_fraction", query_fraction)
    rows = labelled(df)
    dates = pd.to_datetime(rows["date"], errors="coerce", format="mixed")
    if dates.isna().all():
        raise DataError("time-aware split needs dates: no labelled image has a parseable `date`")
    # One sort instead of one per identity: within an identity, undated rows come first, then by date.
    rows = rows.assign(_date=dates).sort_values(["dataset", "identity", "_date", "image_id"], na_position="first")
    query_ids: set = set()
    for dataset, part in rows.groupby("dataset", sort=True):
        rng = _rng(seed, dataset)
        identity = part["identity"].to_numpy()
        image_ids = part["image_id"].to_numpy()
        dated = part["_date"].notna().to_numpy()
        starts = np.flatnonzero(np.r_[True, identity[1:] != identity[:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(part)], strict=True):
            n_query = _query_count(query_fraction, end - start, rng)
            if not dated[start:end].any():
                query_ids.update(rng.permutation(sorted(image_ids[start:end]))[:n_query])
            elif n_query:
                latest = image_ids[start:end][dated[start:end]]
                query_ids.update(latest[-n_query:])
    return _with_split(rows.drop(columns="_date"), query_ids)


def split_from_column(df: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(database, query) as the table's own `split` column gives them."""
    database = df[df["split"] == "database"].reset_index(drop=True)
    query = df[df["split"] == "query"].reset_index(drop=True)
    return database, query


def gallery_and_query(df: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled database rows, query rows), each re-indexed: what evaluation matches, and the rows
    (gallery first, then queries) it embeds."""
    database, query = split_from_column(df)
    return database[database["identity"].notna()].reset_index(drop=True), query
