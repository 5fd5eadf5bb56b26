"""One model checksum: an export folder, the model loaded from it, the model moved or wrapped."""
from __future__ import annotations

import copy

import pytest
import safetensors.torch
import timm
import torch

from core.errors import DataError
from core.files import weights_checksum
from zoo import build_model, load_export, load_for_eval, model_checksum, save_export


class Wrapper(torch.nn.Module):  # stands for DDP / EMA wrappers, which keep the model in `.module`
    def __init__(self, module):
        super().__init__()
        self.module = module


def trained(name: str = "embedder", **args) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"name": name, "args": {"backbone": "test_resnet", **args}}, num_classes=3)
    model.train()
    with torch.no_grad():  # BatchNorm statistics away from their initial values
        model(torch.randn(4, 3, 32, 32) * 2 + 1)
    return model.eval()


def test_export_folder_loaded_model_and_moved_or_wrapped_model_agree(tmp_path):
    source = timm.create_model("test_resnet")
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    # Pretrained from a file: the export records the file, the reloaded model pretrained=false.
    model = trained(pretrained=str(tmp_path / "w.safetensors"))
    model.input_size, model.mean, model.std = 48, [0, 0, 0], [1, 1, 1]  # as the trainer sets them
    export = save_export(model, tmp_path / "export")
    expected = model_checksum(model)

    loaded, _ = load_export(export)
    assert len(expected) == 64
    assert model_checksum(export) == model_checksum(str(export)) == model_checksum(loaded) == expected
    assert load_for_eval(str(export))[2] == expected
    assert model_checksum(Wrapper(model)) == expected
    assert model_checksum(torch.compile(model)) == expected  # compiles nothing until called
    assert model_checksum(copy.deepcopy(model).to(memory_format=torch.channels_last)) == expected
    if torch.cuda.is_available():
        assert model_checksum(copy.deepcopy(model).cuda()) == expected


def test_checksum_follows_weights_architecture_and_input():
    model = trained("features", pool="avg")
    base = model_checksum(model)
    other_pool = trained("features", pool="max")
    assert weights_checksum(other_pool.state_dict()) == weights_checksum(model.state_dict())
    assert model_checksum(other_pool) != base, "same weights, other outputs"
    resized = copy.deepcopy(model)
    resized.input_size = 64
    assert model_checksum(resized) != base
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_checksum(model) != base


def test_a_module_that_is_not_a_zoo_model_is_identified_by_its_weights():
    step = torch.nn.ModuleDict({"model": trained(), "loss": torch.nn.Linear(4, 3)})  # like a training step
    assert model_checksum(step) == weights_checksum(step.state_dict())
    assert model_checksum(Wrapper(step)) == model_checksum(step)


def test_a_folder_that_is_no_export_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not a complete reidzoo export"):
        model_checksum(tmp_path)
