"""The built-in synthetic re-identification dataset, written in AnimalCLEF 2025 format.

Three species of animal-like sprites whose identity lives in their coat patterns
(`data.synthetic_species`), photographed in cluttered scenes (`data.synthetic_photo`). This module
plans who is photographed when and on which flank, which photos are database and which query, and
which individuals are new; it writes the images and `metadata.csv` and keeps generated datasets
in the cache. In scene mode (`scenes=True`, `data.synthetic_scene`) the animals are small in wide
frames over shared backgrounds, sometimes with a second animal, and every image also gets a YOLO
label file (`labels/...txt`, every animal's box) for training detectors; the `bbox` column keeps
the identified animal's box. Scene mode with `sites` photographs each individual at one or two
camera sites of its species (`data.synthetic_sites`): the development set of background-driven
keypoint matches (photos of different individuals at one site share ground, rocks and overlay).

Every random draw comes from a generator seeded by (seed, purpose, individual, photo), so the
files are byte-identical for the same arguments whatever the number of worker processes.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from core.errors import ConfigError
from core.files import atomic_folder
from core.paths import cache_base
from data.synthetic_draw import SEED_PHOTO, SEED_PLAN
from data.synthetic_photo import render_photo
from data.synthetic_scene import label_path, render_scene, scene_cast, yolo_labels
from data.synthetic_species import GROUPS, SIDES, sprite

try:
    import fcntl
except ImportError:  # no advisory locks (Windows): the atomic rename alone keeps results whole
    fcntl = None

JPEG_QUALITY = 90
GENERATOR_VERSION = 2
MARKER = "SYNTHETIC_COMPLETE.json"  # written last: its presence means the dataset is whole
NEW_FRACTION = 0.2  # of each group's individuals, seen only in the query split
QUERY_FRACTION = 0.2  # of a known individual's photos (its latest ones) put in the query split
CSV_COLUMNS = ["image_id", "identity", "path", "date", "orientation", "species", "split", "dataset", "bbox"]


# ----------------------------------------------------------------------------- the dataset plan


@dataclass(frozen=True)
class _Photo:
    image_id: int
    k: int  # index of the photo in the individual's life, which seeds its view
    orientation: str
    split: str
    date: str
    path: str


@dataclass(frozen=True)
class _Individual:
    index: int
    group: int
    identity: str
    photos: tuple[_Photo, ...]


def _plan(seed: int, individuals: int, images_per_individual: int) -> list[_Individual]:
    """Who is who: groups, new individuals, dates, flanks, splits, shuffled image ids and paths."""
    rng = np.random.default_rng([seed, SEED_PLAN])
    members = [list(range(g, individuals, len(GROUPS))) for g in range(len(GROUPS))]
    new: set[int] = set()
    for group_members in members:
        if len(group_members) >= 2:  # keep at least one known individual per group
            count = min(len(group_members) - 1, max(1, round(NEW_FRACTION * len(group_members))))
            new.update(int(i) for i in rng.choice(group_members, count, replace=False))
    m = images_per_individual
    image_ids = rng.permutation(individuals * m)  # ids carry no hint of identity
    n_query = 0 if m == 1 else min(m - 1, max(1, round(QUERY_FRACTION * m)))
    plan = []
    for index in range(individuals):
        group = index % len(GROUPS)
        first = date(2015, 1, 1) + timedelta(days=int(rng.integers(0, 6 * 365)))
        days = np.cumsum(rng.integers(1, 90, m))
        sides = rng.integers(0, 2, m)
        photos = []
        for k in range(m):
            split = "query" if index in new or k >= m - n_query else "database"
            image_id = int(image_ids[index * m + k])
            photos.append(_Photo(image_id, k, SIDES[sides[k]], split,
                                 (first + timedelta(days=int(days[k]))).isoformat(),
                                 f"images/{GROUPS[group].dataset}/{split}/{image_id:06d}.jpg"))
        identity = f"{GROUPS[group].dataset}_{GROUPS[group].species.split()[-1]}_{index // len(GROUPS):04d}"
        plan.append(_Individual(index, group, identity, tuple(photos)))
    return plan


# ----------------------------------------------------------------------------- writing it


@dataclass(frozen=True)
class _Task:
    seed: int
    individual: _Individual
    root: str
    scenes: bool
    individuals: int  # in the dataset: scene mode's second animals are numbered from here on
    sites: int = 0  # scene mode: camera sites per species (0: the shared backgrounds)


def _render_individual(task: _Task) -> list[list[int]]:
    """Write every photo of one individual (and its label file in scene mode); return the
    individual's box in each photo, in photo order."""
    seed, individual = task.seed, task.individual
    group = GROUPS[individual.group]
    sprites: dict[str, np.ndarray] = {}
    boxes = []
    for photo in individual.photos:
        if photo.orientation not in sprites:
            sprites[photo.orientation] = sprite(group, seed, individual.index, photo.orientation)
        rng = np.random.default_rng([seed, SEED_PHOTO, individual.index, photo.k])
        if task.scenes:
            cast = scene_cast(seed, individual.index, photo.k, task.individuals, task.sites)
            rgb, scene_boxes = render_scene(sprites[photo.orientation], cast, rng, group, seed)
            Path(task.root, label_path(photo.path)).write_text(yolo_labels(scene_boxes))
            box = scene_boxes[0]
        else:
            rgb, box = render_photo(sprites[photo.orientation], rng, group.max_rotation)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {photo.path}")
        Path(task.root, photo.path).write_bytes(encoded.tobytes())
        boxes.append(box)
    return boxes


