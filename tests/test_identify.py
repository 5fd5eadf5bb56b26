"""Identifying photos as a user has them: a labelled gallery of ROOT/<identity>/ folders (or a CSV)
plus a plain folder of new photos (data.query_root); predictions.csv; report captions."""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_BACKBONE
from PIL import Image

import eval as eval_cli
import train as train_cli
from core.config import load_config
from core.errors import ConfigError, DataError
from core.schema import DataConfig, EvalConfig
from data.formats import load_table
from engine.identify.predictions import columns, predictions_frame, query_files
from engine.visual import truth_caption
from zoo import build_model, save_export

SIZE = 32
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "eval" / "default.yaml"


def photo(path: Path, shade: int) -> Path:
    """A tiny image whose bytes differ with `shade` (identical bytes would be the same photo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade, 30, 200)).save(path, format="PNG")
    return path


def gallery_and_new(tmp_path: Path) -> tuple:
    gallery, new = tmp_path / "Dogs", tmp_path / "new photos"
    photo(gallery / "Bo" / "b1.png", 1)
    photo(gallery / "Bo" / "b2.png", 2)
    photo(gallery / "Rex" / "r1.png", 3)
    photo(new / "IMG_1.png", 10)
    photo(new / "trip" / "IMG_2.png", 11)
    (new / "notes.txt").write_text("not a photo")
    return gallery, new


def folders_config(gallery: Path, new: Path, **kwargs) -> DataConfig:
    return DataConfig(format="folders", root=str(gallery), query_root=str(new), **kwargs)


# ----------------------------------------------------------------------------- the table


def test_query_root_photos_become_unlabelled_queries_of_the_gallery_dataset(tmp_path):
    gallery, new = gallery_and_new(tmp_path)
    df = load_table(folders_config(gallery, new))
    database, query = df[df["split"] == "database"], df[df["split"] == "query"]
    assert dict(zip(database["image_id"], database["identity"], strict=True)) == {
        "Bo/b1.png": "Bo", "Bo/b2.png": "Bo", "Rex/r1.png": "Rex"}
    assert list(query["image_id"]) == ["IMG_1.png", "trip/IMG_2.png"]
    assert query["identity"].isna().all() and set(query["dataset"]) == {"Dogs"}
    assert list(query["path"]) == [str((new / "IMG_1.png").absolute()), str((new / "trip" / "IMG_2.png").absolute())]


def test_a_query_folder_inside_the_gallery_root_is_not_an_identity(tmp_path):
    gallery, _ = gallery_and_new(tmp_path)
    photo(gallery / "unlabelled" / "q.png", 20)
    df = load_table(folders_config(gallery, gallery / "unlabelled"))
    assert set(df.loc[df["split"] == "database", "identity"]) == {"Bo", "Rex"}
    assert list(df.loc[df["split"] == "query", "image_id"]) == ["q.png"]


def test_a_relative_query_root_is_read_from_the_working_folder(tmp_path, monkeypatch):
    gallery, _ = gallery_and_new(tmp_path)
    monkeypatch.chdir(tmp_path)
    df = load_table(DataConfig(format="folders", root="Dogs", query_root="new photos"))
    assert (df["split"] == "query").sum() == 2


def test_a_csv_gallery_takes_a_query_folder_too(tmp_path):
    photo(tmp_path / "lib" / "a.png", 1)
    photo(tmp_path / "lib" / "b.png", 2)
    pd.DataFrame({"file": ["a.png", "b.png"], "animal": ["A", "B"], "species": ["dog", "dog"]}).to_csv(
        tmp_path / "lib" / "list.csv", index=False)
    photo(tmp_path / "new" / "x.png", 9)
    df = load_table(DataConfig(format="csv", root=str(tmp_path / "lib" / "list.csv"),
                               columns={"path": "file", "identity": "animal"}, query_root=str(tmp_path / "new")))
    query = df[df["split"] == "query"]
    assert list(query["image_id"]) == ["x.png"] and list(query["species"]) == ["dog"]
    assert list(query["dataset"]) == ["lib"]


def _bad_cases():
    def missing(tmp, gallery, new):
        return gallery, tmp / "nowhere", "data.query_root .*nowhere does not exist"

    def empty(tmp, gallery, new):
        (tmp / "empty").mkdir()
        return gallery, tmp / "empty", "data.query_root .*empty is empty"

    def no_images(tmp, gallery, new):
        (tmp / "docs").mkdir()
        (tmp / "docs" / "a.txt").write_text("x")
        return gallery, tmp / "docs", r"no images found under data.query_root .*docs.*1 other files: a.txt"

    def empty_identity_folders(tmp, gallery, new):
        (tmp / "Cats" / "Tom").mkdir(parents=True)
        (tmp / "Cats" / "Kit").mkdir()
        return tmp / "Cats", new, r"no images found under .*Cats: its 2 identity folders \(Kit, Tom\) hold none"

    def only_the_query_folder(tmp, gallery, new):
        photo(tmp / "Cats" / "new" / "q.png", 30)
        return tmp / "Cats", tmp / "Cats" / "new", "no labelled images under data.root .*Cats outside data.query_root"

    def copied_gallery_photo(tmp, gallery, new):
        shutil.copy(gallery / "Rex" / "r1.png", new / "trip" / "again.png")
        return gallery, new, r"1 photos are both in the gallery and in data.query_root .*trip/again.png = Rex/r1.png"

    def linked_gallery_photo(tmp, gallery, new):
        (new / "link.png").symlink_to(gallery / "Bo" / "b2.png")
        return gallery, new, r"1 photos are both in the gallery .*link.png = Bo/b2.png"

    def same_folder(tmp, gallery, new):
        return gallery, gallery, "is the labelled gallery data.root itself"

    def gallery_inside(tmp, gallery, new):
        return gallery, tmp, "lies inside data.query_root"

    def same_relative_path(tmp, gallery, new):
        photo(new / "Bo" / "b1.png", 40)
        return gallery, new, r"1 photos in data.query_root have the same relative path as a gallery image \(Bo/b1.png\)"

    return [missing, empty, no_images, empty_identity_folders, only_the_query_folder, copied_gallery_photo,
            linked_gallery_photo, same_folder, gallery_inside, same_relative_path]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda case: case.__name__)
def test_bad_gallery_or_query_folders_are_named(tmp_path, case):
    gallery, new = gallery_and_new(tmp_path)
    root, query_root, message = case(tmp_path, gallery, new)
    with pytest.raises(DataError, match=message):
        load_table(folders_config(root, query_root))


def test_csv_queries_or_several_datasets_are_refused_with_a_query_folder(tmp_path):
    photo(tmp_path / "lib" / "a.png", 1)
    photo(tmp_path / "lib" / "b.png", 2)
    photo(tmp_path / "new" / "x.png", 9)
    source = tmp_path / "lib" / "metadata.csv"
    pd.DataFrame({"path": ["a.png", "b.png"], "identity": ["A", ""], "split": ["database", "query"]}).to_csv(source, index=False)
    with pytest.raises(DataError, match=r"already lists 1 query images \(1\); with data.query_root"):
        load_table(DataConfig(format="csv", root=str(source), query_root=str(tmp_path / "new")))
    pd.DataFrame({"path": ["a.png", "b.png"], "identity": ["A", "B"], "dataset": ["dogs", "cats"]}).to_csv(source, index=False)
    with pytest.raises(DataError, match=r"2 datasets \(cats, dogs\).*data.datasets=\[...\]"):
        load_table(DataConfig(format="csv", root=str(source), query_root=str(tmp_path / "new")))
    df = load_table(DataConfig(format="csv", root=str(source), query_root=str(tmp_path / "new"), datasets=["cats"]))
    assert list(df["split"]) == ["database", "query"] and set(df["dataset"]) == {"cats"}


@pytest.mark.parametrize("cls, overrides, message", [
    (EvalConfig, ["data.format=animalclef2025", "data.query_root=new"],
     "'data.query_root' adds a folder of query photos to a labelled gallery of data.format=folders or csv; "
     "data.format=animalclef2025 brings its own queries"),
    (EvalConfig, ["data.query_root=new"], "data.format=synthetic brings its own queries"),
])
def test_query_root_with_a_format_that_has_queries_is_a_config_error(cls, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(cls, None, overrides)


def test_train_refuses_a_query_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["data.format=folders", f"data.root={tmp_path}", f"data.query_root={tmp_path / 'new'}",
                        f"output_dir={tmp_path / 'run'}"])
    assert stop.value.code == 2
    assert "'data.query_root' names unlabelled photos to identify with eval.py; train.py learns from labelled " \
           "images only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- predictions.csv and captions


def test_predictions_list_top_identities_and_leave_missing_ranks_empty(tmp_path):
    query = pd.DataFrame({"image_id": ["IMG_1.png", "trip/IMG_2.png"], "path": ["/x/IMG_1.png", "/x/trip/IMG_2.png"]})
    ev = SimpleNamespace(decided=np.array(["Bo", "new_individual"], dtype=object),
                         candidates=[[("Bo", 0.91234), ("Rex", np.float32(0.2))], [("Rex", 0.3), ("Bo", 0.1)]])
    cfg = EvalConfig(data=DataConfig(format="folders", root=str(tmp_path), query_root=str(tmp_path / "new")))
    frame = predictions_frame(cfg.data, query, ev)
    frame.to_csv(tmp_path / "p.csv", index=False)
    back = pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False)
    assert list(back.columns) == columns() == [
        "file", "prediction", "known", "top1_identity", "top1_score", "top2_identity", "top2_score", "top3_identity",
        "top3_score", "top4_identity", "top4_score", "top5_identity", "top5_score"]
    assert back.iloc[0, :7].tolist() == ["IMG_1.png", "Bo", "true", "Bo", "0.9123", "Rex", "0.2000"]
    assert back.iloc[1, :5].tolist() == ["trip/IMG_2.png", "new_individual", "false", "Rex", "0.3000"]
    assert (back[[f"top{i}_{p}" for i in (3, 4, 5) for p in ("identity", "score")]] == "").all().all()


def test_predictions_name_files_relative_to_the_dataset_root(tmp_path):
    query = pd.DataFrame({"image_id": ["7", "8"], "path": [str(tmp_path / "images" / "q.jpg"), "/elsewhere/r.jpg"]})
    cfg = EvalConfig(data=DataConfig(format="animalclef2025", root=str(tmp_path)))
    assert query_files(cfg.data, query) == ["images/q.jpg", "/elsewhere/r.jpg"]
    assert query_files(EvalConfig().data, query) == list(query["path"])  # generated synthetic set: absolute


def test_captions_say_unknown_for_a_query_without_identity():
    assert truth_caption(None, {"Bo"}) == "unknown"
    assert truth_caption(float("nan"), {"Bo"}) == "unknown"
    assert truth_caption("Bo", {"Bo"}) == "Bo"
    assert truth_caption("Zed", {"Bo"}) == "Zed (new)"


def test_re_ranking_captions_say_unknown_for_a_query_without_identity(monkeypatch):
    from engine.identify import report_rerank

    monkeypatch.setattr(report_rerank, "_panel", lambda *args: "")
    gallery = pd.DataFrame({"identity": ["Bo", "Rex"]})
    query = pd.DataFrame({"image_id": ["q1", "q2"], "identity": [None, "Zed"]})
    ev = SimpleNamespace(shortlist=np.array([[0, 1], [1, 0]]), candidates=[[("Bo", 0.9)], [("Rex", 0.5)]])
    matcher = SimpleNamespace(name="sift", match_weights=lambda labels, q_row, short: [np.ones(0) for _ in short])
    section = report_rerank.rerank_section(matcher, ev, gallery, query)
    assert "q1 (true: unknown)" in section and "q2 (true: Zed (new))" in section and "None" not in section


# ----------------------------------------------------------------------------- eval.py end to end


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory, tiny_synthetic):
    """The tiny synthetic set as a user has it: database photos in GALLERY/<identity>/, the query
    photos (some of individuals the gallery lacks) loose in one folder, under new names."""
    base = tmp_path_factory.mktemp("identify")
    table = pd.read_csv(tiny_synthetic / "metadata.csv", dtype=str, keep_default_na=False)
    gallery, new = base / "Gallery", base / "New photos"
    database = table[(table["split"] == "database") & (table["dataset"] == "SynthLynx")]
    query = table[(table["split"] == "query") & (table["dataset"] == "SynthLynx")]
    for row in database.itertuples():
        target = gallery / row.identity / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_synthetic / row.path, target)
    new.mkdir()
    for i, row in enumerate(query.itertuples()):
        shutil.copy(tiny_synthetic / row.path, new / f"IMG_{i:03d}{Path(row.path).suffix}")
    model = build_model({"name": "embedder", "args": {"backbone": TINY_BACKBONE, "embed_dim": 16}}, num_classes=0)
    model.input_size = SIZE
    return {"base": base, "gallery": gallery, "new": new, "queries": len(query),
            "identities": database["identity"].nunique(), "export": save_export(model, base / "export")}


def test_eval_identifies_a_folder_of_new_photos_against_identity_folders(photo_folders, capsys):
    base, out = photo_folders["base"], photo_folders["base"] / "out"
    result = eval_cli.main([
        "data.format=folders", f"data.root={photo_folders['gallery']}", f"data.query_root={photo_folders['new']}",
        f"models=[{photo_folders['export']}]", f"output_dir={out}", f"data.cache_dir={base / 'images'}",
        "data.num_workers=0", f"embed_cache={base / 'embeddings'}", "tta=[identity]", "rerank.matcher=none",
        "threshold.min_queries=20"])
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "manifest.json", "predictions.csv",
                                                     "report.html", "review.npz", "submission.csv"]
    assert result.metrics is None and result.table == (out / "predictions.csv").absolute()
    printed = capsys.readouterr().out
    assert f"predictions: {out / 'predictions.csv'}" in printed and "BAKS" not in printed

    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    files = sorted(p.name for p in photo_folders["new"].iterdir())
    assert list(predictions["file"]) == files and len(files) == photo_folders["queries"]
    gallery_ids = {p.name for p in photo_folders["gallery"].iterdir()}
    assert set(predictions["prediction"]) <= gallery_ids | {"new_individual"}
    assert (predictions["known"] == np.where(predictions["prediction"] == "new_individual", "false", "true")).all()
    top = min(5, photo_folders["identities"])
    assert predictions[[f"top{i}_identity" for i in range(1, top + 1)]].isin(gallery_ids).all().all()
    scores = predictions[[f"top{i}_score" for i in range(1, top + 1)]].astype(float).to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all() and (np.diff(scores, axis=1) <= 1e-9).all(), "calibrated, best first"
    known = predictions["known"] == "true"
    assert (predictions.loc[known, "prediction"] == predictions.loc[known, "top1_identity"]).all()

    submission = pd.read_csv(out / "submission.csv", dtype=str)
    assert list(submission["image_id"]) == files
    assert list(submission["identity"]) == list(predictions["prediction"])
    report = (out / "report.html").read_text()
    assert "true: unknown" in report and "true: None" not in report and "true: ?" not in report
    assert "no metrics" in report and str(photo_folders["new"]) in report
