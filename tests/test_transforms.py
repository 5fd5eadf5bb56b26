"""Transforms: shapes, TTA views, orientation rules, and the dataset that applies them."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from PIL import Image

from core.errors import ConfigError
from core.schema import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from data.dataset import ReIDDataset, build_label_map
from data.images import ImageLoader
from data.transforms import (
    build_eval_transform,
    build_train_transform,
    build_tta_transform,
    five_crops,
    num_tta_views,
    rotate_image,
    rotation_for,
)

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def photo(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_train_transform_shape_dtype_and_every_op():
    aug = AugmentConfig(hflip=1.0, color=1.0, rotate=15, rotate_p=1.0, blur=1.0, gray=1.0)
    transform = build_train_transform(aug, 32, MEAN, STD)
    out = transform(photo())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    pixels = out * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5)  # ToGray at p=1: channels equal
    names = [type(t).__name__ for t in transform.compose.transforms]
    assert names[:7] == ["Resize", "RandomResizedCrop", "HorizontalFlip", "OneOf", "Rotate", "OneOf", "ToGray"]


def test_zero_probabilities_drop_ops():
    aug = AugmentConfig(hflip=0, color=0, rotate=0, blur=0, gray=0)
    names = [type(t).__name__ for t in build_train_transform(aug, 16, MEAN, STD).compose.transforms]
    assert names == ["Resize", "RandomResizedCrop", "Normalize", "ToTensorV2"]


def test_bad_augment_values_are_config_errors():
    with pytest.raises(ConfigError, match="augment.hflip"):
        build_train_transform(AugmentConfig(hflip=1.5), 16, MEAN, STD)
    with pytest.raises(ConfigError, match="augment.scale"):
        build_train_transform(AugmentConfig(scale=[0.9, 0.5]), 16, MEAN, STD)


def test_train_transform_follows_torch_seed_and_pickles():
    transform = build_train_transform(AugmentConfig(), 24, MEAN, STD)
    image = photo()
    torch.manual_seed(1)
    first = [transform(image) for _ in range(3)]
    clone = pickle.loads(pickle.dumps(transform))  # what a DataLoader worker receives
    torch.manual_seed(1)
    assert all(torch.equal(a, clone(image)) for a in first)
    torch.manual_seed(2)
    assert not all(torch.equal(a, transform(image)) for a in first)
    transform.set_random_seed(7)  # an explicit per-sample seed wins over torch's
    replay = transform(image)
    transform.set_random_seed(7)
    assert torch.equal(replay, transform(image))


def test_eval_transform_is_deterministic_square():
    transform = build_eval_transform(40, MEAN, STD)
    image = photo(40, 60)
    out = transform(image)
    assert out.shape == (3, 40, 40) and torch.equal(out, transform(image))
    # normalisation: white maps to (1 - mean) / std
    grey = transform(np.full((40, 40, 3), 255, np.uint8))
    assert torch.allclose(grey[:, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD), atol=1e-5)


def test_tta_views_and_hflip():
    transform = build_tta_transform(["identity", "hflip", "fivecrop"], 32, MEAN, STD)
    image = photo(48, 64)
    out = transform(image)
    assert num_tta_views(["identity", "hflip", "fivecrop"]) == 7
    assert out.shape == (7, 3, 32, 32)
    assert torch.equal(out[0], build_eval_transform(32, MEAN, STD)(image))
    assert torch.equal(out[1], torch.flip(out[0], dims=[-1]))
    flipped_image = build_eval_transform(32, MEAN, STD)(np.ascontiguousarray(image[:, ::-1]))
    assert torch.allclose(out[1], flipped_image, atol=1e-4)


def test_five_crops_corners_and_centre():
    image = np.arange(16 * 16).reshape(16, 16)
    crops = five_crops(image)  # 14 x 14 windows
    assert [c.shape for c in crops] == [(14, 14)] * 5
    assert crops[0][0, 0] == image[0, 0] and crops[1][0, -1] == image[0, -1]
    assert crops[2][-1, 0] == image[-1, 0] and crops[3][-1, -1] == image[-1, -1]
    assert crops[4][0, 0] == image[1, 1]


def test_unknown_tta_view_suggests():
    with pytest.raises(ConfigError, match="did you mean 'hflip'"):
        build_tta_transform(["identity", "hflipp"], 32, MEAN, STD)
    with pytest.raises(ConfigError):
        num_tta_views([])


def test_rotation_convention_is_counter_clockwise():
    image = np.zeros((2, 3), np.uint8)
    image[0, 2] = 1  # top-right corner
    turned = rotate_image(image, 90)
    assert turned.shape == (3, 2) and turned[0, 0] == 1  # top-right went to top-left
    assert rotate_image(image, -90)[2, 1] == 1  # clockwise: top-right to bottom-right
    assert np.array_equal(rotate_image(image, 360), image)
    big = np.zeros((20, 40, 3), np.uint8)
    assert rotate_image(big, 45).shape[:2] == (42, 42)  # canvas grows to hold every corner


def test_rotation_for_rules():
    rules = {"SalamanderID2025": {"right": -90, "left": 90}}
    assert rotation_for(rules, "SalamanderID2025", "right") == -90
    assert rotation_for(rules, "SalamanderID2025", "top") == 0
    assert rotation_for(rules, "LynxID2025", "left") == 0
    assert rotation_for(rules, "SalamanderID2025", None) == 0
    assert rotation_for({}, "SalamanderID2025", "left") == 0


def test_dataset_applies_orientation_rule_and_labels(tmp_path):
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 40:] = 255  # right half white
    path = tmp_path / "a.png"
    Image.fromarray(image).save(path)
    table = pd.DataFrame({
        "path": [str(path)] * 3, "bbox": [None] * 3, "dataset": ["Sal", "Sal", "Other"],
        "orientation": ["right", "top", "right"], "identity": ["b", None, "zz"],
    })
    label_map = build_label_map(["b", "a", None, "b", "new_individual"])
    assert label_map == {"a": 0, "b": 1}
    dataset = ReIDDataset(table, ImageLoader(20), lambda img: torch.from_numpy(img.copy()), label_map,
                          {"Sal": {"right": -90}})
    rotated, plain, other = dataset[0], dataset[1], dataset[2]
    assert rotated["image"].shape == (40, 20, 3) and plain["image"].shape == (20, 40, 3)
    assert rotated["image"][-1, 0, 0] == 255 and rotated["image"][0, 0, 0] == 0  # white half now below
    assert other["image"].shape == (20, 40, 3)
    assert [rotated["label"], plain["label"], other["label"]] == [1, -1, -1]
    assert plain["index"] == 1 and len(dataset) == 3


def test_bad_orientation_rules_are_config_errors(tmp_path):
    table = pd.DataFrame({"path": [], "bbox": [], "dataset": [], "orientation": [], "identity": []})
    with pytest.raises(ConfigError, match="Sal.right"):
        ReIDDataset(table, ImageLoader(8), lambda x: x, orientation_rules={"Sal": {"right": "ninety"}})


class _SameImage(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform, self.image = transform, photo(20, 30)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.transform(self.image)


def test_dataloader_workers_and_epochs_get_different_augmentations():
    # Plain albumentations repeats one random stream in every forked worker and every epoch.
    dataset = _SameImage(build_train_transform(AugmentConfig(), 16, MEAN, STD))
    torch.manual_seed(0)
    epochs = [list(torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)) for _ in range(2)]
    assert not torch.equal(epochs[0][0], epochs[0][1])  # worker 0 vs worker 1
    assert not torch.equal(epochs[0][0], epochs[1][0])  # epoch 0 vs epoch 1


def test_importing_the_transforms_asks_no_server_for_updates():
    # albumentations checks PyPI for a newer version on import unless told not to: on an offline
    # cluster node that is a wait and a warning on every run.
    probe = ("import socket, sys\n"
             "def refuse(*args, **kwargs):\n"
             "    print('CONNECT', args[:1]); raise OSError('no network in this test')\n"
             "socket.create_connection = refuse\n"
             "socket.socket.connect = refuse\n"
             "import data.transforms\n"
             "data.transforms.build_eval_transform(32, [0.5] * 3, [0.5] * 3)\n"
             "assert 'albumentations' in sys.modules\n"
             "print('imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported" in out.stdout and "CONNECT" not in out.stdout
