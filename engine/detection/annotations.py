"""Detector annotations: boxes from any source we read, checked once, written as an ultralytics dataset.

Three sources give boxes (`ANNOTATION_SOURCES`, `load_annotations`):
  * `bbox`: the `bbox` column of our metadata table ([x, y, w, h], data/table.py), one box per row;
  * `csv`: a Humpback-style CSV, `fn,"x0 y0 x1 y1"` (or columns x0, y0, x1, y1), several rows per
    image allowed;
  * `yolo`: ultralytics label folders, one `cls cx cy w h` line (normalised) per box.
Each becomes a list of `AnnotatedImage` with boxes x0 y0 x1 y1 in pixels of the image as shown
(after EXIF rotation), through one check (`_checked`) that refuses unusable boxes with one
DataError naming the offending rows. `write_yolo_dataset` writes ultralytics' dataset layout with
an identity-aware train/val split.

Reading and writing ultralytics' layout needs no ultralytics, so this module does not import it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import yaml

from core.csv_cells import safe_cells
from core.errors import ConfigError, DataError, list_some
from core.files import atomic_folder
from core.suggest import did_you_mean
from data.format_base import list_images
from data.formats import read_corner_boxes
from data.table import clean_identity, is_missing, parse_numbers
from data.validate import displayed_size, require_columns, resolve_all

PathLike = Union[str, Path]

# Annotation tools round outwards, so a box may reach this far past the border; it is clipped to it.
BORDER_TOLERANCE_PX = 1.0
# Narrower boxes are slips of the mouse, and ultralytics drops them silently; we say so instead.
MIN_SIDE_PX = 1.0
_SHOWN_PROBLEMS = 5
# First line of data.yaml: tells a folder this module wrote (replaced on a rewrite) from any other.
_MARKER = "# Written by reidzoo's write_yolo_dataset; writing to this folder again replaces it."


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on a numpy array has no single truth value
class AnnotatedImage:
    """One image and its boxes: (n, 4) float32 x0 y0 x1 y1 in pixels of the image as displayed
    (after EXIF rotation), n = 0 for a background image; `width` and `height` are of that view."""

    image_id: str
    path: str
    identity: Optional[str]
    boxes: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        boxes = np.array(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes of {self.image_id} have shape {boxes.shape}, not (n, 4)")
        boxes.flags.writeable = False  # a frozen item shared between readers stays as it was read
        object.__setattr__(self, "boxes", boxes)


@dataclass
class _Read:
    """An image and the boxes read for it, before `_checked` looks at them."""

    image_id: str
    path: str
    identity: Optional[str] = None
    boxes: List[Tuple[str, Sequence[float]]] = field(default_factory=list)  # (where, x0 y0 x1 y1)
    normalised: bool = False  # corners in fractions of the image's width and height (YOLO labels)


def _show(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in box) + "]"


def _box_problem(box: np.ndarray, width: int, height: int) -> Optional[str]:
    """Why the x0 y0 x1 y1 box cannot teach a detector, or None."""
    x0, y0, x1, y1 = box
    if not np.isfinite(box).all():
        return "is not finite"
    if x1 < x0 or y1 < y0:
        return f"is inverted ({'x1 < x0' if x1 < x0 else 'y1 < y0'})"
    if x1 - x0 < MIN_SIDE_PX or y1 - y0 < MIN_SIDE_PX:
        return f"is degenerate ({x1 - x0:.4g} x {y1 - y0:.4g} px)"
    tolerance = BORDER_TOLERANCE_PX
    if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
        return f"lies outside the {width}x{height} image by more than {tolerance:g} px"
    if min(x1, width) - max(x0, 0) < MIN_SIDE_PX or min(y1, height) - max(y0, 0) < MIN_SIDE_PX:
        return f"overlaps the {width}x{height} image by less than {MIN_SIDE_PX:g} px"
    return None


def _checked(source: str, images: Sequence[_Read], unreadable: Sequence[str] = ()) -> List[AnnotatedImage]:
    """The one check every source goes through.

    Images must exist and be readable; boxes must be finite, not inverted, at least 1 px wide and
    high, and inside the image give or take 1 px (that margin is clipped off). `unreadable` are the
    rows the reader could not parse. All problems are raised together as one DataError that names
    `source`, the first few rows and the count.
    """
    problems = list(unreadable)
    checked = []
    for image in images:
        if not os.path.isfile(image.path):
            problems.append(f"image {image.image_id}: {image.path} does not exist")
            continue
        try:
            width, height = displayed_size(image.path)
        except Exception as err:  # PIL raises many types for corrupt files; all mean "unreadable"
            problems.append(f"image {image.image_id}: {image.path} cannot be read ({type(err).__name__}: {err})")
            continue
        frame = np.array([width, height, width, height], dtype=np.float64)
        kept = []
        for where, corners in image.boxes:
            box = np.asarray(corners, dtype=np.float64) * (frame if image.normalised else 1.0)
            problem = _box_problem(box, width, height)
            if problem:
                problems.append(f"{where}: box {_show(box)} {problem}")
            else:
                kept.append(np.clip(box, 0.0, frame))
        checked.append(AnnotatedImage(image.image_id, image.path, image.identity, kept, width, height))
    if problems:
        count = len(problems)
        raise DataError(
            f"{source}: {count} unusable box annotation{'s' if count != 1 else ''} (boxes are [x0, y0, x1, y1] "
            f"in pixels of the image as shown, at least {MIN_SIDE_PX:g} px wide and high, inside the image "
            f"give or take {BORDER_TOLERANCE_PX:g} px): {list_some(problems, _SHOWN_PROBLEMS)}"
        )
    return checked


def from_table(table: pd.DataFrame, source: str) -> List[AnnotatedImage]:
    """One box per row from the table's `bbox` column ([x, y, w, h], data/table.py); rows without a
    box are left out. `source` names the table (e.g. its metadata.csv) in messages."""
    require_columns(table, ["image_id", "identity", "path"], source)
    has_box = table["bbox"].map(lambda v: not is_missing(v)) if "bbox" in table.columns else None
    if has_box is None or not has_box.any():
        raise DataError(f"{source}: the data has no `bbox` values, so there are no boxes to train a detector on; "
                        "give boxes as a `bbox` column [x, y, w, h] (annotation source 'bbox'), a Humpback-style "
                        "CSV of 'x0 y0 x1 y1' boxes ('csv') or YOLO label folders ('yolo')")
    images, unreadable = [], []
    for index, row in table[has_box].iterrows():
        where = f"row {index} ({row['image_id']})"
        try:
            x, y, w, h = parse_numbers(row["bbox"])
        except ValueError as err:
            unreadable.append(f"{where}: bbox {row['bbox']!r} is not [x, y, w, h] ({err})")
            continue
        images.append(_Read(str(row["image_id"]), os.path.abspath(row["path"]), clean_identity(row["identity"]),
                            [(where, (x, y, x + w, y + h))]))
    return _checked(source, images, unreadable)


def from_box_csv(csv_path: PathLike, image_dir: PathLike) -> List[AnnotatedImage]:
    """Boxes from a Humpback-style CSV (`fn` or `Image`, then 'x0 y0 x1 y1' or columns x0, y0, x1,
    y1; see data.formats.read_corner_boxes); image names are relative to `image_dir`. Several rows
    for one image give it several boxes. Identities are not in this file, so they are None."""
    csv_path = Path(csv_path)
    rows = read_corner_boxes(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: the file has no boxes")
    boxes: Dict[str, List[Tuple[str, Sequence[float]]]] = {}
    unreadable = []
    for line, name, value in rows:
        where = f"line {line} ({name or 'no name'})"
        if name is None:
            unreadable.append(f"{where}: a box without an image name")
            continue
        try:
            corners = parse_numbers(value)
        except ValueError as err:
            unreadable.append(f"{where}: {value!r} is not a box 'x0 y0 x1 y1' ({err})")
            continue
        boxes.setdefault(name, []).append((where, corners))
    paths = resolve_all(image_dir, list(boxes), csv_path)
    images = [_Read(name, path, None, image_boxes) for (name, image_boxes), path in zip(boxes.items(), paths)]
    return _checked(str(csv_path), images, unreadable)


def _labels_dir_for(images_dir: Path) -> Path:
    """ultralytics' rule: the last `images` component of the path becomes `labels`."""
    parts = images_dir.absolute().parts
    if "images" not in parts:
        raise DataError(f"{images_dir}: no folder named `images` on the path, so its labels folder cannot be "
                        "found the ultralytics way (images/... -> labels/...); give the labels folder")
    last = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:last], "labels", *parts[last + 1:])