def _single_threaded_cv2() -> None:
    cv2.setNumThreads(1)  # parallelism comes from `workers`; OpenCV's own threads would oversubscribe


@contextlib.contextmanager
def _cv2_threads(count: int) -> Iterator[None]:
    previous = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def layout_marker(module: str, seed: int, individuals: int, images_per_individual: int) -> dict:
    """The completion marker of a competition layout of the synthetic set (data/synthetic_<layout>.py):
    the same arguments write the same files, so a folder with this marker need not be written again."""
    return {"generator": f"reidzoo.{module}", "version": 1, "seed": seed, "individuals": individuals,
            "images_per_individual": images_per_individual}


def has_marker(root: Path, marker_file: str, expected: dict) -> bool:
    try:
        return json.loads((Path(root) / marker_file).read_text()) == expected
    except (OSError, ValueError):
        return False


def write_layout(out: Path, layout: Callable[[Path, Path], None], marker_file: str, marker: dict, *, seed: int,
                 individuals: int, images_per_individual: int, progress: bool, scenes: bool = False) -> Path:
    """Render the synthetic set into a scratch folder beside `out`, then write it into `out` in a
    competition's layout with `layout(source, staging)`, atomically, the marker last."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.render-", dir=out.parent))
    try:
        source = generate(scratch / "animalclef", seed=seed, individuals=individuals,
                          images_per_individual=images_per_individual, progress=progress, scenes=scenes)
        with atomic_folder(out) as staging:
            staging.chmod(0o755)
            layout(source, staging)
            (staging / marker_file).write_text(json.dumps(marker, indent=1) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _marker(seed: int, individuals: int, images_per_individual: int, scenes: bool, sites: int = 0) -> dict:
    marker = {"generator": "reidzoo.synthetic", "version": GENERATOR_VERSION, "seed": seed,
              "individuals": individuals, "images_per_individual": images_per_individual}
    if scenes:  # without the keys: caches from before scenes (and sites) stay valid
        marker["scenes"] = True
    if sites:
        marker["sites"] = sites
    return marker


def _is_complete(root: Path, expected: dict) -> bool:
    try:
        return (root / "metadata.csv").is_file() and json.loads((root / MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


def _check_arguments(seed: int, sites: int = 0, scenes: bool = False, **counts: int) -> None:
    if sites and not scenes:
        raise ConfigError("synthetic dataset: sites are camera sites of scene mode; set scenes too")
    for name, value in {"seed": seed, "sites": sites, **counts}.items():
        lowest = 0 if name in ("seed", "sites") else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
            raise ConfigError(f"synthetic dataset: {name} must be an integer >= {lowest}, got {value!r}")


def _render_all(seed: int, plan: list[_Individual], root: Path, workers: int, progress: bool,
                scenes: bool, sites: int = 0) -> list[list[list[int]]]:
    """Write every photo of the plan under `root`; return each individual's boxes, in plan order."""
    paths = [photo.path for individual in plan for photo in individual.photos]
    if scenes:
        paths += [label_path(path) for path in paths]
    for folder in sorted({Path(path).parent for path in paths}):
        (root / folder).mkdir(parents=True)
    tasks = [_Task(seed, individual, str(root), scenes, len(plan), sites) for individual in plan]
    bar = tqdm(total=sum(len(individual.photos) for individual in plan), desc="synthetic images", unit="img",
               disable=not progress)
    results = []
    with _cv2_threads(1), bar, contextlib.ExitStack() as stack:
        rendered: Iterator[list[list[int]]] = map(_render_individual, tasks)
        if workers > 1:
            context = multiprocessing.get_context("spawn")  # fork is unsafe once torch holds threads
            pool = stack.enter_context(context.Pool(workers, initializer=_single_threaded_cv2))
            rendered = pool.imap(_render_individual, tasks, chunksize=4)  # in order: same files
        for boxes in rendered:
            results.append(boxes)
            bar.update(len(boxes))
    return results


