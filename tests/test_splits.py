"""Split properties on an in-memory table: disjoint, deterministic, fractions and protocols respected."""
from __future__ import annotations

import pandas as pd
import pytest

from core.errors import ConfigError, DataError
from data.splits import (
    closed_set_split,
    identity_part,
    identity_split,
    open_set_split,
    split_from_column,
    time_aware_split,
)
from data.table import make_table


def make_rows(n_identities: int = 40, datasets=("A", "B")) -> pd.DataFrame:
    """Identities with 1 to 8 images, dated in increasing order, plus two unlabelled rows."""
    rows = []
    for dataset in datasets:
        for i in range(n_identities):
            for k in range(1 + i % 8):
                rows.append({"image_id": f"{dataset}{i}_{k}", "identity": f"{dataset}_{i}", "path": f"/x/{dataset}{i}_{k}",
                             "split": "database", "dataset": dataset, "date": f"2021-{1 + (k * 5 + i) % 12:02d}-01"})
    rows += [{"image_id": f"u{j}", "identity": None, "path": f"/x/u{j}", "split": "query", "dataset": "A"}
             for j in range(2)]
    return make_table(rows)


def identities(df: pd.DataFrame) -> set:
    return set(df["identity"])


def test_open_set_is_a_partition_of_labelled_rows_and_deterministic():
    df = make_rows()
    out = open_set_split(df, seed=1)
    labelled_ids = set(df["image_id"][df["identity"].notna()])
    assert out["image_id"].is_unique and set(out["image_id"]) == labelled_ids
    assert set(out["split"]) == {"database", "query"}
    assert out.equals(open_set_split(df.sample(frac=1, random_state=0), seed=1)
                      .set_index("image_id").loc[out["image_id"]].reset_index()[out.columns])
    assert not out["split"].equals(open_set_split(df, seed=2)["split"])


def test_open_set_unknown_fraction_and_singletons_stay_in_database():
    out = open_set_split(make_rows(), unknown_fraction=0.2, query_fraction=0.2, seed=0)
    for _dataset, part in out.groupby("dataset"):
        database, query = part[part["split"] == "database"], part[part["split"] == "query"]
        new = identities(query) - identities(database)
        assert len(new) == 8  # 20 % of 40 identities, only in the query
        known = part[~part["identity"].isin(new)]
        sizes = known.groupby("identity").size()
        singletons = set(sizes.index[sizes == 1])
        assert singletons and set(known["split"][known["identity"].isin(singletons)]) == {"database"}
        known_query_share = (known["split"] == "query").mean()
        assert 0.1 < known_query_share < 0.3


def test_closed_set_query_identities_are_all_in_database():
    out = closed_set_split(make_rows(), query_fraction=0.3, seed=4)
    database, query = split_from_column(out)
    assert len(query) > 0 and identities(query) <= identities(database)


def test_identity_split_is_identity_disjoint_and_proportional_per_dataset():
    df = make_rows()
    rest, held = identity_split(df, 0.25, seed=3)
    assert not identities(rest) & identities(held)
    assert set(rest["image_id"]) | set(held["image_id"]) == set(df["image_id"][df["identity"].notna()])
    assert held.groupby("dataset")["identity"].nunique().to_dict() == {"A": 10, "B": 10}
    again_rest, again_held = identity_split(df, 0.25, seed=3)
    assert again_held.equals(held) and again_rest.equals(rest)
    assert set(held["split"]) == set(rest["split"]) == {"database"}


def test_identity_split_holds_out_one_identity_of_a_tiny_set():
    df = make_rows(n_identities=2, datasets=("A",))
    rest, held = identity_split(df, 0.1, seed=0)
    assert held["identity"].nunique() == 1 and rest["identity"].nunique() == 1


def test_identity_parts_are_disjoint_cover_every_identity_and_ignore_the_run_seed():
    df = make_rows()
    parts = [identity_part(df, 3, k) for k in range(3)]
    for k, part in enumerate(parts):
        for other in parts[k + 1:]:
            assert not identities(part) & identities(other)
        # Near-equal per dataset: 40 identities each -> 14, 13, 13.
        assert sorted(part.groupby("dataset")["identity"].nunique().tolist()) in ([13, 13], [14, 14])
    assert set().union(*map(identities, parts)) == identities(df[df["identity"].notna()])
    assert identity_part(df.sample(frac=1.0, random_state=5), 3, 1).sort_values("image_id").reset_index(drop=True).equals(
        parts[1].sort_values("image_id").reset_index(drop=True))  # row order does not matter
    assert identity_part(df, 1, 0) is df
    with pytest.raises(ConfigError, match="must be in 0..1"):
        identity_part(df, 2, 2)
    with pytest.raises(DataError, match="too few for 50 identity parts"):
        identity_part(df, 50, 0)


def test_time_aware_query_is_later_than_database():
    out = time_aware_split(make_rows(), query_fraction=0.3, seed=0)
    dates = pd.to_datetime(out["date"])
    checked = 0
    for _, part in out.assign(date=dates).groupby("identity"):
        query = part[part["split"] == "query"]
        if len(query):
            assert query["date"].min() >= part[part["split"] == "database"]["date"].max()
            checked += 1
    assert checked > 20


def test_time_aware_falls_back_to_random_for_undated_identities_and_needs_some_dates():
    df = make_rows(n_identities=8, datasets=("A",))
    undated = df["identity"] == "A_7"  # 8 images, no dates
    df.loc[undated, "date"] = None
    out = time_aware_split(df, query_fraction=0.5, seed=0)
    assert (out["split"][out["identity"] == "A_7"] == "query").sum() == 4
    df["date"] = None
    with pytest.raises(DataError, match="needs dates"):
        time_aware_split(df)


def test_bad_fractions_and_unlabelled_input():
    with pytest.raises(ConfigError, match="query_fraction must be in"):
        open_set_split(make_rows(), query_fraction=1.0)
    with pytest.raises(DataError, match="no labelled images"):
        open_set_split(make_table([{"image_id": "q", "identity": None, "path": "/q", "split": "query",
                                    "dataset": "A"}]))
