"""`reidzoo-review export RUN_DIR --out GALLERY`: the individuals as people confirmed them, as a folders
gallery (GALLERY/<dataset>/<identity>/<photo>) that train.py and eval.py read with
data.format=folders data.root=GALLERY.

An individual is a set of the closure: the labelled images of an identity with every image a
person tied to it by *same* answers, or a set of images tied only to each other (a new individual,
named new_<dataset>_<n> in the order its images appear). Images no answer confirmed are left out:
the model's own guesses are not training labels. An identity name that two datasets share gets its
dataset in front, since a folders gallery knows identities by folder name alone.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np

from core.errors import DataError
from core.files import atomic_folder
from core.ownership import MARKER_FILES, REVIEW, check_output_folder, may_replace, run_marker
from engine.review.constraints import Closure
from engine.review.run import ReviewRun

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    """`text` as one folder or file name (no separators, never '.' or '..' or hidden)."""
    name = _UNSAFE.sub("_", text).strip("._") or "unnamed"
    return name[:120]


def individuals(run: ReviewRun, closure: Closure) -> Dict[str, Dict[str, List[int]]]:
    """{dataset: {identity: image rows}} of every confirmed individual (see the module doc)."""
    roots = closure.roots()
    codes = np.asarray(closure.sets.code, np.int64)[roots]
    identity = run.images["identity"].to_numpy(dtype=object)
    dataset = run.images["dataset"].to_numpy(dtype=object)
    tied = np.zeros(len(roots), bool)
    for pairs in closure.same.values():
        for other, _ in pairs:
            tied[other] = True
    named = {int(c): identity[r] for r, c in enumerate(run.anchors().tolist()) if c >= 0}
    found: Dict[str, Dict[str, List[int]]] = {}
    new_names: Dict[int, str] = {}
    numbered: Dict[str, int] = {}
    for row in range(len(roots)):
        labelled = identity[row] != "" and codes[row] >= 0
        if not labelled and not tied[row]:
            continue
        if codes[row] >= 0:
            name = named[int(codes[row])]
        else:
            root = int(roots[row])
            if root not in new_names:
                numbered[dataset[row]] = numbered.get(dataset[row], 0) + 1
                new_names[root] = f"new_{dataset[row]}_{numbered[dataset[row]]}"
            name = new_names[root]
        found.setdefault(str(dataset[row]), {}).setdefault(str(name), []).append(row)
    return found


def export_gallery(run: ReviewRun, closure: Closure, out) -> Dict[str, int]:
    """Copy every confirmed individual's photos into `out` (new, empty, or an earlier export)."""
    out = Path(out).expanduser().absolute()
    reads = {"the run folder": str(run.folder)}
    reads.update({f"the image folder {r}": r for r in run.data.settings.image_roots})
    check_output_folder(out, reads)
    if out.exists() and not may_replace(out, REVIEW):
        raise DataError(f"{out} exists and is not a folder reidzoo-review wrote: choose a new or empty folder")
    found = individuals(run, closure)
    if not found:
        raise DataError("no individual is confirmed yet: answer some pairs first")
    seen: Dict[str, int] = {}
    for per_identity in found.values():
        for name in per_identity:
            seen[safe_name(name)] = seen.get(safe_name(name), 0) + 1
    paths = run.images["path"].tolist()
    counts = {"individuals": 0, "photos": 0}
    with atomic_folder(out, may_replace=lambda f: may_replace(f, REVIEW)) as staging:
        (staging / MARKER_FILES[REVIEW]).write_text(json.dumps(run_marker(REVIEW), indent=2) + "\n")
        for dataset, per_identity in sorted(found.items()):
            for name, rows in sorted(per_identity.items()):
                folder_name = safe_name(name) if seen[safe_name(name)] == 1 else safe_name(f"{dataset}_{name}")
                folder = staging / safe_name(dataset) / folder_name
                folder.mkdir(parents=True, exist_ok=True)
                for row in rows:
                    source = Path(paths[row])
                    target = folder / safe_name(source.name)
                    if target.exists():
                        target = folder / safe_name(f"{row}_{source.name}")
                    shutil.copyfile(source, target)
                    counts["photos"] += 1
                counts["individuals"] += 1
    return counts
