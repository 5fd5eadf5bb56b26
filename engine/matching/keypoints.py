"""`KeypointStore`: a matcher's features for the evaluation rows, computed once per distinct image.

An image is loaded the way the models see it (EXIF turn, `bbox` crop with padding, orientation
rules), resized so its longer side is `side` (never upscaled), and its features are cached on disk
under a key of the file's identity (path, size, mtime), the crop, the turn, the side and the
matcher's own description, so a second evaluation extracts nothing. Features are read back per
batch of pairs through a small in-memory LRU: memory stays flat however large the gallery.
Under several processes, each extracts every world-th missing image and the others read them
from the shared cache.
"""
from __future__ import annotations

import hashlib
import json
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
from matchers import Features, Matcher

FEATURES_VERSION = 1
IN_MEMORY = 256  # images' features kept in memory (about 0.2 MB each at 512 keypoints)


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

    def features(self, row: int) -> Features:
        if row in self._memory:
            self._memory.move_to_end(row)
            return self._memory[row]
        found = self.cache.load_group(self.key(row)) if self.cache.enabled else None
        if found is None or not {"keypoints", "descriptors", "image_size"} <= set(found):
            return self._extract(row)
        return self._remember(row, found)

    def _remember(self, row: int, found: Features) -> Features:
        self._memory[row] = found
        if len(self._memory) > IN_MEMORY:
            self._memory.popitem(last=False)
        return found

    def _extract(self, row: int) -> Features:
        """Extract, store on disk and keep in memory (the pairs that follow need it: no read-back)."""
        found = self.matcher.extract(self.image(row))
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
        for row in tqdm(mine, desc=f"keypoints ({self.matcher.name})", unit="img",
                        disable=not mine or not self.show_progress or rank != 0, leave=False):
            self._extract(row)
        if world > 1:
            accelerator.wait_for_everyone()
