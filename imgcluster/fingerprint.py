"""Pixel-level fingerprints that confirm or refute a near-duplicate found in feature space.

Backbone features say two images *look alike*; they cannot say one is a copy of the other. Two
different wallpapers of one series, or six patterns that a loader once flattened to the same white
rectangle, can score a cosine similarity of 1.0. A fingerprint is evidence from the pixels:

* ``sha256`` of the file's bytes: equal digests are the same file (``exact``);
* a 64-bit **DCT perceptual hash** (pHash) of the grey image shrunk to 32x32: the signs of the
  63 lowest non-constant frequencies against their median. Resizing, re-encoding and mild
  compression move few bits; a different picture moves about half of them;
* a 16x16 **colour thumbnail** (box-filtered): the hash is blind to colour, so recoloured variants
  of one design (Ubuntu MATE's Cold, Warm and Radioactive) would otherwise pass as copies; and
  it is blind to small edits, so the thumbnail also counts the cells that changed a lot. Resizing
  and re-encoding change every cell a little (at most 2 of 256 cells by more than 16/255 in
  ``make bench-duplicates``); a logo added to a wallpaper (Debian's login screen with and without
  it: hash distance 8, mean colour difference 1.2) changes a few cells a lot (7);
* the **aspect ratio**: a crop that keeps most of the picture can keep the hash, but not the shape.

Images are decoded by :func:`imgcluster.load.load_rgb`, the loader the embedding uses, so EXIF
rotation is applied and pictures drawn only in the alpha channel keep their structure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

from imgcluster.load import load_rgb

HASH_SIDE = 32  # the grey image the DCT runs on
HASH_FREQUENCIES = 8  # the 8x8 lowest frequencies, less the constant term: 63 bits
THUMB_SIDE = 16
MAX_HASH_DISTANCE = 10  # of 63 bits; chosen with `make bench-duplicates`
MAX_COLOUR_DIFFERENCE = 8.0  # mean absolute difference of the 16x16 thumbnails, of 255
CELL_CHANGE = 16.0  # a thumbnail cell (mean of its channels' absolute differences, of 255) changed this much ...
MAX_CHANGED_CELLS = 3  # ... in more cells than this: an edit, not a re-encoding
MAX_ASPECT_CHANGE = 0.02  # relative: 1920x1080 and 5640x3172 differ by 0.01 %
_DRAFT = 4 * HASH_SIDE  # JPEGs decode at a reduced scale: the hash needs no more pixels


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    bits: np.ndarray  # [63] bool: the perceptual hash
    thumb: np.ndarray  # [16, 16, 3] float32, 0-255
    aspect: float  # width / height after EXIF rotation


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """63 bits: which of the lowest DCT frequencies of the shrunk grey image lie above their median."""
    grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:HASH_FREQUENCIES, :HASH_FREQUENCIES].ravel()[1:]
    return low > np.median(low)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> Fingerprint:
    """Fingerprint one file; raises :class:`imgcluster.load.ImageDecodeError` when it cannot be read."""
    image = load_rgb(path, draft_size=_DRAFT)
    thumb = np.asarray(image.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.float32)
    try:
        digest = file_digest(path)
    except OSError:
        digest = ""  # read a moment ago, gone now: the pixels still count, the bytes cannot be compared
    return Fingerprint(digest, perceptual_hash(image), thumb, image.width / image.height)


def hash_distance(a: Fingerprint, b: Fingerprint) -> int:
    return int(np.count_nonzero(a.bits != b.bits))


def colour_difference(a: Fingerprint, b: Fingerprint) -> float:
    return float(np.abs(a.thumb - b.thumb).mean())


def changed_cells(a: Fingerprint, b: Fingerprint) -> int:
    return int(np.count_nonzero(np.abs(a.thumb - b.thumb).mean(-1) > CELL_CHANGE))


def same_picture(a: Fingerprint, b: Fingerprint) -> bool:
    """The same picture at another size or encoding: shape, structure, colour and every part agree."""
    if abs(a.aspect / b.aspect - 1.0) > MAX_ASPECT_CHANGE:
        return False
    return (
        hash_distance(a, b) <= MAX_HASH_DISTANCE
        and colour_difference(a, b) <= MAX_COLOUR_DIFFERENCE
        and changed_cells(a, b) <= MAX_CHANGED_CELLS
    )


def same_file(a: Fingerprint, b: Fingerprint) -> bool:
    return bool(a.sha256) and a.sha256 == b.sha256
