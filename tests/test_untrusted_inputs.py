"""Inputs a person did not mean the way a parser reads them: overrides kept as typed, non-finite
numbers, photos reidzoo cannot decode, spreadsheet formulas in names, a rank whose cache read missed."""
from __future__ import annotations

import pytest

from core.config import load_config
from core.errors import ConfigError
from core.schema import EvalConfig, TrainConfig

# --------------------------------------------------------------------------- overrides kept as typed


@pytest.mark.parametrize("text", ["2024_05", "0755", "12:30", "2024-05-01", "1e3", "0x10", "null", "yes"])
def test_string_keys_keep_the_override_as_typed(text):
    cfg = load_config(TrainConfig, None, [f"output_dir={text}", f"data.root={text}", f"data.cache_dir={text}"])
    assert (cfg.output_dir, cfg.data.root, cfg.data.cache_dir) == (text, text, text)
    cfg = load_config(EvalConfig, None, ["data.format=folders", f"data.query_root={text}", f"output_dir={text}"])
    assert (cfg.data.query_root, cfg.output_dir) == (text, text)


def test_list_items_and_recipe_files_read_those_forms_as_text_too(tmp_path):
    cfg = load_config(EvalConfig, None, ["models=[2024_05, 0755, '12:30']", "data.datasets=[2024_05]"])
    assert cfg.models == ["2024_05", "0755", "12:30"] and cfg.data.datasets == ["2024_05"]
    (tmp_path / "recipe.yaml").write_text("output_dir: 2024_05\ndata: {root: 12:30, cache_dir: 2024-05-01}\n")
    cfg = load_config(TrainConfig, tmp_path / "recipe.yaml")
    assert (cfg.output_dir, cfg.data.root, cfg.data.cache_dir) == ("2024_05", "12:30", "2024-05-01")


def test_a_quoted_override_is_unquoted_and_typed_keys_still_parse():
    cfg = load_config(TrainConfig, None, ["output_dir='my runs'", 'data.root="0755"', "train.epochs=0755",
                                          "train.max_steps=1_000", "train.lr=3e-4", "train.ema=true",
                                          "augment.scale=[0.5, 1]", "model.args.embed_dim=128"])
    assert cfg.output_dir == "my runs" and cfg.data.root == "0755"
    assert cfg.train.epochs == 755 and cfg.train.max_steps == 1000, "an integer key reads digits as decimal"
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.ema is True and cfg.augment.scale == [0.5, 1.0]
    assert cfg.model.args["embed_dim"] == 128
    with pytest.raises(ConfigError, match="'train.lr' must be a number, got '12:30'"):
        load_config(TrainConfig, None, ["train.lr=12:30"])
