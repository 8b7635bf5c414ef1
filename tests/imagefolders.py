"""Small real-image folders for tests, built from the committed sample_data."""

from __future__ import annotations

import shutil
from pathlib import Path

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
