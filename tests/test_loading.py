"""Model specs for evaluation: path-or-name, load with checksum, and the probe forward pass."""
from __future__ import annotations

import pytest
import torch

from core.errors import DataError
from zoo import TrunkConfig, load_for_eval, looks_like_path, model_checksum, probe, save_export
from zoo.classifier import Classifier
from zoo.siamese import Siamese


@pytest.mark.parametrize("spec, is_path", [
    ("runs/x/export", True), ("./export", True), ("~/export", True), (".export", True), ("C\\exports\\a", True),
    ("resnet18", False), ("megadescriptor-l-384", False), ("hf-hub:BVRA/MegaDescriptor-L-384", False),
    ("convnext_small.fb_in22k", False),
])
def test_looks_like_path(spec, is_path):
    assert looks_like_path(spec) is is_path


def test_load_for_eval_gives_the_model_its_meta_and_checksum(tmp_path):
    torch.manual_seed(0)
    model = Classifier(3, TrunkConfig(backbone="test_resnet"))
    export = save_export(model, tmp_path / "export", label_map={"a": 0, "b": 1, "c": 2})
    loaded, meta, checksum = load_for_eval(str(export))
    assert not loaded.training and meta["label_map"] == {"a": 0, "b": 1, "c": 2}
    assert checksum == model_checksum(export) == model_checksum(model)
    with pytest.raises(DataError, match="no export folder there"):
        load_for_eval(str(tmp_path / "missing" / "export"))


def test_probe_reports_what_the_model_returns():
    torch.manual_seed(0)
    classifier = Classifier(3, TrunkConfig(backbone="test_resnet")).eval()
    assert probe(classifier, "c", 32, torch.device("cpu")) == {"embed_dim": 96, "classes": 3, "pair_head": False}
    siamese = Siamese(0, TrunkConfig(backbone="test_resnet"), embed_dim=8).eval()
    assert probe(siamese, "s", 32, torch.device("cpu")) == {"embed_dim": 8, "classes": None, "pair_head": True}


def test_probe_failures_are_data_errors():
    vit = Classifier(2, TrunkConfig(backbone="test_vit")).eval()  # 16-px patches
    with pytest.raises(DataError, match="model v does not accept 40x40 images: .*divisible by patch size"):
        probe(vit, "v", 40, torch.device("cpu"))
    with pytest.raises(DataError, match="model x is not a reidzoo model: its forward returns no 'embedding'"):
        probe(torch.nn.Flatten(), "x", 8, torch.device("cpu"))
