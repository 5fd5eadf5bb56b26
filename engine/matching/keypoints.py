"""`KeypointStore`: a matcher's features for the evaluation rows, computed once per distinct image.

An image is loaded the way the models see it (EXIF turn, `bbox` crop with padding, orientation
rules), resized so its longer side is `side` (never upscaled), and its features are cached on disk
under a key of the file's identity (path, size, mtime), the crop, the turn, the side and the
matcher's own description, so a second evaluation extracts nothing. Features stay in memory up to
IN_MEMORY_BYTES (least recently used out first, then read back from the cache when a pair needs
them): a whole gallery of a few thousand images fits, and memory stays bounded however large it is.
Under several processes, each extracts every world-th missing image and the others read them
from the shared cache. A thread-safe matcher (SIFT) extracts in a pool of threads
(engine.matching.parallel); the memory is shared by the pair engine's threads, behind a lock.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from core.array_cache import ArrayCache
from core.files import file_identity
from data.dataset import ReIDDataset
from data.images import ImageLoader
from engine.accel import rank_and_world
from engine.matching.parallel import mapper, worker_count
from matchers import Features, Matcher

FEATURES_VERSION = 1
# Features kept in memory: about 0.14 MB per image at 512 SIFT keypoints, so some 7,000 images. Reading
# an evicted image back costs as long as matching a pair, and a much smaller bound made a large gallery
# read its features from disk many times per evaluation (docs/results.md).
IN_MEMORY_BYTES = 1 << 30


class KeypointStore:
    def __init__(self, matcher: Matcher, rows: pd.DataFrame, *, side: int, crop_to_bbox: bool, bbox_padding: float,
                 orientation_rules: Optional[dict], cache: ArrayCache, show_progress: bool = True):
        self.matcher = matcher
        self.side = int(side)
        self.cache = cache
        self.show_progress = show_progress
        self.images = ReIDDataset(rows, ImageLoader(self.side, None, crop_to_bbox, bbox_padding, fit="long"),
                                  transform=lambda image: image, orientation_rules=orientation_rules)
        self._crop = [list(map(float, b)) if crop_to_bbox and b is not None else None for b in rows["bbox"]]
        self._padding = float(bbox_padding) if crop_to_bbox else None
        self._keys: Dict[int, str] = {}
        self._memory: OrderedDict[int, Features] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        self.extracted = 0  # images whose features this store computed (not read from the cache)

    def key(self, row: int) -> str:
        """The cache key of row's features: the image file, how it is cut and turned, the matcher."""
        if row not in self._keys:
            payload = [FEATURES_VERSION, list(file_identity(self.images.paths[row])), self._crop[row], self._padding,
                       self.images.rotations[row], self.side, self.matcher.describe()]
            self._keys[row] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        return self._keys[row]

    def image(self, row: int) -> np.ndarray:
        """The (H, W, 3) image the matcher sees for `row` (also drawn in the report)."""
        return self.images.load_image(row)

    def inside_crop_box(self, row: int) -> np.ndarray:
        """(N,) bool: row's keypoints inside its bbox itself, not in the padding its crop adds around
        it; all of them when the image is not cropped (or is turned: orientation rules)."""
        features = self.features(row)
        points = features["keypoints"]
        box = None if self.images.rotations[row] else self.images.loader.box_in_crop(self.images.paths[row],
                                                                                     self.images.bboxes[row])
        if box is None:
            return np.ones(len(points), bool)
        width, height = features["image_size"]
        left, top, right, bottom = box[0] * width, box[1] * height, box[2] * width, box[3] * height
        return ((points[:, 0] >= left) & (points[:, 0] <= right) & (points[:, 1] >= top) & (points[:, 1] <= bottom))

    def features(self, row: int) -> Features:
        with self._lock:
            if row in self._memory:
                self._memory.move_to_end(row)
                return self._memory[row]
        found = self.cache.load_group(self.key(row)) if self.cache.enabled else None
        if found is None or not {"keypoints", "descriptors", "image_size"} <= set(found):
            return self._store(row, self.matcher.extract(self.image(row)))
        return self._remember(row, found)

    def _remember(self, row: int, found: Features) -> Features:
        with self._lock:
            if row not in self._memory:
                self._memory_bytes += _size(found)
            self._memory[row] = found
            while self._memory_bytes > IN_MEMORY_BYTES and len(self._memory) > 1:
                self._memory_bytes -= _size(self._memory.popitem(last=False)[1])
        return found

    def _store(self, row: int, found: Features) -> Features:
        """Freshly extracted features: on disk and in memory (the pairs that follow need them)."""
        with self._lock:
            self.extracted += 1
        self.cache.save_group(self.key(row), found)
        return self._remember(row, found)

    def missing(self, rows: Iterable[int]) -> list:
        """Rows whose features are in neither the memory nor the disk cache."""
        return [r for r in sorted(set(rows)) if r not in self._memory
                and not (self.cache.enabled and self.cache.path(self.key(r), group=True).is_file())]

    def prepare(self, rows: Sequence[int], accelerator=None) -> None:
        """Extract the features of `rows` that are not cached, split across processes when the cache
        is shared (each process extracts every world-th image, then all read them from disk)."""
        if not self.cache.enabled:
            return  # nowhere to share them: each process extracts what its own pairs need, when they need it
        rank, world = rank_and_world(accelerator)
        mine = self.missing(rows)[rank::world]
        with mapper(worker_count(self.matcher, accelerator)) as each:
            extracted = each(lambda row: self.matcher.extract(self.image(row)), mine)
            for row, found in tqdm(zip(mine, extracted), total=len(mine), desc=f"keypoints ({self.matcher.name})",
                                   unit="img", disable=not mine or not self.show_progress or rank != 0, leave=False):
                self._store(row, found)
        if world > 1:
            accelerator.wait_for_everyone()


def _size(features: Features) -> int:
    return sum(np.asarray(value).nbytes for value in features.values())
