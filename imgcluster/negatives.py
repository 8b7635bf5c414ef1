"""Images drawn light on black, and how the naming classifier is shown them.

ImageNet's photos show clothes, shoes and bags dark or coloured on a light ground; a grey image
whose border is black and whose middle is lighter (an MNIST-style drawing, Fashion-MNIST's
negated product photos, a scan kept as a negative) is the same object in reverse, and the
EfficientNet-Lite0 classifier misreads it: on the 125 ``sample_data`` images it named T-shirts
``pedestal`` and bags ``combination lock``; shown inverted, ``jersey`` and ``cassette player,
mailbag``, and on 200 Fashion-MNIST images per class 4 of 9 nameable classes agree with their
labels instead of 2 (``make bench-names``, ``benchmarks/results_names.md``). So when most of a folder looks like
that, the names come from the classifier's view of those images inverted, a sample of up to
``PER_CLUSTER`` members per cluster (a mean over 32 is stable). That takes one Lite0 pass over
the sample; its class probabilities are cached by path, size and mtime beside the Lite0
features, so a rerun builds no model. Colour images, photos on dark grounds (a night sky has a
lit border or colour) and light-ground drawings are never inverted.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

PER_CLUSTER = 32  # images per cluster the classifier sees when it must see inverted pixels
PROBE = 16  # images whose look decides whether the folder is drawn light on black
BORDER_MAX = 0.1  # median brightness (0-1) of the outer sixteenth of a negative: black
LIFT = 0.1  # its middle is at least this much brighter than its border: a light object
GREY = 0.04  # no pixel's channels differ from their mean by more: no colour
LARGE_PIXELS = 4_000_000
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
CACHE_NAME = "names-negatives-1.npz"  # the number changes with the view (what is inverted, and how), so no stale rows are read


def is_negative(image: Image.Image) -> bool:
    """Whether ``image`` is a light, colourless object on a black ground (judged on a 32 px copy)."""
    pixels = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    if float(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max()) > GREY:
        return False
    grey = pixels.mean(axis=2)
    ring = np.ones_like(grey, dtype=bool)
    ring[2:-2, 2:-2] = False
    ground = float(np.median(grey[ring]))  # the median: an object may touch the edges (a sleeve, a shoe's toe)
    return ground <= BORDER_MAX and float(grey[8:-8, 8:-8].mean()) >= ground + LIFT


def classifier_view(image: Image.Image) -> Image.Image:
    """``image`` as ImageNet photos show such things: inverted when it is a negative."""
    return ImageOps.invert(image.convert("RGB")) if is_negative(image) else image


def sample_rows(clusters: np.ndarray, per_cluster: int = PER_CLUSTER) -> np.ndarray:
    """Up to ``per_cluster`` rows of each cluster, evenly spread over its members in row order (deterministic)."""
    picked: list[np.ndarray] = []
    for k in np.unique(clusters):
        members = np.flatnonzero(clusters == k)
        if len(members) > per_cluster:
            members = members[np.linspace(0, len(members) - 1, per_cluster).round().astype(int)]
        picked.append(members)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def mostly_negative(files: list[Path], probe: int = PROBE) -> bool:
    """Whether at least half of ``probe`` files spread over ``files`` are negatives (unreadable ones count as not)."""
    from imgcluster.load import ImageDecodeError, load_rgb

    if not files:
        return False
    chosen = [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(probe, len(files))).round().astype(int))]
    negatives = 0
    for path in chosen:
        if _large_colour_photo(path):
            continue
        try:
            negatives += is_negative(load_rgb(path, draft_size=64))
        except ImageDecodeError:
            pass
    return 2 * negatives >= len(chosen)


def _large_colour_photo(path: Path) -> bool:
    """A file that is not worth decoding to look at: over ``LARGE_PIXELS``, stored in colour and not a JPEG (which
    decodes at 1/8 size cheaply). A 5640 px PNG wallpaper takes about a second to decode and is no negative."""
    try:
        with Image.open(path) as image:
            return image.format != "JPEG" and image.mode not in GREY_MODES and image.width * image.height > LARGE_PIXELS
    except Exception:  # noqa: BLE001 - unreadable: load_rgb says so, and it counts as no negative
        return False


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"


def view_probabilities(files: list[Path], cache_dir: Path | None) -> np.ndarray:
    """The Lite0 classifier's class probabilities for each file's :func:`classifier_view`, [n, 1000].

    Cached in ``cache_dir`` by path, size and mtime (a file that cannot be written is no error:
    the names are made again next time). A file that cannot be read gets the row of zeros.
    """
    from imgcluster.naming import class_probabilities

    keys = []
    for path in files:
        try:
            keys.append(_key(path))
        except OSError:
            keys.append("")
    cached = _read(cache_dir / CACHE_NAME) if cache_dir is not None else {}
    missing = [i for i, key in enumerate(keys) if key and key not in cached]
    if missing:
        features = _lite0_features([files[i] for i in missing])
        fresh = class_probabilities(features).astype(np.float16).astype(np.float32)  # as cached: a rerun gives the same names
        fresh[~features.any(axis=1)] = 0.0  # a file that could not be read: no row
        for row, i in enumerate(missing):
            cached[keys[i]] = fresh[row]
        if cache_dir is not None:
            _write(cache_dir / CACHE_NAME, {key: cached[key] for key in keys if key})
    width = next(iter(cached.values())).shape[0] if cached else 1000
    return np.stack([cached.get(key, np.zeros(width, np.float32)) for key in keys]).astype(np.float32)


@lru_cache(maxsize=1)
def _lite0() -> tuple[Any, Any, int]:
    """The bundled Lite0 (features only; :mod:`imgcluster.naming` holds its classifier) and its eval
    transform, built once and prepared as the embed loop runs it (batch norm folded, channels-last)."""
    import torch
    from timm.data import create_transform

    from imgcluster.backbones import create_backbone
    from imgcluster.embedding import prepare_model
    from imgcluster.naming import NAMING_MODEL

    backbone = create_backbone(NAMING_MODEL)
    model = prepare_model(backbone, torch.device("cpu"))
    return model, create_transform(**backbone.data_config, is_training=False), backbone.feature_dim


def _lite0_features(files: list[Path], batch: int | None = None) -> np.ndarray:
    """Pooled Lite0 features of each file's classifier view (zeros for a file that cannot be read).

    Run as the embed loop runs the model on the CPU (``embedding.forward``: its batch size, freed
    memory reused): batches of 64 in fresh memory page-faulted 7.8 million times for 320
    Fashion-MNIST images, 17 of 24 CPU seconds in the kernel (``benchmarks/results_peers.md``).
    """
    import torch

    from imgcluster.embedding import default_batch_size, forward
    from imgcluster.load import ImageDecodeError, load_rgb
    from imgcluster.speed import reuse_freed_memory

    cpu = torch.device("cpu")
    batch = batch or default_batch_size(cpu)
    model, transform, width = _lite0()
    out = np.zeros((len(files), width), np.float32)
    with reuse_freed_memory(), torch.inference_mode():
        for start in range(0, len(files), batch):
            tensors, rows = [], []
            for i in range(start, min(start + batch, len(files))):
                try:
                    tensors.append(transform(classifier_view(load_rgb(files[i]))))
                    rows.append(i)
                except ImageDecodeError:
                    continue
            if tensors:
                out[rows] = forward(model, torch.stack(tensors), None, batch, cpu, bf16=False)
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    """The cached probabilities; anything unreadable or malformed is treated as no cache."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, probabilities = data["keys"], data["probabilities"]
        if keys.ndim != 1 or probabilities.ndim != 2 or len(keys) != len(probabilities) or not np.isfinite(probabilities).all():
            return {}
        return {str(key): row.astype(np.float32) for key, row in zip(keys, probabilities)}
    except (OSError, ValueError, KeyError, EOFError):
        return {}


def _write(path: Path, rows: dict[str, np.ndarray]) -> None:
    from imgcluster.atomic import atomic_write_bytes
    from imgcluster.errors import ImgclusterError

    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(list(rows), dtype=str), probabilities=np.stack(list(rows.values())).astype(np.float16))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, ImgclusterError):  # the atomic writer reports a full or read-only disk as ImgclusterError
        pass  # a read-only or full cache: the names are made again next time
