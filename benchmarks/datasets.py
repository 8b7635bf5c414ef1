"""Labelled image folders for benchmarks and sample data, from data available offline.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (MIT license), installed on demand;
digits from scikit-learn. Each folder has one sub-folder per class, the layout ``evaluate`` reads.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

# $IMGCLUSTER_FASHION_MNIST points at a copy of the package's files on a machine without apt
# (the GPU device: benchmarks/gpu_check.sh).
FASHION_DIR = Path(os.environ.get("IMGCLUSTER_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def ensure_fashion_mnist() -> Path:
    """Install the Debian package if its files are missing (needs root and the package mirror)."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        apt = shutil.which("apt-get")
        if apt is None:
            raise RuntimeError("Fashion-MNIST missing and apt-get not available: install dataset-fashion-mnist")
        subprocess.run([apt, "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([apt, "install", "-y", "-q", "dataset-fashion-mnist"], check=True, stdout=subprocess.DEVNULL)
    return FASHION_DIR


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    root = ensure_fashion_mnist()
    return read_idx(root / "t10k-images-idx3-ubyte.gz"), read_idx(root / "t10k-labels-idx1-ubyte.gz")


def write_folder(images: np.ndarray, labels: np.ndarray, names: list[str], out: Path, fmt: str = "png", size: int | None = None) -> Path:
    """Write ``images`` as ``out/<class name>/<index>.<fmt>``; skipped when already complete."""
    marker = out / ".complete"
    if marker.exists():
        return out
    for i, (image, label) in enumerate(zip(images, labels)):
        target = out / names[int(label)] / f"{i:05d}.{fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if size is not None:
            picture = picture.convert("RGB").resize((size, size), Image.BICUBIC)
        picture.save(target, quality=90) if fmt == "jpg" else picture.save(target)
    marker.write_text("ok\n")
    return out


def fashion_mnist_folder(out: Path) -> Path:
    images, labels = fashion_mnist_test()
    return write_folder(images, labels, FASHION_CLASSES, out)


def digits_folder(out: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return write_folder(images, digits.target, [str(d) for d in range(10)], out)
