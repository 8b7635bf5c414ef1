"""Make ``imgcluster/data/int8_<model>.json``: the activation ranges that int8 inference is built with.

The ranges are taken once, here, from a fixed calibration set (never from the user's folder, so a
file's features depend only on the file, the model and the cache key), and shipped as numbers
derived from these images; no image is shipped. The set (``calibration_set``), 170 images:

- 70 Fashion-MNIST *training* images (the first 7 of each class; Zalando, MIT license), from the
  Debian package dataset-fashion-mnist; the benchmarks score the *test* split only;
- 30 scikit-learn digits (the first 3 of each digit; UCI ML hand-written digits, CC BY 4.0);
- the 68 distinct Debian wallpapers of mate-backgrounds, gnome-backgrounds, sway-backgrounds and
  desktop-base (as ``benchmarks/bench_near_duplicates.py`` picks them; GPL/CC licenses of those
  packages), scaled to at most 512 px;
- scikit-learn's two sample photos, china.jpg and flower.jpg (CC BY 2.0, danielbuechele, vultilion).

Run as ``python tools/make_int8_calibration.py`` (needs onnxruntime, onnx and the Debian packages
above). The recipe is ``imgcluster.int8.RECIPE``; the table records it, the exported graph's
signature, and how many images each source gave.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

PER_FASHION_CLASS, PER_DIGIT, PHOTO_PX = 7, 3, 512


def calibration_set(out: Path) -> dict[str, list[Path]]:
    """The calibration images written as PNG under ``out`` (once), by source."""
    from bench_near_duplicates import ensure_wallpapers, originals
    from datasets import ensure_fashion_mnist, read_idx
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    marker = out / ".complete"
    if not marker.exists():
        root = ensure_fashion_mnist()
        images, labels = read_idx(root / "train-images-idx3-ubyte.gz"), read_idx(root / "train-labels-idx1-ubyte.gz")
        _first_per_class(images, labels, PER_FASHION_CLASS, out / "fashion-mnist-train")
        digits = load_digits()
        _first_per_class((digits.images * (255.0 / 16.0)).round().astype(np.uint8), digits.target, PER_DIGIT, out / "digits")
        ensure_wallpapers()
        (out / "wallpapers").mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(originals()):
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((PHOTO_PX, PHOTO_PX))
                im.save(out / "wallpapers" / f"{i:03d}.png")
        (out / "photos").mkdir(parents=True, exist_ok=True)
        for i, photo in enumerate(load_sample_images().images):
            Image.fromarray(photo).save(out / "photos" / f"{i}.png")
        marker.write_text("ok\n")
    return {source.name: sorted(source.glob("*.png")) for source in sorted(p for p in out.iterdir() if p.is_dir())}


def _first_per_class(images: np.ndarray, labels: np.ndarray, per_class: int, out: Path) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    taken: dict[int, int] = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        if taken.get(int(label), 0) < per_class:
            taken[int(label)] = taken.get(int(label), 0) + 1
            Image.fromarray(image).save(out / f"{i:05d}.png")


def pixel_batches(paths: list[Path], backbone: object, batch: int = 8) -> Iterator[np.ndarray]:
    """The images as the model's float32 input, decoded exactly as ``imgcluster embed`` decodes."""
    import torch
    from timm.data import create_transform

    from imgcluster.embedding import ImageDataset, draft_size_for, split_transform
    from imgcluster.listing import ImageFile

    config = backbone.data_config  # type: ignore[attr-defined]
    per_image, to_floats = split_transform(create_transform(**config, is_training=False))
    files = [ImageFile(p.name, p, p.stat().st_size, 0, 0, 0) for p in paths]
    dataset = ImageDataset(files, per_image, draft_size_for(config))
    for start in range(0, len(files), batch):
        items = [dataset[j] for j in range(start, min(start + batch, len(files)))]
        if failed := [(files[i].path, why) for i, tensor, why, _ in items if tensor is None]:
            raise RuntimeError(f"cannot decode calibration image {failed[0][0]}: {failed[0][1]}")
        pixels = torch.stack([tensor for _, tensor, _, _ in items])  # type: ignore[misc]
        yield (to_floats(pixels) if to_floats is not None else pixels).numpy()


def main() -> None:
    from imgcluster.backbones import create_backbone
    from imgcluster.int8 import RECIPE, table_path, write_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--images", type=Path, default=ROOT / "benchmarks" / "data" / "int8-calibration", help="where the set is written")
    args = parser.parse_args()
    sources = calibration_set(args.images)
    paths = [p for group in sources.values() for p in group]
    backbone = create_backbone(args.model)
    out = table_path(args.model)
    write_table(backbone, pixel_batches(paths, backbone), RECIPE, {k: len(v) for k, v in sources.items()}, out)
    print(f"wrote {out} ({json.loads(out.read_text())['images']})")


if __name__ == "__main__":
    main()
