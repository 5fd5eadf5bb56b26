"""What a dataset contains, as numbers a person checks before training on it."""
from __future__ import annotations

from typing import Any, Dict

import pandas as pd

from data.table import labelled


def _per_identity(df: pd.DataFrame) -> Dict[str, float]:
    counts = labelled(df).groupby(["dataset", "identity"]).size()
    if counts.empty:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(counts.min()), "median": float(counts.median()), "max": int(counts.max())}


def _identities(df: pd.DataFrame) -> int:
    rows = labelled(df)
    return int(len(set(zip(rows["dataset"], rows["identity"], strict=True))))


def summarize_table(df: pd.DataFrame) -> Dict[str, Any]:
    """Counts of images and identities overall, per split and per dataset, and what the query holds:
    images with no identity, and identities the database never shows (the new individuals)."""
    database = labelled(df[df["split"] == "database"])
    query = df[df["split"] == "query"]
    known = set(zip(database["dataset"], database["identity"], strict=True))
    query_keys = list(zip(labelled(query)["dataset"], labelled(query)["identity"], strict=True))
    new = set(query_keys) - known
    return {
        "images": int(len(df)),
        "identities": _identities(df),
        "images_per_identity": _per_identity(df),
        "splits": {split: int(n) for split, n in df["split"].value_counts().sort_index().items()},
        "datasets": {
            str(name): {
                "images": int(len(part)),
                "identities": _identities(part),
                "database": int((part["split"] == "database").sum()),
                "query": int((part["split"] == "query").sum()),
            }
            for name, part in df.groupby("dataset", sort=True)
        },
        "query_images_unknown_identity": int(query["identity"].isna().sum()),
        "query_identities_not_in_database": len(new),
        "query_images_of_new_identities": sum(key in new for key in query_keys),
    }


def format_summary(summary: Dict[str, Any]) -> str:
    per = summary["images_per_identity"]
    lines = [
        f"images                      {summary['images']}",
        f"identities                  {summary['identities']}",
        f"images per identity         min {per['min']}, median {per['median']:g}, max {per['max']}",
        "per split                   " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()),
        f"query images, no identity   {summary['query_images_unknown_identity']}",
        f"query identities not in db  {summary['query_identities_not_in_database']} "
        f"({summary['query_images_of_new_identities']} images)",
        "per dataset:",
    ]
    width = max(len(name) for name in summary["datasets"]) if summary["datasets"] else 0
    lines += [
        f"  {name:<{width}}  images {d['images']}, identities {d['identities']}, "
        f"database {d['database']}, query {d['query']}"
        for name, d in summary["datasets"].items()
    ]
    return "\n".join(lines)
