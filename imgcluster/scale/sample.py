"""A seeded uniform sample of a feature store's rows, whatever order its files were written in.

A row is kept when the hash of (seed, path) is among the ``size`` smallest (a bottom-k sample:
every subset of ``size`` rows is equally likely for a random hash), so the sample depends on the
seed and the set of paths only, not on how the rows were bucketed, retried or resumed into files.
It is returned sorted by path, so that training on it does not depend on that order either; a
store of at most ``size`` rows is returned whole, in path order, the order in which the
single-machine scan lists a folder, so the same seed trains the same head on the same features.
Memory: the kept rows plus one batch, never the whole store.

:func:`store_sample` draws the same sample from a store without reading every feature: the
store's row count comes from the parquet footers, a cut-off on the key is set so that about
``size x (1 + MARGIN)`` rows fall below it, and every bucket is read by one job (a Ray task with
:class:`imgcluster.scale.tasks.RayTasks`) that reads the paths, keeps the rows whose key is below
the cut-off and reads only their features; the driver takes the ``size`` smallest keys of what
comes back. Every row below the cut-off comes back, so those are the bottom-k sample's rows
exactly; when the margin leaves fewer than ``size`` (copies of a path counted twice in the
footers, or chance), a further pass with a higher cut-off follows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the functions: the CLI reads the default below before anything heavy loads
    import numpy as np

    from imgcluster.progress import ProgressFn
    from imgcluster.scale.tasks import Tasks

DEFAULT_TRAIN_SAMPLE = 2_000_000  # rows; why this many: docs/scale.md, "Training on a sample"
# Candidates aimed for beyond the sample: size x (1 + MARGIN) + SPREAD x sqrt(size). The count
# below a cut-off is binomial (sd about sqrt(size)): 6 sd make a second pass rare for any size,
# and 5 % more covers a store with some paths written twice (counted twice in the footers).
MARGIN = 0.05
SPREAD = 6.0
KEY_SPACE = 1 << 64  # path_keys are uniform 64-bit integers


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


@dataclass
class Candidates:
    """What one bucket's job returns: its distinct rows and those below the cut-off."""

    rows: int
    keys: np.ndarray  # uint64
    paths: list[str]
    features: np.ndarray  # float16 [n, dim]
    problems: list[str]

    def owned(self) -> Candidates:
        """With arrays of its own: a Ray result's arrays are views that pin its object in the object
        store (1 GiB on a local instance), which would then have to hold every bucket's candidates."""
        import numpy as np

        return Candidates(self.rows, np.array(self.keys), self.paths, np.array(self.features), self.problems)


def key_cutoff(rows: int, size: int, margin: float = MARGIN) -> int | None:
    """The key below which about ``size (1 + margin)`` of ``rows`` fall; None: every row is needed."""
    target = size * (1 + margin) + SPREAD * math.sqrt(size)
    return None if target >= rows else int(KEY_SPACE * (target / rows))


def raise_cutoff(cutoff: int, size: int, found: int) -> int | None:
    """A higher cut-off after a pass found only ``found`` < ``size`` rows below ``cutoff``: the
    density seen, scaled to twice what is missing, at least double; None: every row."""
    factor = max(2.0, 2.0 * size / max(found, 1))
    return None if cutoff * factor >= KEY_SPACE else int(cutoff * factor)


def bucket_candidates(uri: str, folder: str, dim: int, seed: int, cutoff: int | None) -> Candidates:
    """One bucket's rows whose key is below ``cutoff`` (all of them for None): one job of :func:`store_sample`."""
    import numpy as np

    from imgcluster.featurestore import select_bucket_rows

    problems: list[str] = []

    def below(paths: list[str]) -> np.ndarray:
        return np.ones(len(paths), bool) if cutoff is None else path_keys(paths, seed) < np.uint64(cutoff)

    rows, paths, features = select_bucket_rows(uri, folder, dim, below, problems.append)
    return Candidates(rows, path_keys(paths, seed), paths, features, problems)


def footer_count(uri: str, folder: str) -> tuple[int, list[str]]:
    """One bucket's rows by its files' footers (and the files that could not be read): a job of :func:`store_sample`."""
    from imgcluster.featurestore import footer_rows

    problems: list[str] = []
    return footer_rows(uri, folder, problems.append), problems


def store_sample(
    uri: str, size: int, seed: int = 0, tasks: Tasks | None = None, *, margin: float = MARGIN, progress: ProgressFn | None = None
) -> tuple[list[str], np.ndarray, int]:
    """:func:`sample_rows` over the store at ``uri`` (the same rows), reading the features of about
    ``size (1 + margin)`` rows instead of all; see the module docstring. ``tasks`` runs the
    buckets' jobs (default: in this process). Files that cannot be read are reported as warnings."""
    from imgcluster.featurestore import bucket_folders, read_meta
    from imgcluster.progress import Reporter
    from imgcluster.scale.tasks import local_tasks

    if size < 1:
        raise ValueError(f"a sample needs at least one row, got {size}")
    runner = tasks or local_tasks
    report = Reporter(progress, "sample")
    dim = read_meta(uri).dim
    folders = bucket_folders(uri)
    footers = list(runner.map(footer_count, [(uri, f) for f in folders]))
    cutoff = key_cutoff(sum(n for n, _ in footers), size, margin)
    while True:
        share = "every row" if cutoff is None else f"rows whose key is below {cutoff / KEY_SPACE:.3g} of the key range"
        report.start(len(folders), f"reading the paths of {len(folders)} buckets ({runner.where}), keeping {share}")
        found: list[Candidates] = []
        for candidates in runner.map(bucket_candidates, [(uri, f, dim, seed, cutoff) for f in folders]):
            found.append(candidates.owned())
            report.advance(1)
        kept = sum(len(c.paths) for c in found)
        if kept >= size or cutoff is None:
            break
        report.info(f"{kept} rows fell below the cut-off, fewer than the {size} wanted: reading the paths again with a higher one")
        cutoff = raise_cutoff(cutoff, size, kept)
    for problem in dict.fromkeys([p for _, ps in footers for p in ps] + [p for c in found for p in c.problems]):
        report.warning(f"feature file ignored: {problem}")
    paths, features = _bottom(found, size, dim)
    return paths, features, sum(c.rows for c in found)


def _bottom(found: list[Candidates], size: int, dim: int) -> tuple[list[str], np.ndarray]:
    """The ``size`` smallest keys of the candidates, sorted by path, as float32, gathered bucket
    by bucket into one array (no second copy of the candidates' features)."""
    import numpy as np

    keys = np.concatenate([c.keys for c in found]) if found else np.zeros(0, np.uint64)
    owner = np.concatenate([np.full(len(c.paths), i, np.int64) for i, c in enumerate(found)]) if found else np.zeros(0, np.int64)
    row = np.concatenate([np.arange(len(c.paths)) for c in found]) if found else np.zeros(0, np.int64)
    pick = np.argpartition(keys, size - 1)[:size] if len(keys) > size else np.arange(len(keys))
    chosen = np.array(sorted(pick.tolist(), key=lambda i: found[owner[i]].paths[row[i]]), dtype=np.int64)
    owners, rows = owner[chosen], row[chosen]
    out = np.empty((len(chosen), dim), np.float32)
    for i, candidates in enumerate(found):
        at = np.flatnonzero(owners == i)
        if at.size:
            out[at] = candidates.features[rows[at]]
    return [found[o].paths[r] for o, r in zip(owners.tolist(), rows.tolist())], out
