"""Pixel fingerprints: resized and re-encoded copies match, recoloured, cropped and different pictures do not."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from imagefolders import alpha_pattern, picture
from PIL import Image

from imgcluster.fingerprint import (
    MAX_COLOUR_DIFFERENCE,
    MAX_HASH_DISTANCE,
    colour_difference,
    fingerprint,
    hash_distance,
    perceptual_hash,
    same_file,
    same_picture,
)


def save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


def test_resized_and_reencoded_copies_are_the_same_picture(tmp_path: Path) -> None:
    original = fingerprint(save(picture(0, (1500, 1000)), tmp_path / "big.png"))
    small = fingerprint(save(picture(0, (1500, 1000)).resize((300, 200), Image.Resampling.LANCZOS), tmp_path / "small.jpg", quality=80))
    webp = fingerprint(save(picture(0, (1500, 1000)), tmp_path / "re.webp", quality=60))
    assert same_picture(original, small) and same_picture(original, webp)
    assert not same_file(original, small)
    shutil.copyfile(tmp_path / "big.png", tmp_path / "copy.png")
    assert same_file(original, fingerprint(tmp_path / "copy.png"))


def test_exif_rotation_is_applied_before_hashing(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned, shown upright
    turned = picture(1).transpose(Image.Transpose.ROTATE_270)
    assert same_picture(fingerprint(save(picture(1), tmp_path / "a.png")), fingerprint(save(turned, tmp_path / "b.png", exif=exif)))
    assert not same_picture(fingerprint(tmp_path / "a.png"), fingerprint(save(turned, tmp_path / "c.png")))  # really rotated


def test_different_recoloured_and_cropped_pictures_differ(tmp_path: Path) -> None:
    base = picture(2)
    a = fingerprint(save(base, tmp_path / "a.png"))
    assert not same_picture(a, fingerprint(save(picture(3), tmp_path / "other.png")))
    grey = np.asarray(base.convert("L"), dtype=np.float32)
    warm, cold = (np.dstack([grey * r, grey * g, grey * b]).astype(np.uint8) for r, g, b in [(1, 1, 0.5), (0.5, 1, 1)])
    w = fingerprint(save(Image.fromarray(warm), tmp_path / "warm.png"))  # one design in two colours, as
    c = fingerprint(save(Image.fromarray(cold), tmp_path / "cold.png"))  # Ubuntu MATE's Warm and Cold
    assert hash_distance(w, c) <= 2  # the grey hash alone is fooled
    assert not same_picture(w, c)  # the colours are not
    assert not same_picture(a, fingerprint(save(base.crop((0, 0, 300, 320)), tmp_path / "crop.png")))


def test_a_small_edit_is_not_a_copy(tmp_path: Path) -> None:
    """A logo stamped on a wallpaper moves few hash bits and little mean colour, but a few cells a lot."""
    base = picture(6, (640, 480))
    a = fingerprint(save(base, tmp_path / "plain.png"))
    stamped = base.copy()
    stamped.paste((250, 250, 250), (500, 380, 600, 440))  # a white badge over a few thumbnail cells
    b = fingerprint(save(stamped, tmp_path / "logo.png"))
    assert hash_distance(a, b) <= MAX_HASH_DISTANCE and colour_difference(a, b) <= MAX_COLOUR_DIFFERENCE
    assert not same_picture(a, b)
    assert same_picture(a, fingerprint(save(base.resize((213, 160), Image.Resampling.LANCZOS), tmp_path / "small.jpg", quality=90)))


def test_alpha_only_patterns_are_told_apart(tmp_path: Path) -> None:
    """Flattened on white these are all one blank page; the loader keeps them apart, so the hash does too."""
    prints = [fingerprint(save(alpha_pattern(seed), tmp_path / f"p{seed}.png")) for seed in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not same_picture(prints[i], prints[j])
    buffer = io.BytesIO()
    alpha_pattern(0).resize((240, 160)).save(buffer, "WEBP", quality=80)
    (tmp_path / "p0-small.webp").write_bytes(buffer.getvalue())
    assert same_picture(prints[0], fingerprint(tmp_path / "p0-small.webp"))


def test_hash_of_flat_and_shifted_images() -> None:
    assert perceptual_hash(Image.new("RGB", (50, 50), (9, 9, 9))).shape == (63,)
    a, b = perceptual_hash(picture(4)), perceptual_hash(picture(5))
    assert np.count_nonzero(a != b) > 2 * MAX_HASH_DISTANCE