def _metadata(plan: list[_Individual], boxes: list[list[list[int]]]) -> pd.DataFrame:
    """One AnimalCLEF 2025 row per photo, in image id order."""
    rows = []
    for individual, individual_boxes in zip(plan, boxes, strict=True):
        group = GROUPS[individual.group]
        for photo, box in zip(individual.photos, individual_boxes, strict=True):
            rows.append({"image_id": photo.image_id, "identity": individual.identity, "path": photo.path,
                         "date": photo.date, "orientation": photo.orientation, "species": group.species,
                         "split": photo.split, "dataset": group.dataset, "bbox": json.dumps(box)})
    return pd.DataFrame(rows, columns=CSV_COLUMNS).sort_values("image_id")


def generate(out: str | Path, *, seed: int = 0, individuals: int = 120, images_per_individual: int = 12,
             workers: int = 1, progress: bool = True, scenes: bool = False, sites: int = 0) -> Path:
    """Write the synthetic dataset to `out` (metadata.csv + images/, + labels/ with `scenes`) and
    return its path; `sites` (scene mode): camera sites per species, 0 for the shared backgrounds.

    The dataset is built in a temporary folder next to `out` and renamed into place, so an
    interrupted run never leaves half a dataset. An existing synthetic dataset at `out` is
    replaced; any other non-empty folder is refused. When another process finishes the same
    dataset at `out` first, its copy is kept and ours dropped.
    """
    _check_arguments(seed, sites, scenes, individuals=individuals, images_per_individual=images_per_individual,
                     workers=workers)
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not a synthetic dataset written by this generator; "
                          "choose a new or empty folder")
    plan = _plan(seed, individuals, images_per_individual)
    expected = _marker(seed, individuals, images_per_individual, scenes, sites)
    with atomic_folder(out, keep_if_present=lambda final: _is_complete(final, expected)) as staging:
        staging.chmod(0o755)  # the staging folder's private 0700 would follow the rename and lock other users out
        boxes = _render_all(seed, plan, staging, workers, progress, scenes, sites)
        _metadata(plan, boxes).to_csv(staging / "metadata.csv", index=False, lineterminator="\n")
        (staging / MARKER).write_text(json.dumps(expected, indent=1) + "\n")
    return out


# ----------------------------------------------------------------------------- the cache


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic(root: str = "", *, seed: int = 0, individuals: int = 120,
                     images_per_individual: int = 12, scenes: bool = False, sites: int = 0) -> Path:
    """Path of a complete synthetic dataset for these arguments, generated on first use.

    `root` "" means the cache (`cache_base()/synthetic/s{seed}-n{individuals}-m{images}`, with a
    `-scenes` suffix in scene mode, `-sitesN` with sites).
    Several processes may call this at once (e.g. the ranks of a distributed launch): one
    generates under a file lock while the others wait and then reuse its result.
    """
    _check_arguments(seed, sites, scenes, individuals=individuals, images_per_individual=images_per_individual)
    in_cache = not root
    name = f"s{seed}-n{individuals}-m{images_per_individual}" + ("-scenes" if scenes else "") + (f"-sites{sites}" if sites else "")
    target = (cache_base() / "synthetic" / name if in_cache else Path(root).expanduser()).absolute()
    expected = _marker(seed, individuals, images_per_individual, scenes, sites)
    if _is_complete(target, expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if _is_complete(target, expected):
            return target
        if in_cache and target.exists():  # a leftover of an older layout or a manual deletion
            shutil.rmtree(target)
        print(f"generating the synthetic dataset ({individuals} individuals x {images_per_individual} images"
              f"{', scenes' if scenes else ''}{f', {sites} sites' if sites else ''}) into {target}", file=sys.stderr, flush=True)
        generate(target, seed=seed, individuals=individuals, images_per_individual=images_per_individual,
                 scenes=scenes, sites=sites)
    return target
