"""ONNX export (zoo/onnx.py, `python -m zoo export-onnx`): onnxruntime gives torch's embeddings at any batch size."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import IMAGE_MODELS

from core.errors import ConfigError, DataError, UserError
from zoo import build_model, load_export, publish, save_export
from zoo.__main__ import main
from zoo.fusion import Fusion
from zoo.onnx import TOLERANCE, export_onnx, read_metadata, summary_line

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = 48  # a small input size keeps every export at about a second on 2 CPU cores
OWN_ARGS = {"embedder": {"embed_dim": 32}, "siamese": {"embed_dim": 32, "pair_hidden": 8}}


def tiny_export(folder, name: str = "embedder", **args):
    """An export of a tiny model whose BatchNorm statistics moved (as after training), at SIZE px."""
    torch.manual_seed(0)
    args = {"backbone": "test_resnet", "pretrained": False, **OWN_ARGS.get(name, {}), **args}
    model = build_model({"name": name, "args": args}, num_classes=3)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, SIZE, SIZE) * 3 + 1)
    model.eval().input_size = SIZE
    return save_export(model, folder, label_map={"a": 0, "b": 1, "c": 2})


def onnx_vs_torch(path, export, batch: int) -> float:
    """Max abs difference of onnxruntime's embeddings from the export's torch ones on a random batch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = load_export(export)[0].embed(images).numpy()
    got = session.run(["embeddings"], {"images": images.numpy()})[0]
    assert got.shape == expected.shape and got.dtype == np.float32
    return float(np.abs(got - expected).max())


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_exports_run_in_onnxruntime_at_any_batch_size(tmp_path, name):
    export = tiny_export(tmp_path / "export", name, pool="gem")
    path = export_onnx(export)
    assert path == export / "model.onnx"
    diffs = [onnx_vs_torch(path, export, batch) for batch in (1, 3)]
    print(f"{name}: max abs difference {max(diffs):.3g} (batches 1 and 3)")
    assert max(diffs) <= TOLERANCE

    proto = onnx.load(str(path))
    (images,), (embeddings,) = proto.graph.input, proto.graph.output
    assert (images.name, embeddings.name) == ("images", "embeddings")
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]
    config = json.loads((export / "config.json").read_text())
    meta = read_metadata(path)
    assert int(meta["input_size"]) == SIZE and int(meta["embed_dim"]) == config["embed_dim"]
    assert json.loads(meta["mean"]) == config["mean"] and json.loads(meta["std"]) == config["std"]
    assert meta["architecture"] == name and float(meta["check_max_abs_diff"]) <= TOLERANCE


def test_the_cli_exports_a_zoo_name_next_to_the_user(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REIDZOO_ZOO", str(tmp_path / "zoo"))
    export = tiny_export(tmp_path / "export", "siamese")
    publish(export, "tiny-siamese")
    published = sorted(p.name for p in (tmp_path / "zoo").rglob("*"))
    (card,) = (tmp_path / "zoo").glob("tiny-siamese@*/README.md")
    assert "python -m zoo export-onnx tiny-siamese --out model.onnx" in card.read_text()
    monkeypatch.chdir(tmp_path)

    main(["export-onnx", "tiny-siamese"])
    assert "max abs difference" in capsys.readouterr().out
    assert onnx_vs_torch(tmp_path / "tiny-siamese.onnx", export, 2) <= TOLERANCE
    main(["export-onnx", "tiny-siamese", "--out", str(tmp_path / "out" / "s.onnx"), "--opset", "13"])
    assert "opset 13" in capsys.readouterr().out
    assert read_metadata(tmp_path / "out" / "s.onnx")["opset"] == "13"
    assert sorted(p.name for p in (tmp_path / "zoo").rglob("*")) == published  # nothing written into the zoo


def test_a_fusion_model_is_refused(tmp_path, monkeypatch, capsys):
    member = {"spec": "member-a", "checksum": "0" * 64, "dim": 16, "input_size": 32}
    export = save_export(Fusion(0, members=[member], pca_dims=[8], hidden=16, embed_dim=8), tmp_path / "fusion")
    monkeypatch.setenv("REIDZOO_ZOO", str(tmp_path / "zoo"))
    publish(export, "tiny-fusion")
    (card,) = (tmp_path / "zoo").glob("tiny-fusion@*/README.md")
    assert "export-onnx" not in card.read_text()  # its card offers no ONNX export
    with pytest.raises(ConfigError, match="not images"):
        export_onnx("tiny-fusion", tmp_path / "fusion.onnx")
    with pytest.raises(ConfigError, match=r"reads its members' embeddings .*not images.*member-a"):
        export_onnx(export)
    with pytest.raises(SystemExit) as stop:
        main(["export-onnx", str(export)])
    assert stop.value.code == 2 and "not images" in capsys.readouterr().err
    assert not (export / "model.onnx").exists()


def test_a_missing_path_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DataError, match="no export folder there"):
        export_onnx(str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as stop:
        main(["export-onnx", "./nowhere/export"])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: model './nowhere/export'")


def test_bad_arguments_and_missing_packages_are_refused(tmp_path, monkeypatch):
    export = tiny_export(tmp_path / "export")
    with pytest.raises(ConfigError, match="opset must be an integer from 9 to 20"):
        export_onnx(export, opset=99)
    with pytest.raises(ConfigError, match="not an .onnx file"):
        export_onnx(export, export / "model.safetensors")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(UserError, match=r"needs the onnxruntime package .*--no-check.*\.\[onnx\]"):
        export_onnx(export)
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
    assert "not checked" in summary_line(export_onnx(export, check=False))


def test_an_export_that_differs_from_torch_leaves_no_file(tmp_path, monkeypatch):
    export = tiny_export(tmp_path / "export")
    monkeypatch.setattr("zoo.onnx._compare", lambda *args, **kwargs: 0.5)
    with pytest.raises(UserError, match="max abs difference 0.5 > 0.0001.*nothing was written"):
        export_onnx(export)
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]  # no temporary either


def test_a_new_export_replaces_the_folder_with_its_stale_onnx(tmp_path):
    export = tiny_export(tmp_path / "export")
    (export / "model.onnx").write_bytes(b"an earlier model's graph")
    tiny_export(tmp_path / "export")  # train.py writing the export again
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors"]
