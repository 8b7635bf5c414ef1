"""Images drawn light on black, and how the naming classifier is shown them.

ImageNet's photos show clothes, shoes and bags dark or coloured on a light ground; a grey image
whose border is black and whose middle is lighter (an MNIST-style drawing, Fashion-MNIST's
negated product photos, a scan kept as a negative) is the same object in reverse, and the
EfficientNet-Lite0 classifier misreads it: on the 125 ``sample_data`` images it named T-shirts
``pedestal`` and bags ``combination lock``; shown inverted, ``jersey`` and ``cassette player,
mailbag``, and on 200 Fashion-MNIST images per class 4 of 9 nameable classes agree with their
labels instead of 2 (``make bench-names``, ``benchmarks/results_names.md``). So when most of a folder looks like
that, the names come from the classifier's view of those images inverted: the ``PER_CLUSTER``
members nearest each cluster's centre, each shown once (``VIEWS``). 16 typical members named as
well as 32 spread over the cluster did on both benchmark folders, and better on Fashion-MNIST (a
dress ``abaya``, was ``pedestal``); 8 lost ``sample_data``'s bags; and with typical members a
mirrored second view (which dropped wrong runners-up from 32 spread ones) changes no name, so it is
not shown: a quarter of the forward passes of before. That Lite0 pass uses the model the
embedding built when it ran Lite0 in the same call (:mod:`imgcluster.kept`), or, when the embedding
ran Lite0 in ONNX Runtime (``onnx``, ``onnx-int8``), the same ONNX file: such a run never builds
the torch model for its names (:func:`onnx_lite0`). The features it gives
(what the classifier reads: its probabilities, and how alike an image is to a class) are cached by
path, size and mtime beside the folder's own Lite0 features, in a file of each runtime (int8 views
never mix with float ones), so a rerun builds no model. Colour
images, photos on dark grounds (a night sky has a lit border or colour) and light-ground drawings
are never inverted.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from imgcluster.naming import Naming

PER_CLUSTER = 16  # members per cluster the classifier sees when it must see inverted pixels: those nearest its centre
PROBE = 16  # images whose look decides whether the folder is drawn light on black
BORDER_MAX = 0.1  # median brightness (0-1) of the outer sixteenth of a negative: black
LIFT = 0.1  # its middle is at least this much brighter than its border: a light object
GREY = 0.04  # no pixel's channels differ from their mean by more: no colour
LARGE_PIXELS = 4_000_000
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
VIEWS: tuple[str, ...] = ("plain",)  # of VIEW_MAKERS: what assign shows the classifier
CACHE_VERSION = 3  # changes with what a view is or what is cached, so that no stale rows are read (3: features)


def cache_name(views: tuple[str, ...] = VIEWS, runtime: str = "torch") -> str:
    """The cache file of the Lite0 features averaged over ``views``, as ``runtime`` computed them
    (torch's keeps the name it had before there were others)."""
    tag = "" if runtime == "torch" else "-" + runtime.replace("/", "-")
    return f"names-negatives-{CACHE_VERSION}-{'-'.join(views)}{tag}.npz"


CACHE_NAME = cache_name()
FEATURES = 1280  # Lite0's pooled features


@dataclass(frozen=True)
class OnnxLite0:
    """The ONNX file a Lite0 embedding ran (:func:`onnx_lite0`), and what its naming pass needs beside it."""

    runtime: str  # onnx or onnx-int8/<digest>: names the views' cache
    path: Path
    data_config: dict[str, Any]  # the model's own preprocessing, as recorded in the features' identity (as timm takes it)
    feature_dim: int


def onnx_lite0(runtime: str, identity: dict[str, Any]) -> OnnxLite0 | None:
    """The ONNX file that computed features of ``identity`` with ``runtime``, when those are the bundled Lite0's and
    the file is on disk; else None (torch's Lite0 names the clusters, as before).

    Under ``onnx-int8`` the naming pass built and folded a torch Lite0 of its own beside the int8 sessions, 2.9 CPU s
    (under load) for 160 drawings, and its pass peaked at 1,028 MB RSS on sample_data (``benchmarks/results_memory.md``).
    """
    from imgcluster.identity import data_config_of
    from imgcluster.int8 import runtime_file
    from imgcluster.naming import is_naming_backbone

    if runtime == "torch" or not is_naming_backbone(identity):
        return None
    path = runtime_file(identity, runtime)
    if path is None:
        return None
    return OnnxLite0(runtime, path, data_config_of(identity), int(identity["feature_dim"]))


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


# Test-time views of the classifier view, whose class probabilities are averaged. Measured in `make bench-names`:
# on 32 members spread over a cluster a mirrored copy kept every first class and dropped wrong runners-up (T-shirt
# "jersey, abaya" -> "jersey"); on the 16 nearest the centre it changes no name, and is not used since; a blurred
# copy (smoothing the blocks of an enlarged 28 px drawing) and the object centred on a white canvas as in a product
# photo named more boots and bags after hatchets and locks, and are not used; nor (measured later) the drawing padded
# so that the eval crop keeps all of it (sample_data's ankle boots "hatchet"), a second, smaller scale of it (the boots
# "hatchet", the bags "cassette player") or its contrast stretched and darkened (the T-shirts "abaya").
VIEW_MAKERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "plain": lambda image: image,
    "mirrored": ImageOps.mirror,  # a shoe's toe points either way; ImageNet's photos are not all one way round
}


