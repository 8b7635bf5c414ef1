"""Small real-image folders for tests, built from the committed sample_data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
CLASSES = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir() and not p.name.startswith("."))  # not a cache left by a run


def copy_sample(dest: Path, classes: list[str] | None = None, per_class: int = 8) -> Path:
    """Copy a few images per class, keeping mtimes so that a shared cache still matches."""
    for name in classes or CLASSES:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for src in sorted((SAMPLE / name).glob("*.png"))[:per_class]:
            shutil.copy2(src, dest / name / src.name)
    return dest


def sample_image(cls: str = CLASSES[0], i: int = 0) -> Image.Image:
    return Image.open(sorted((SAMPLE / cls).glob("*.png"))[i]).convert("RGB")


def picture(seed: int, size: tuple[int, int] = (480, 320)) -> Image.Image:
    """A smooth random 'photo': low-frequency colour blobs, the kind of structure a hash sees."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


def alpha_pattern(seed: int, size: tuple[int, int] = (480, 320)) -> Image.Image:
    """Constant white pixels whose picture lives only in the alpha channel (MATE's Silk, Waves)."""
    alpha = np.asarray(picture(seed, size).convert("L"))
    rgba = np.dstack([np.full((*alpha.shape, 3), 255, np.uint8), alpha])
    return Image.fromarray(rgba, "RGBA")
