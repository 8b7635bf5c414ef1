"""A seeded uniform sample of a feature store's rows, whatever order its files were written in.

A row is kept when the hash of (seed, path) is among the ``size`` smallest (a bottom-k sample:
every subset of ``size`` rows is equally likely for a random hash), so the sample depends on the
seed and the set of paths only, not on how the rows were bucketed, retried or resumed into files.
It is returned sorted by path, so that training on it does not depend on that order either; a
store of at most ``size`` rows is returned whole, in path order, the order in which the
single-machine scan lists a folder, so the same seed trains the same head on the same features.
Memory: the kept rows plus one batch, never the whole store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the functions: the CLI reads the default below before anything heavy loads
    import numpy as np

DEFAULT_TRAIN_SAMPLE = 2_000_000  # rows; why this many: docs/scale.md, "Training on a sample"


def path_keys(paths: list[str], seed: int) -> np.ndarray:
    """A 64-bit pseudo-random key per path, fixed by ``seed``: what the sample orders rows by."""
    import numpy as np

    salt = seed.to_bytes(8, "little", signed=True)
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(p.encode("utf-8", "surrogateescape"), digest_size=8, salt=salt).digest(), "little") for p in paths),
        dtype=np.uint64,
        count=len(paths),
    )


def sample_rows(batches: Iterable[tuple[list[str], np.ndarray]], size: int, seed: int = 0) -> tuple[list[str], np.ndarray, int]:
    """(paths sorted, float32 features, rows seen) of a seeded uniform sample of ``size`` rows of ``batches``."""
    import numpy as np

    if size < 1:
        raise ValueError(f"a sample needs at least one row, got {size}")
    keys = np.zeros(0, np.uint64)
    paths: list[str] = []
    kept: list[np.ndarray] = []
    seen = 0
    for batch_paths, features in batches:
        seen += len(batch_paths)
        keys = np.concatenate([keys, path_keys(list(batch_paths), seed)])
        paths.extend(batch_paths)
        kept.append(np.asarray(features))
        if len(paths) >= 2 * size:  # drop what can no longer be among the smallest keys
            keys, paths, kept = _smallest(keys, paths, np.concatenate(kept), size)
    if not kept:
        return [], np.zeros((0, 0), np.float32), 0
    keys, paths, kept = _smallest(keys, paths, np.concatenate(kept), size)
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return [paths[i] for i in order], kept[0][order].astype(np.float32), seen


def _smallest(keys: np.ndarray, paths: list[str], features: np.ndarray, size: int) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    import numpy as np

    if len(paths) > size:
        pick = np.argpartition(keys, size - 1)[:size]
        keys, paths, features = keys[pick], [paths[i] for i in pick], features[pick]
    return keys, paths, [features]
