"""A user's own components (docs/examples/my_components.py) register from their own module, named
by `plugins: [...]` in a recipe or by $REIDZOO_PLUGINS, and train and evaluate like built-in ones.
Each run is a separate process, so the example never joins the registries of the other tests."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY_BACKBONE, tiny_train_overrides

EXAMPLES = REPO / "docs" / "examples"
MODEL = ["model.name=mlp_embedder", f"model.args={{backbone: {TINY_BACKBONE}, embed_dim: 32, hidden: 64}}",
         "losses=[{name: arcface}, {name: centre, weight: 0.01}]"]


def run(args, env_plugins: str = "", cwd=REPO):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(EXAMPLES), str(REPO)]), "REIDZOO_PLUGINS": env_plugins}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


ENV_PLUGIN = """
from torch import nn
from losses.registry import LOSSES


class Zero(nn.Module):
    def forward(self, outputs, labels, model=None):
        return 0.0 * outputs["embedding"].sum()


@LOSSES.register("zero")
def zero(embed_dim, num_classes, distributed=False):
    return Zero()
"""

CHECK = """
import os
import engine.components
from core.config import load_config
from core.errors import ConfigError
from core.schema import TrainConfig
from losses import build_criterion
from zoo import build_model

def build(overrides):
    cfg = load_config(TrainConfig, None, overrides)
    model = build_model(cfg.model, num_classes=5)
    return model.architecture, build_criterion(cfg.losses, embed_dim=32, num_classes=5).names

for overrides in (MODEL, ["plugins=[my_componnets]"]):
    try:
        build(overrides)
    except ConfigError as err:
        print("refused:", err)
print("config:", *build(["plugins=[my_components]", *MODEL]))
os.environ["REIDZOO_PLUGINS"] = "my_env_plugin"
print("environment:", *build(["losses=[{name: zero}]"]))
"""


def test_plugins_in_the_config_or_the_environment_register_a_users_components(tmp_path):
    (tmp_path / "my_env_plugin.py").write_text(ENV_PLUGIN)
    result = run(["-c", f"MODEL = {MODEL!r}\n" + CHECK], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: unknown model 'mlp_embedder'") and "plugins: [...]" in lines[0]
    assert lines[1].startswith("refused: plugin module 'my_componnets' cannot be imported")
    assert lines[2] == "config: mlp_embedder ['arcface', 'centre']"
    assert lines[3] == "environment: embedder ['zero']"


@pytest.mark.slow
def test_a_plugin_model_trains_exports_and_evaluates(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    trained = run([REPO / "train.py", *tiny_train_overrides(tiny_synthetic, out, tmp_path / "cache"), *MODEL,
                   "plugins=[my_components]", "train.max_steps=4", "val.enabled=false"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run([REPO / "eval.py", f"models=[{out / 'export'}]", "data.format=synthetic", f"data.root={tiny_synthetic}",
                     "data.synthetic.seed=1", "data.synthetic.individuals=16", "data.synthetic.images_per_individual=6",
                     f"data.cache_dir={tmp_path / 'cache'}", "rerank.matcher=none", "report=false",
                     f"output_dir={tmp_path / 'eval'}"], env_plugins="my_components")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "eval" / "submission.csv").is_file()
