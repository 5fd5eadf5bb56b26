"""summarize_table's counts by hand, and scripts/summarize_data.py as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from conftest import REPO, script_env
from PIL import Image

from data.summary import format_summary, summarize_table
from data.table import make_table

SCRIPT = REPO / "scripts" / "summarize_data.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=script_env())


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (1, 2, 3)).save(path, format="PNG")


def test_summary_counts():
    def row(image_id, identity, split, dataset="A"):
        return {"image_id": image_id, "identity": identity, "path": f"/{image_id}", "split": split, "dataset": dataset}

    df = make_table([
        row("1", "x", "database"), row("2", "x", "database"), row("3", "x", "query"),
        row("4", "y", "database"), row("5", "z", "query"), row("6", "z", "query"),
        row("7", None, "query"), row("8", "w", "database", dataset="B"),
    ])
    summary = summarize_table(df)
    assert summary["images"] == 8 and summary["identities"] == 4
    assert summary["images_per_identity"] == {"min": 1, "median": 1.5, "max": 3}
    assert summary["splits"] == {"database": 4, "query": 4}
    assert summary["datasets"]["A"] == {"images": 7, "identities": 3, "database": 3, "query": 4}
    assert summary["query_images_unknown_identity"] == 1
    assert summary["query_identities_not_in_database"] == 1 and summary["query_images_of_new_identities"] == 2
    assert "median 1.5" in format_summary(summary)


def test_cli_prints_json_for_a_good_dataset(tmp_path):
    for identity, count in (("rex", 3), ("bo", 1)):
        for k in range(count):
            write_image(tmp_path / "dogs" / identity / f"{k}.png")
    result = run_script("--format", "folders", "--root", str(tmp_path / "dogs"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 4 and summary["identities"] == 2
    assert summary["images_per_identity"] == {"min": 1, "median": 2.0, "max": 3}
    assert summary["datasets"] == {"dogs": {"images": 4, "identities": 2, "database": 4, "query": 0}}


def test_cli_csv_columns_option(tmp_path):
    write_image(tmp_path / "a.png")
    pd.DataFrame([{"file": "a.png", "who": "A"}]).to_csv(tmp_path / "list.csv", index=False)
    result = run_script("--format", "csv", "--root", str(tmp_path / "list.csv"), "--columns", "path=file,identity=who")
    assert result.returncode == 0, result.stderr
    assert "identities                  1" in result.stdout


def test_cli_bad_data_exits_2_with_the_message_and_no_traceback(tmp_path):
    write_image(tmp_path / "ds" / "1.png")
    pd.DataFrame([{"image_id": 1, "identity": "a", "path": "1.png", "split": "database", "dataset": "d"},
                  {"image_id": 2, "identity": "a", "path": "2.png", "split": "database", "dataset": "d"}]
                 ).to_csv(tmp_path / "ds" / "metadata.csv", index=False)
    result = run_script("--format", "animalclef2025", "--root", str(tmp_path / "ds"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: 1 image files are missing under {tmp_path / 'ds'}: 2.png"
    assert result.stdout == ""
