"""Image loader: EXIF, modes, disguised formats, bbox crops, draft decoding and the disk cache."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import ExifTags, Image, JpegImagePlugin

from core.errors import DataError
from data import images
from data.images import ImageLoader, resolve_cache_dir


def quadrants(width: int, height: int) -> np.ndarray:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: orientation is visible."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2, : width // 2] = (255, 0, 0)
    img[: height // 2, width // 2:] = (0, 255, 0)
    img[height // 2:, : width // 2] = (0, 0, 255)
    img[height // 2:, width // 2:] = (255, 255, 255)
    return img


def colour_at(img: np.ndarray, fy: float, fx: float) -> np.ndarray:
    return img[int(fy * img.shape[0]), int(fx * img.shape[1])].astype(int)


def assert_colour(img, fy, fx, rgb, tol=40):
    assert np.abs(colour_at(img, fy, fx) - np.array(rgb)).max() <= tol, colour_at(img, fy, fx)


def test_exif_rotation_is_applied(tmp_path):
    # Stored sideways (the camera was turned): orientation 6 means "rotate 90 degrees clockwise
    # to display", so the displayed image is the stored one turned clockwise.
    stored = quadrants(120, 80)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    out = ImageLoader(40).load(str(path))
    assert out.shape == (60, 40, 3)  # portrait after orientation, shorter side = size
    expected = np.rot90(stored, k=-1)
    for fy, fx in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]:
        assert_colour(out, fy, fx, colour_at(expected, fy, fx))


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("CMYK", ".jpg"), ("RGBA", ".png"), ("P", ".png"),
                                         ("I;16", ".png")])
def test_any_mode_becomes_rgb(tmp_path, mode, suffix):
    base = Image.fromarray(quadrants(64, 48))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    else:
        img = base.convert(mode)
    path = tmp_path / f"img{suffix}"
    img.save(path)
    out = ImageLoader(24).load(str(path))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    if mode in ("CMYK", "RGBA", "P"):
        assert_colour(out, 0.25, 0.75, (0, 255, 0))
    else:  # grey: all channels equal, the white quadrant stays white
        assert (out[..., 0] == out[..., 2]).all()
        assert_colour(out, 0.75, 0.75, (255, 255, 255))


def test_transparent_pixels_get_the_neutral_background(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent black
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = ImageLoader(16).load(str(path))
    assert_colour(out, 0.5, 0.5, images._ALPHA_BACKGROUND, tol=1)


def test_png_name_with_jpeg_content(tmp_path):
    path = tmp_path / "actually_jpeg.png"
    Image.fromarray(quadrants(80, 80)).save(path, format="JPEG")
    out = ImageLoader(32).load(str(path))
    assert out.shape == (32, 32, 3) and out.flags.writeable
    assert_colour(out, 0.75, 0.25, (0, 0, 255))


def test_bbox_crop_with_padding_and_clipping(tmp_path):
    path = tmp_path / "q.png"
    Image.fromarray(quadrants(200, 100)).save(path)
    loader = ImageLoader(20, bbox_padding=0.5)
    # bbox on the white quadrant's corner; 50 % padding would reach past the right/bottom edges
    out = loader.load(str(path), [160, 60, 40, 40])
    # padded box (140, 40, 220, 120) is clipped to (140, 40, 200, 100): 60 x 60
    assert out.shape == (20, 20, 3)
    assert_colour(out, 0.1, 0.1, (0, 255, 0), tol=5)  # above y=50 is the green quadrant
    assert_colour(out, 0.9, 0.9, (255, 255, 255), tol=5)
    assert ImageLoader(20, crop_to_bbox=False).load(str(path), [160, 60, 40, 40]).shape == (20, 40, 3)


def test_small_crop_is_upscaled_to_size(tmp_path):
    path = tmp_path / "q.png"
    Image.fromarray(quadrants(200, 100)).save(path)
    out = ImageLoader(64, bbox_padding=0.0).load(str(path), [10, 10, 20, 10])
    assert out.shape == (64, 128, 3)


def test_bbox_outside_image_is_a_data_error(tmp_path):
    path = tmp_path / "q.png"
    Image.fromarray(quadrants(50, 50)).save(path)
    with pytest.raises(DataError, match="outside image"):
        ImageLoader(16).load(str(path), [100, 100, 10, 10])


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="broken.jpg"):
        ImageLoader(16).load(str(path))
    with pytest.raises(DataError, match="missing.jpg"):
        ImageLoader(16, cache_dir=str(tmp_path / "cache")).load(str(tmp_path / "missing.jpg"))


def test_draft_decode_gives_the_same_geometry_as_full_decode(tmp_path):
    # A 1600 x 1200 JPEG whose bbox holds a red square on grey; rotated by EXIF too, so the bbox
    # (in displayed coordinates) must survive both the 1/8 draft scale and the orientation.
    img = np.full((1200, 1600, 3), 128, np.uint8)
    img[300:500, 1000:1200] = (255, 0, 0)
    stored = np.rot90(img, k=1)  # stored turned counter-clockwise; orientation 6 turns it back
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    path = tmp_path / "big.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
    bbox = [950, 250, 300, 300]  # red square plus a 50-px grey margin, displayed coordinates

    drafted = ImageLoader(32, bbox_padding=0.0).load(str(path), bbox)
    full = ImageLoader(32, bbox_padding=0.0, draft=False).load(str(path), bbox)
    assert drafted.shape == full.shape == (32, 32, 3)
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 4
    assert_colour(drafted, 0.5, 0.5, (255, 0, 0), tol=10)
    assert_colour(drafted, 0.05, 0.5, (128, 128, 128), tol=10)


def test_draft_is_used_for_small_targets(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.fromarray(quadrants(1600, 1200)).save(path, quality=90)
    requested = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        requested.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    ImageLoader(100).load(str(path))
    ImageLoader(1000).load(str(path))  # less than 2x smaller: no draft
    ImageLoader(100, draft=False).load(str(path))
    assert requested == [(200, 150)]  # decoded at 1/8 scale, still >= 100 on the short side


def test_cache_hit_skips_decoding_and_change_invalidates(tmp_path, monkeypatch):
    path = tmp_path / "a.jpg"
    Image.fromarray(quadrants(64, 64)).save(path)
    cache = tmp_path / "cache"
    loader = ImageLoader(32, cache_dir=str(cache))
    first = loader.load(str(path), [0, 0, 32, 32])
    assert len(list(cache.rglob("*.npy"))) == 1 and not list(cache.rglob("*.tmp"))

    opened = []
    real_open = Image.open
    monkeypatch.setattr(images.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    again = ImageLoader(32, cache_dir=str(cache)).load(str(path), [0, 0, 32, 32])
    assert opened == [] and np.array_equal(first, again)

    loader.load(str(path), [32, 32, 32, 32])  # another crop is another entry
    assert len(opened) == 1

    Image.fromarray(quadrants(64, 64)[::-1].copy()).save(path)  # same size, new content
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = loader.load(str(path), [0, 0, 32, 32])
    assert len(opened) == 2
    assert_colour(changed, 0.5, 0.5, (0, 0, 255))


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(quadrants(40, 40)).save(path)
    cache = tmp_path / "cache"
    loader = ImageLoader(20, cache_dir=str(cache))
    expected = loader.load(str(path))
    entry = next(cache.rglob("*.npy"))
    entry.write_bytes(entry.read_bytes()[:50])
    assert np.array_equal(loader.load(str(path)), expected)


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("REIDZOO_CACHE", str(tmp_path))
    assert resolve_cache_dir("") == os.path.join(str(tmp_path), "images")
    monkeypatch.delenv("REIDZOO_CACHE")
    assert resolve_cache_dir("") == os.path.expanduser(os.path.join("~", ".cache", "reidzoo", "images"))
    assert resolve_cache_dir("none") is None and resolve_cache_dir("None") is None
    assert resolve_cache_dir("/x/y") == "/x/y"
    assert ImageLoader(8, cache_dir="none").cache_dir is None
