"""AnimalCLEF 2026: the format, the synthetic layout, a plain folder of photos, the cluster submission."""
from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from core.errors import ConfigError, DataError
from core.schema import DataConfig
from data.formats import load_table
from data.synthetic_animalclef2026 import NO_TRAIN_DATASET, generate_animalclef2026
from engine.outputs.submission import build_submission, submission_kind, validate_submission
from scripts import validate_submission as validator


def write_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (120, 30, 200)).save(path, format="JPEG")


def make_2026(root, rows, solution=None):
    for row in rows:
        write_image(root / row["path"])
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    if solution is not None:
        pd.DataFrame(solution).to_csv(root / "solution.csv", index=False)
    return root


ROWS = [
    {"image_id": "a", "identity": "L1", "path": "images/Lynx/train/L1/a.jpg", "split": "train", "dataset": "Lynx",
     "species": "lynx"},
    {"image_id": "b", "identity": "", "path": "images/Lynx/test/b.jpg", "split": "test", "dataset": "Lynx",
     "species": "lynx"},
    {"image_id": "c", "identity": "", "path": "images/Lizard/test/c.jpg", "split": "test", "dataset": "Lizard",
     "species": "lizard"},
]


def test_train_rows_are_labelled_database_rows_and_test_rows_queries(tmp_path):
    root = make_2026(tmp_path / "d", ROWS, solution=[{"image_id": "b", "identity": "L1"}])
    table = load_table(DataConfig(format="animalclef2026", root=str(root))).set_index("image_id")
    assert table.loc["a", ["identity", "split"]].tolist() == ["L1", "database"]
    assert table.loc["b", ["identity", "split"]].tolist() == ["L1", "query"]  # from solution.csv, for scoring
    assert table.loc["c", "identity"] is None and table.loc["c", "split"] == "query"  # a dataset without train rows


def test_a_test_identity_is_ignored_with_a_warning(tmp_path):
    rows = [dict(ROWS[0]), {**ROWS[1], "identity": "L1"}]
    root = make_2026(tmp_path / "d", rows)
    with pytest.warns(UserWarning, match="1 test rows carry an identity .b.; it is ignored"):
        table = load_table(DataConfig(format="animalclef2026", root=str(root)))
    assert table.set_index("image_id").loc["b", "identity"] is None


@pytest.mark.parametrize("identity", ["", "new_individual"])
def test_a_train_row_without_identity_is_an_error_naming_it(tmp_path, identity):
    rows = [{**ROWS[0], "identity": identity}, ROWS[1]]
    with pytest.raises(DataError, match=r"1 train rows have no identity .*: a"):
        load_table(DataConfig(format="animalclef2026", root=str(make_2026(tmp_path / "d", rows))))


def test_other_splits_and_stray_solution_ids_are_errors(tmp_path):
    with pytest.raises(DataError, match="split must be train or test.*database"):
        load_table(DataConfig(format="animalclef2026", root=str(make_2026(tmp_path / "d", [{**ROWS[0], "split": "database"}]))))
    root = make_2026(tmp_path / "e", ROWS, solution=[{"image_id": "a", "identity": "L1"}])
    with pytest.raises(DataError, match="solution.csv: 1 image ids are not test rows"):
        load_table(DataConfig(format="animalclef2026", root=str(root)))


def test_synthetic_2026_layout_has_a_dataset_without_train_rows(tmp_path):
    root = generate_animalclef2026(tmp_path / "s", seed=2, individuals=6, images_per_individual=4)
    meta = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    assert set(meta["split"]) == {"train", "test"} and (meta.loc[meta["split"] == "test", "identity"] == "").all()
    train = meta[meta["split"] == "train"]
    assert all(p.startswith(f"images/{d}/train/{i}/") for p, d, i in zip(train["path"], train["dataset"], train["identity"]))
    assert NO_TRAIN_DATASET not in set(train["dataset"])
    table = load_table(DataConfig(format="animalclef2026", root=str(root)))
    assert table.loc[table["split"] == "query", "identity"].notna().all()  # solution.csv read
    new = set(table.loc[table["split"] == "query", "identity"]) - set(train["identity"])
    assert new and set(train["identity"]) & set(table.loc[table["split"] == "query", "identity"])  # known and new mixed
    assert generate_animalclef2026(root, seed=2, individuals=6, images_per_individual=4) == root  # reused


def test_a_plain_folder_of_photos_is_a_dataset_of_test_rows(tmp_path):
    for name in ("x.jpg", "trip/y.jpg"):
        write_image(tmp_path / "photos" / name)
    table = load_table(DataConfig(format="folders", query_root=str(tmp_path / "photos")))
    assert sorted(table["image_id"]) == ["trip/y.jpg", "x.jpg"]
    assert set(table["split"]) == {"query"} and table["identity"].isna().all() and set(table["dataset"]) == {"photos"}


def test_cluster_submission_validation(tmp_path):
    root = make_2026(tmp_path / "d", ROWS)
    table = load_table(DataConfig(format="animalclef2026", root=str(root)))
    kind = submission_kind("animalclef2026", "auto", "cluster")
    good = build_submission(kind, table, ["cluster_Lynx_0", "cluster_Lizard_0"])
    assert list(good.columns) == ["image_id", "cluster"] and validate_submission(good, table, kind) == []
    bad = pd.DataFrame({"image_id": ["b", "c"], "cluster": ["cluster_Lizard_0", "cluster_Lizard_0"]})
    problems = validate_submission(bad, table, kind)
    assert any("do not start with cluster_<dataset>_: b: cluster_Lizard_0 (dataset Lynx)" in p for p in problems)
    assert any("1 clusters span several datasets: cluster_Lizard_0" in p for p in problems)
    assert any("query images" in p or "no prediction" in p
               for p in validate_submission(good.iloc[:1], table, kind))
    with pytest.raises(ConfigError, match="does not fit task=identify"):
        submission_kind("animalclef2026", "animalclef2026", "identify")
    path = tmp_path / "sub.csv"
    good.to_csv(path, index=False)
    validator.main([str(path), "--format", "animalclef2026", "--root", str(root)])
