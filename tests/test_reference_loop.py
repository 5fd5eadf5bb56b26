"""scripts/bench/reference_loop.py, the plain baseline of docs/results.md, runs and exports
a model that eval.py can load."""
from __future__ import annotations

import reference_loop
import torch

from zoo import load_export


def test_reference_loop_trains_within_its_budget_and_exports(tiny_synthetic, tmp_path, capsys):
    status = reference_loop.main(["--format", "animalclef2025", "--root", str(tiny_synthetic),
                                  "--out", str(tmp_path), "--minutes", "0.05", "--image-size", "32", "--batch-size", "8",
                                  "--cache-dir", str(tmp_path / "images")])
    assert status == 0
    steps = int(capsys.readouterr().out.split(" steps")[0].split()[-1])
    assert steps > 0
    model, meta = load_export(tmp_path / "export")
    assert meta["architecture"] == "features" and meta["input_size"] == 32 and meta["metrics"]["step"] == steps
    with torch.no_grad():
        embedding = model.embed(torch.rand(2, 3, 32, 32))
    assert embedding.shape == (2, 512) and torch.isfinite(embedding).all()
