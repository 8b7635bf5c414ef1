"""The benchmark's image folders: Fashion-MNIST test images as PNG and 512-px JPEG, made once under ``benchmarks/data/speed``."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from datasets import FASHION_CLASSES, fashion_mnist_folder, fashion_mnist_test, write_folder

DATA = Path(__file__).resolve().parents[1] / "data"


def image_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg") and not any(s.startswith(".") for s in p.parts))


def warm_page_cache(folder: Path) -> None:
    """Read every file once so neither pipeline pays for the disk."""
    for path in image_paths(folder):
        path.read_bytes()


def fill_once(folder: Path, files: Iterable[tuple[Path, Path]], link: bool = False) -> Path:
    """Copy (or hard-link) each ``(source, relative path)`` into ``folder``, once: a finished
    folder is marked ``.complete`` and later runs reuse it."""
    if not (folder / ".complete").exists():
        for src, rel in files:
            dst = folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                continue
            if link:
                with contextlib.suppress(OSError):  # another file system: copy instead
                    os.link(src, dst)
                    continue
            shutil.copy2(src, dst)
        (folder / ".complete").write_text("ok\n")
    return folder


def first_pngs(n: int) -> list[tuple[Path, Path]]:
    """The first ``n`` Fashion-MNIST test PNGs of the benchmark folder, each with its path under a class folder."""
    source = fashion_mnist_folder(DATA / "fashion-mnist-test")
    pngs = sorted(source.rglob("*.png"), key=lambda p: p.name)[:n]
    return [(src, Path(src.parent.name, src.name)) for src in pngs]


def prepare_folders(n: int, parts: int) -> dict[str, list[Path]]:
    """The first ``n`` Fashion-MNIST test images as PNG (copied from the benchmark folder) and as
    512-px JPEG, each split into ``parts`` sub-folders of equal size."""
    pngs = first_pngs(n)
    images, labels = fashion_mnist_test()
    bounds = np.linspace(0, n, parts + 1).astype(int)
    out: dict[str, list[Path]] = {"PNG 28 px": [], "JPEG 512 px": []}
    for part, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        png_dir = fill_once(DATA / "speed" / f"png-{n}-{parts}" / f"part{part}", pngs[lo:hi])
        jpg_dir = write_folder(
            images[lo:hi], labels[lo:hi], FASHION_CLASSES, DATA / "speed" / f"jpg512-{n}-{parts}" / f"part{part}", "jpg", 512
        )
        out["PNG 28 px"].append(png_dir)
        out["JPEG 512 px"].append(jpg_dir)
    return out


def repeated(folder: Path, times: int) -> Path:
    """``folder``'s images ``times`` over (hard links in sub-folders copy0, copy1, ...): a large
    folder made fast, for throughput in steady state rather than start-up."""
    sources = image_paths(folder)
    copies = ((src, Path(f"copy{i}") / src.relative_to(folder)) for i in range(times) for src in sources)
    return fill_once(folder.parent / f"{folder.name}-x{times}", copies, link=True)