def _yolo_corners(line: str) -> Tuple[float, float, float, float]:
    """'cls cx cy w h' (normalised) -> x0 y0 x1 y1 as fractions of the image; ValueError says why not.
    Every class reads as the one class (animal) our detectors find."""
    parts = line.split()
    if len(parts) != 5:
        raise ValueError(f"{len(parts)} values, not 5")
    try:
        whole_class = float(parts[0]).is_integer() and float(parts[0]) >= 0
    except ValueError:
        whole_class = False
    if not whole_class:
        raise ValueError("the class is not a whole number >= 0")
    cx, cy, w, h = parse_numbers(parts[1:])
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def from_yolo_labels(images_dir: PathLike, labels_dir: Optional[PathLike] = None) -> List[AnnotatedImage]:
    """Boxes from ultralytics label folders.

    Every image under `images_dir` (recursively) takes its boxes from the `.txt` file at the same
    relative path under `labels_dir` (default: the path with its last `images` folder replaced by
    `labels`, as ultralytics does); a missing or empty label file makes a background image. The
    image_id is the image's relative path; identities are unknown (None).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"images folder {images_dir} does not exist")
    labels_dir = Path(labels_dir) if labels_dir is not None else _labels_dir_for(images_dir)
    images, unreadable = [], []
    for image in list_images(images_dir):
        relative = image.relative_to(images_dir)
        label_name = relative.with_suffix(".txt").as_posix()
        read = _Read(relative.as_posix(), os.path.abspath(image), normalised=True)
        images.append(read)
        try:
            text = (labels_dir / label_name).read_text()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as err:
            unreadable.append(f"{label_name}: cannot be read ({err})")
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{label_name} line {number}"
            try:
                read.boxes.append((where, _yolo_corners(line)))
            except ValueError as err:
                unreadable.append(f"{where}: {line.strip()!r} is not 'class cx cy w h' ({err})")
    if not images:
        raise DataError(f"no images found under {images_dir}")
    return _checked(str(labels_dir), images, unreadable)


class AnnotationSource(NamedTuple):
    """How `load_annotations` reads one source: its loader, the arguments it needs and may take."""

    load: Callable[..., List[AnnotatedImage]]
    needs: Tuple[str, ...]
    may_take: Tuple[str, ...]
    usage: str


ANNOTATION_SOURCES: Dict[str, AnnotationSource] = {
    "bbox": AnnotationSource(lambda table, path=None: from_table(table, str(path or "the metadata table")),
                             ("table",), ("path",), "table (the metadata table) and optionally path (its file)"),
    "csv": AnnotationSource(lambda path, images: from_box_csv(path, images), ("path", "images"), (),
                            "path (the box CSV) and images (the folder its image names are in)"),
    "yolo": AnnotationSource(lambda images, path=None: from_yolo_labels(images, path), ("images",), ("path",),
                             "images (the images folder) and optionally path (its labels folder)"),
}


def load_annotations(source: str, *, table: Optional[pd.DataFrame] = None, path: Optional[PathLike] = None,
                     images: Optional[PathLike] = None) -> List[AnnotatedImage]:
    """Checked boxes from the source named `source` (a key of ANNOTATION_SOURCES).

    `bbox` reads `table` (`path` names it in messages), `csv` the box CSV at `path` with image names
    relative to `images`, `yolo` the images folder `images` with its labels folder `path` (default:
    ultralytics' images -> labels rule). A misspelt name or a missing argument is a ConfigError.
    """
    if source not in ANNOTATION_SOURCES:
        raise ConfigError(f"unknown annotation source '{source}'{did_you_mean(source, ANNOTATION_SOURCES)}")
    entry = ANNOTATION_SOURCES[source]
    given: Dict[str, Any] = {name: value for name, value in (("table", table), ("path", path), ("images", images))
                             if value is not None}
    missing = [name for name in entry.needs if name not in given]
    unused = [name for name in given if name not in entry.needs + entry.may_take]
    if missing or unused:
        wrong = f"missing {', '.join(missing)}" if missing else f"{', '.join(unused)} does not apply"
        raise ConfigError(f"annotation source '{source}' reads {entry.usage}: {wrong}")
    return entry.load(**given)


def _split_to_val(items: Sequence[AnnotatedImage], val_fraction: float, seed: int) -> List[bool]:
    """Whether each item goes to validation.

    Identities are kept whole so that validation measures finding animals the detector has not
    seen (an image without an identity is a group of its own). Groups are visited in an order
    shuffled by `seed` and taken while they bring the validation count closer to `val_fraction`
    of the images; each side gets at least one group.
    """
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must lie between 0 and 1 (both excluded), not {val_fraction}")
    if len(items) < 2:
        raise DataError(f"a train/val split needs at least 2 images; there {'is' if len(items) == 1 else 'are'} "
                        f"{len(items)}")
    groups: Dict[Tuple[str, str, int], List[int]] = {}
    for index, item in enumerate(items):
        key = ("identity", item.identity, 0) if item.identity is not None else ("image", item.image_id, index)
        groups.setdefault(key, []).append(index)
    if len(groups) < 2:
        raise DataError(f"all {len(items)} images show one animal ({items[0].identity}), so no identity-aware "
                        "split has images on both sides; add images of other animals or without an identity")
    keys = sorted(groups)  # sorted first, so the split depends on the seed, not on the items' order
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    target = min(max(round(val_fraction * len(items)), 1), len(items) - 1)
    val, count = [], 0
    for key in order:
        size = len(groups[key])
        if abs(count + size - target) < abs(count - target):
            val.append(key)
            count += size
    # Greedy filling can leave a side empty when groups are large next to the target (or the target
    # is most of the images): then the smallest group changes sides.
    if not val:
        val.append(min(order, key=lambda k: len(groups[k])))
    elif len(val) == len(groups):
        val.remove(min(val, key=lambda k: len(groups[k])))
    to_val = [False] * len(items)
    for key in val:
        for index in groups[key]:
            to_val[index] = True
    return to_val


def _is_ours_or_empty(folder: Path) -> bool:
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()):
        return True
    try:
        with open(folder / "data.yaml") as handle:
            return handle.readline().rstrip("\n") == _MARKER
    except (OSError, UnicodeDecodeError):
        return False


def _link_or_copy(source: str, target: Path) -> None:
    """A hard link costs no space and survives the source's move; a symbolic link works across
    file systems; a copy works everywhere."""
    try:
        os.link(source, target)
    except OSError:
        try:
            os.symlink(source, target)
        except OSError:
            shutil.copy2(source, target)


def _label_text(item: AnnotatedImage) -> str:
    """ultralytics label lines `0 cx cy w h`, normalised; empty for a background image."""
    frame = np.array([item.width, item.height, item.width, item.height], dtype=np.float64)
    lines = []
    for box in item.boxes.astype(np.float64) / frame:
        x0, y0, x1, y1 = box
        lines.append(f"0 {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}\n")
    return "".join(lines)


def write_yolo_dataset(items: Sequence[AnnotatedImage], out_dir: PathLike, *, val_fraction: float = 0.2,
                       seed: int = 0, class_name: str = "animal") -> Path:
    """Write `items` in ultralytics' dataset layout and return the path of its data.yaml.

    out_dir/images/{train,val}/<name> (hard links to the images where possible, else symbolic links,
    else copies; <name> = `{index:06d}_{stem}{suffix}`, unique), out_dir/labels/{train,val}/<name
    stem>.txt, out_dir/data.yaml (one class, `class_name`) and out_dir/split.csv (image_id,
    identity, split, name). The train/val split keeps identities whole (see `_split_to_val`) and is
    the same for the same items and `seed`. The folder is written aside and swapped in whole, so an
    interrupted write leaves the previous one (or none); a folder this function wrote is replaced,
    any other non-empty one is refused.
    """
    final = Path(out_dir).expanduser().absolute()
    if not _is_ours_or_empty(final):
        raise ConfigError(f"{final} is not an empty folder nor one write_yolo_dataset wrote; it is never "
                          "overwritten: give a new or empty folder")
    missing = [item.path for item in items if not os.path.isfile(item.path)]
    if missing:
        raise DataError(f"{len(missing)} annotated images do not exist: {list_some(missing)}")
    to_val = _split_to_val(items, val_fraction, seed)
    rows = []
    with atomic_folder(final) as staging:
        for part in ("images", "labels"):
            for side in ("train", "val"):
                (staging / part / side).mkdir(parents=True)
        for index, (item, is_val) in enumerate(zip(items, to_val)):
            side = "val" if is_val else "train"
            image = Path(item.path)
            name = f"{index:06d}_{image.stem}{image.suffix}"
            _link_or_copy(item.path, staging / "images" / side / name)
            (staging / "labels" / side / f"{Path(name).stem}.txt").write_text(_label_text(item))
            rows.append({"image_id": item.image_id, "identity": item.identity, "split": side, "name": name})
        safe_cells(pd.DataFrame(rows, columns=["image_id", "identity", "split", "name"])).to_csv(staging / "split.csv",
                                                                                                   index=False)
        config = {"path": str(final), "train": "images/train", "val": "images/val", "names": {0: class_name}}
        (staging / "data.yaml").write_text(f"{_MARKER}\n{yaml.safe_dump(config, sort_keys=False)}")
    return final / "data.yaml"