def classifier_views(image: Image.Image, views: tuple[str, ...] = VIEWS) -> list[Image.Image]:
    """The images the classifier is shown for ``image``: each of ``views`` of its :func:`classifier_view`."""
    seen = classifier_view(image)
    return [VIEW_MAKERS[view](seen) for view in views]


def sample_rows(clusters: np.ndarray, per_cluster: int = PER_CLUSTER, features: np.ndarray | None = None) -> np.ndarray:
    """Up to ``per_cluster`` rows of each cluster (deterministic): with ``features``, the members nearest
    the cluster's centre (:func:`imgcluster.outliers.centre_distances`: its typical members, not the odd
    ones), else evenly spread over its members in row order."""
    picked: list[np.ndarray] = []
    distance = None
    if features is not None:
        from imgcluster.outliers import centre_distances

        distance = centre_distances(features, clusters)[0]
    for k in np.unique(clusters):
        members = np.flatnonzero(clusters == k)
        if len(members) > per_cluster:
            if distance is None:
                members = members[np.linspace(0, len(members) - 1, per_cluster).round().astype(int)]
            else:
                members = members[np.argsort(distance[members], kind="stable")[:per_cluster]]
        picked.append(members)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def drawing_names(
    root: Path,
    paths: Sequence[str],
    clusters: np.ndarray,
    cache_dir: Path | None,
    before: Callable[[int], None] | None = None,
    features: np.ndarray | None = None,
    onnx: OnnxLite0 | None = None,
) -> Naming | None:
    """Each cluster's :class:`imgcluster.naming.Naming` from the classifier's views of the chosen members (files ``root / paths[row]``)
    when the folder is drawn light on black; None for any other folder. ``before`` hears how many
    images are about to be shown; ``features`` (one row per path) choose each cluster's typical members
    (:func:`sample_rows`); ``onnx`` runs the views in the ONNX file the embedding ran (:func:`onnx_lite0`).
    The one naming pass of a folder's and a feature store's ``assign``."""
    from imgcluster.naming import name_clusters

    rows = sample_rows(clusters, features=features)
    files = [root / paths[i] for i in rows]
    if not mostly_negative(files):
        return None
    if before is not None:
        before(len(rows))
    return name_clusters(view_features(files, cache_dir, onnx=onnx), clusters[rows])


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


def view_features(
    files: list[Path], cache_dir: Path | None, views: tuple[str, ...] = VIEWS, onnx: OnnxLite0 | None = None
) -> np.ndarray:
    """Lite0's pooled features of each file, averaged over its :func:`classifier_views`, [n, 1280]: what the naming
    classifier reads (:mod:`imgcluster.naming`), both its class probabilities and how alike the images are to a class.
    Computed by ``onnx`` when given, else by torch's Lite0.

    Cached in ``cache_dir`` by path, size and mtime, in a file of each runtime (a file that cannot be written is no
    error: the names are made again next time). A file that cannot be read gets the row of zeros.
    """
    keys = []
    for path in files:
        try:
            keys.append(_key(path))
        except OSError:
            keys.append("")
    name = cache_name(views, onnx.runtime if onnx is not None else "torch")
    cached = _read(cache_dir / name) if cache_dir is not None else {}
    missing = [i for i, key in enumerate(keys) if key and key not in cached]
    if missing:
        fresh = _lite0_features([files[i] for i in missing], views, onnx=onnx).astype(np.float16).astype(np.float32)  # as cached
        for row, i in enumerate(missing):
            cached[keys[i]] = fresh[row]
        if cache_dir is not None:
            _write(cache_dir / name, {key: cached[key] for key in keys if key})
    width = next(iter(cached.values())).shape[0] if cached else FEATURES
    return np.stack([cached.get(key, np.zeros(width, np.float32)) for key in keys]).astype(np.float32)


