"""Decode a batch of files into the model's uint8 pixels, on a CPU worker of the Ray job.

The project's own decoder (:func:`imgcluster.load.load_rgb`: EXIF orientation, transparency,
16-bit and CMYK images, the per-file time limit) and the backbone's own preprocessing up to uint8
(:func:`imgcluster.embedding.split_transform`), exactly as the single-machine path runs them; the
float normalisation runs in the embedding actor. A file that cannot be used gets a reason instead
of pixels and never fails the batch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from imgcluster.embedding import draft_size_for, limit_aspect, split_transform
from imgcluster.load import DecodeTimeout, ImageDecodeError, load_rgb, time_limit
from imgcluster.scale.sources import NO_MTIME, Source

_transforms: dict[str, Callable] = {}  # per worker process: building a transform for every batch would cost more than the batch


def pixel_transform(data_config: dict[str, Any]) -> Callable:
    """The backbone's eval transform up to uint8 pixels (the per-image part of ``split_transform``)."""
    key = json.dumps(data_config, sort_keys=True, default=str)
    if key not in _transforms:
        from timm.data import create_transform

        _transforms[key] = split_transform(create_transform(**data_config, is_training=False))[0]
    return _transforms[key]


def _read(source: Source, path: str, size: int, mtime_ns: int) -> bytes:
    """The file's bytes, checked against the version that was listed: a changed file is not
    embedded under the old version's identity (a rerun picks up the new one)."""
    fs, location = source.locate(path)
    try:
        with fs.open_input_file(location) as handle:
            data = bytes(handle.read())
        after = fs.get_file_info(location) if source.relative else None
    except FileNotFoundError:
        raise ImageDecodeError("file disappeared before it could be read") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc}") from None
    if len(data) != size or (after is not None and mtime_ns != NO_MTIME and after.mtime_ns != mtime_ns):
        raise ImageDecodeError("changed since it was listed; run again to embed it")
    return data


def decode_one(source: Source, path: str, size: int, mtime_ns: int, data_config: dict[str, Any], timeout: float) -> np.ndarray | str:
    """uint8 pixels [3, H, W], or the reason the file cannot be used."""
    try:
        with time_limit(timeout):
            data = _read(source, path, size, mtime_ns)
            image = load_rgb(io.BytesIO(data), draft_size_for(data_config))
            return np.asarray(pixel_transform(data_config)(limit_aspect(image)), dtype=np.uint8)
    except DecodeTimeout:
        return f"decoding took longer than {timeout:g} s (the per-file limit, $IMGCLUSTER_DECODE_TIMEOUT)"
    except ImageDecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image must not stop the job
        return f"cannot preprocess: {type(exc).__name__}: {exc}"


def decode_batch(batch: dict[str, np.ndarray], source: Source, data_config: dict[str, Any], timeout: float) -> dict[str, np.ndarray]:
    """Ray Data's map_batches function: the rows as they came, plus ``pixels`` and ``reason`` ("" when decoded)."""
    n = len(batch["path"])
    _, height, width = data_config["input_size"]
    pixels = np.zeros((n, 3, height, width), np.uint8)
    reasons = []
    for i in range(n):
        got = decode_one(source, str(batch["path"][i]), int(batch["size"][i]), int(batch["mtime_ns"][i]), data_config, timeout)
        if isinstance(got, str):
            reasons.append(got)
        else:
            pixels[i] = got
            reasons.append("")
    return {**batch, "pixels": pixels, "reason": np.array(reasons, dtype=object)}