def _lite0() -> tuple[Any, Any, int, tuple[int, ...]]:
    """The bundled Lite0 (features only; :mod:`imgcluster.naming` holds its classifier) as the embedding
    runs it (batch norm folded, channels-last) and its eval transform: the embedding's own model when
    it ran Lite0 in the same call (:mod:`imgcluster.kept`), else built."""
    import torch
    from timm.data import create_transform

    from imgcluster.kept import by_name
    from imgcluster.naming import NAMING_MODEL

    lite0 = by_name(NAMING_MODEL, torch.device("cpu"))
    transform = create_transform(**lite0.data_config, is_training=False)
    return lite0.model, transform, lite0.feature_dim, tuple(lite0.data_config["input_size"])


def _onnx_model(onnx: OnnxLite0) -> tuple[Callable[[Any], np.ndarray], Any]:
    """``onnx``'s file in one ONNX Runtime session on torch's threads, and its eval transform (from the recorded
    data config, so the pixels are the embedding's)."""
    import torch
    from timm.data import create_transform

    from imgcluster.onnxruntime_backend import run, session

    model = session(onnx.path, torch.get_num_threads())
    return (lambda pixels: run(model, pixels.numpy())), create_transform(**onnx.data_config, is_training=False)


def _lite0_features(files: list[Path], views: tuple[str, ...], batch: int | None = None, onnx: OnnxLite0 | None = None) -> np.ndarray:
    """Each file's features averaged over its views (zeros for a file that cannot be read).

    In the embedding's batches (``embedding.default_batch_size`` tensors, so ``batch // len(views)``
    files a pass) and with its memory settings: this pass runs after training, when the process
    holds the most, and batches of 64 with glibc's defaults made it the run's peak (2.1 GB RSS on
    sample_data, ``benchmarks/results_memory.md``).
    """
    import torch

    from imgcluster.embedding import default_batch_size
    from imgcluster.load import ImageDecodeError, load_rgb
    from imgcluster.speed import reuse_freed_memory

    features_of: Callable[[torch.Tensor], np.ndarray]
    if onnx is None:
        model, transform, width, input_size = _lite0()

        def in_torch(pixels: torch.Tensor) -> np.ndarray:
            return np.asarray(model(pixels.contiguous(memory_format=torch.channels_last)).float().numpy())

        features_of = in_torch
    else:
        features_of, transform = _onnx_model(onnx)
        width, input_size = onnx.feature_dim, tuple(onnx.data_config["input_size"])
    batch = batch or default_batch_size(torch.device("cpu"), input_size=input_size)
    out = np.zeros((len(files), width), np.float32)
    step = max(1, batch // len(views))
    with reuse_freed_memory(), torch.inference_mode():
        for start in range(0, len(files), step):
            tensors, rows = [], []
            for i in range(start, min(start + step, len(files))):
                try:
                    tensors += [transform(view) for view in classifier_views(load_rgb(files[i]), views)]
                    rows.append(i)
                except ImageDecodeError:
                    continue
            if tensors:
                features = features_of(torch.stack(tensors))
                out[rows] = features.reshape(len(rows), len(views), -1).mean(axis=1)
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    """The cached features; anything unreadable or malformed is treated as no cache."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, features = data["keys"], data["features"]
        if keys.ndim != 1 or features.ndim != 2 or len(keys) != len(features) or not np.isfinite(features).all():
            return {}
        return {str(key): row.astype(np.float32) for key, row in zip(keys, features)}
    except (OSError, ValueError, KeyError, EOFError):
        return {}


def _write(path: Path, rows: dict[str, np.ndarray]) -> None:
    from imgcluster.atomic import atomic_write_bytes
    from imgcluster.errors import ImgclusterError

    buffer = io.BytesIO()
    np.savez(buffer, keys=np.array(list(rows), dtype=str), features=np.stack(list(rows.values())).astype(np.float16))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, ImgclusterError):  # the atomic writer reports a full or read-only disk as ImgclusterError
        pass  # a read-only or full cache: the names are made again next time
