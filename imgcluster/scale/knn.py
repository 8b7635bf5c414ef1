"""Nearest neighbours beyond one machine's search: IVF-partitioned exact kNN, as Ray tasks.

Up to ``threshold`` rows (default 20M) :func:`imgcluster.neighbours.knn_search` answers: on one
GPU it does 1M x 384 exactly in 34 s (benchmarks/results_speed_gpu.md), and its own IVF index
keeps the CPU near-linear. Above, the search is split the way FAISS's ``big_batch_search``
splits it (``faiss.contrib.big_batch_search``): spherical k-means on a seeded sample
(:func:`imgcluster.kmeans.spherical_kmeans`, the project's one k-means) gives ``P`` centroids;
every row goes to its nearest centroid's partition; every query is searched *exactly*
(``faiss.IndexFlatIP``) within the partitions of its ``nprobe`` nearest centroids; one task per
partition, so a task holds one partition and the queries that probe it, never all N rows; the
driver merges each query's top-k as the tasks finish. With ``nprobe = P`` every partition is
searched and the answer is the brute-force one (tested); with fewer, a neighbour across a
partition boundary can be missed (recall measured in the tests and by ``make bench-ray``).

Limits: the driver holds the unit features (N x d float32) and the running top-k (N x (k+1)).
On Ray the unit features go into the object store once (``ray.put``), the driver keeps only the
store's zero-copy view of them, and each task gets its partition's row ids and its queries' row
ids and gathers the rows itself from that one shared object (:class:`imgcluster.scale.tasks.RayTasks`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcluster.errors import ParameterError
from imgcluster.neighbours import _exact_rows, knn_search, l2_normalise, load_faiss
from imgcluster.progress import ProgressFn, Reporter
from imgcluster.scale.limits import DEFAULT_NPROBE, RAY_KNN_THRESHOLD
from imgcluster.scale.tasks import RayTasks, Tasks, local_tasks

PARTITION_ROWS = 20_000  # rows per partition on average: P = ceil(N / PARTITION_ROWS)
TRAIN_PER_PARTITION = 40  # sample rows per centroid for the partitioning k-means (as neighbours.IVF_TRAIN_PER_LIST)
KMEANS_ITERATIONS = 10  # a rough fit is enough: the search inside the probed partitions is exact
NORMALISE_ROWS = 65_536  # rows a reference normalises at once, in place of a second whole copy


def check_knn_options(knn_threshold: object, nprobe: object) -> None:
    """Both whole numbers of at least 1: before a store is read or a head trained."""
    for name, value in (("knn_threshold", knn_threshold), ("nprobe", nprobe)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{{{name}}} must be a whole number of at least 1, got {value!r}")


@dataclass
class Partitions:
    """Unit centroids ``[P, d]`` and every row's partition ``[N]``."""

    centroids: np.ndarray
    labels: np.ndarray

    def members(self) -> list[np.ndarray]:
        """Row indices of each partition (ascending)."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(len(self.centroids) + 1))
        return [order[bounds[p] : bounds[p + 1]] for p in range(len(self.centroids))]


def partition(x: np.ndarray, n_partitions: int, seed: int = 0) -> Partitions:
    """Split unit rows ``x`` by spherical k-means fitted on ``TRAIN_PER_PARTITION`` seeded sample rows per partition.

    ``x`` is only read (on Ray it is the object store's read-only copy): the k-means gets its own
    copy of the sample rows only, and every row is then labelled block by block.
    """
    import torch

    from imgcluster.kmeans import assign, spherical_kmeans

    n = x.shape[0]
    n_partitions = max(1, min(n_partitions, n))
    generator = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # it is never written
        z = torch.from_numpy(x)
    train_rows = n_partitions * TRAIN_PER_PARTITION
    # The sample spherical_kmeans(max_points=train_rows) would draw, drawn here so that it does not copy all of z first.
    sample = z[torch.randperm(n, generator=generator)[:train_rows]] if n > train_rows else z
    fit = spherical_kmeans(sample, n_partitions, generator, iters=KMEANS_ITERATIONS, centre=False)
    centroids = fit.best.centroids  # uncentred: the search is by inner product on unit rows, and these live in that space
    labels, _ = assign(z, centroids)
    return Partitions(centroids.numpy().astype(np.float32), labels.numpy().astype(np.int64))


def probes(x: np.ndarray, centroids: np.ndarray, nprobe: int, block: int = 65_536) -> np.ndarray:
    """Each row's ``nprobe`` most similar centroids ``[N, nprobe]``, computed in blocks of rows."""
    nprobe = min(nprobe, len(centroids))
    out = np.empty((x.shape[0], nprobe), dtype=np.int64)
    for start in range(0, x.shape[0], block):
        s = x[start : start + block] @ centroids.T
        out[start : start + block] = np.argpartition(-s, nprobe - 1, axis=1)[:, :nprobe] if nprobe < s.shape[1] else np.arange(s.shape[1])
    return out


def queries_by_partition(probe: np.ndarray, n_partitions: int) -> list[np.ndarray]:
    """Per partition, the rows (ascending) that list it among their ``probe`` [N, nprobe]."""
    flat = probe.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(n_partitions + 1))
    return [order[bounds[p] : bounds[p + 1]] // probe.shape[1] for p in range(n_partitions)]


def search_partition(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, query_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries`` among one partition's ``vectors`` (global ``ids``): (query_ids, sims, global ids), -1 padded."""
    faiss = load_faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    sims, local = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    found = np.where(local >= 0, ids[np.maximum(local, 0)], -1)
    return query_ids, sims, found


class TopK:
    """The running best ``k`` (similarity, id) of every query, merged as partition results arrive."""

    def __init__(self, n: int, k: int) -> None:
        self.sims = np.full((n, k), -np.inf, dtype=np.float32)
        self.ids = np.full((n, k), -1, dtype=np.int64)

    def merge(self, query_ids: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> None:
        k = self.sims.shape[1]
        sims = np.where(ids >= 0, sims, -np.inf).astype(np.float32)
        all_sims = np.concatenate([self.sims[query_ids], sims], axis=1)
        all_ids = np.concatenate([self.ids[query_ids], ids], axis=1)
        # Best first; equal similarities by the smaller id, so the result does not depend on arrival order.
        order = _best_first(all_sims, all_ids)[:, :k]
        self.sims[query_ids] = np.take_along_axis(all_sims, order, 1)
        self.ids[query_ids] = np.take_along_axis(all_ids, order, 1)


def _best_first(sims: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, column order by similarity descending, then id ascending (-1 padding last)."""
    key_ids = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    by_id = np.argsort(key_ids, axis=1, kind="stable")
    by_sim = np.argsort(-np.take_along_axis(sims, by_id, 1), axis=1, kind="stable")
    return np.take_along_axis(by_id, by_sim, 1)


def search_shared(x: np.ndarray, ids: np.ndarray, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One partition's job: its rows ``ids`` and its queries ``query_ids`` gathered from the shared unit features ``x``."""
    return search_partition(x[ids], ids, x[query_ids], query_ids, k)


def partitioned_knn(
    features: np.ndarray,
    k: int,
    *,
    n_partitions: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
    tasks: Tasks = local_tasks,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every row, self excluded: (indices [N,k], similarities [N,k]), as
    :func:`imgcluster.neighbours.knn_search` returns them; see the module docstring. ``tasks``
    runs the partitions' searches (here by default; :class:`imgcluster.scale.tasks.RayTasks`)."""
    # The unit rows go to the runner's shared copy at once (on Ray: the object store's; the driver's own is freed),
    # before the partitioning, which would otherwise hold them beside the caller's features at its peak.
    shared, x = tasks.share(l2_normalise(features))
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two images to find neighbours")
    k = min(k, n - 1)
    p = n_partitions or math.ceil(n / PARTITION_ROWS)
    report = Reporter(progress, "knn")
    report.info(f"partitioning {n} images into {p} partitions (k-means on a sample), then searching each in its {min(nprobe, p)} nearest")
    parts = partition(x, p, seed)
    members = parts.members()
    queries = queries_by_partition(probes(x, parts.centroids, nprobe), len(members))

    def jobs() -> Iterator[tuple[Any, ...]]:
        for ids, query_ids in zip(members, queries):
            if ids.size and query_ids.size:
                yield shared, ids, query_ids, min(k + 1, ids.size)

    top = TopK(n, k + 1)
    busy = [m for m in members if m.size]
    report.start(len(busy), "searching partitions")
    for query_ids, sims, ids in tasks.map(search_shared, jobs()):
        top.merge(query_ids, sims, ids)
        report.advance(1)
    return _without_self(x, top.ids, top.sims, k)


@dataclass
class Reference:
    """Rows that other rows are searched against: unit features split into partitions
    (:func:`partition`; one partition, an exact search, up to ``PARTITION_ROWS`` rows), stored
    partition by partition so that a search reads each probed partition in place, whatever the
    number of queries (a streaming pass asks for a few rows at a time)."""

    x: np.ndarray  # [n, d] unit rows, partition after partition
    ids: np.ndarray  # [n] the row each of them was
    bounds: np.ndarray  # [P + 1]: partition p is x[bounds[p]:bounds[p + 1]]
    centroids: np.ndarray  # [P, d]
    nprobe: int

    @classmethod
    def build(cls, features: np.ndarray, nprobe: int = DEFAULT_NPROBE, seed: int = 0, n_partitions: int | None = None) -> Reference:
        """From ``features`` (normalised here): besides them, one unit copy at a time (the partitioning's,
        then the reordered one it keeps) and blocks of NORMALISE_ROWS."""
        unit = l2_normalise(features)
        parts = partition(unit, n_partitions or math.ceil(unit.shape[0] / PARTITION_ROWS), seed)
        del unit
        order = np.argsort(parts.labels, kind="stable")
        bounds = np.searchsorted(parts.labels[order], np.arange(len(parts.centroids) + 1))
        x = np.asarray(features, dtype=np.float32)[order]
        for start in range(0, x.shape[0], NORMALISE_ROWS):
            x[start : start + NORMALISE_ROWS] = l2_normalise(x[start : start + NORMALISE_ROWS])
        return cls(x, order, bounds, parts.centroids, nprobe)

    def partition_rows(self, p: int) -> np.ndarray:
        """The rows (as given to :meth:`build`) of partition ``p``."""
        return self.ids[self.bounds[p] : self.bounds[p + 1]]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` reference rows of each unit query row (not itself a reference row): (rows, similarities),
        exact within the query's ``nprobe`` nearest partitions, as :func:`partitioned_knn` searches; a row
        whose probed partitions hold fewer than ``k`` rows is searched exactly."""
        faiss = load_faiss()
        k = min(k, self.x.shape[0])
        q = np.ascontiguousarray(queries, dtype=np.float32)
        top = TopK(q.shape[0], k)
        by_partition = queries_by_partition(probes(q, self.centroids, self.nprobe), len(self.centroids))
        for p, query_ids in enumerate(by_partition):
            lo, hi = int(self.bounds[p]), int(self.bounds[p + 1])
            if hi > lo and query_ids.size:
                sims, local = faiss.knn(q[query_ids], self.x[lo:hi], min(k, hi - lo), metric=faiss.METRIC_INNER_PRODUCT)
                top.merge(query_ids, sims, np.where(local >= 0, self.ids[lo + np.maximum(local, 0)], -1))
        short = np.flatnonzero((top.ids < 0).any(axis=1))
        if short.size:
            top.ids[short], top.sims[short] = -1, -np.inf  # searched again from nothing: no row counted twice
            sims, local = faiss.knn(q[short], self.x, k, metric=faiss.METRIC_INNER_PRODUCT)
            top.merge(short, sims, self.ids[local])
        return top.ids, top.sims


def _without_self(x: np.ndarray, ids: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop each row itself (by index, as neighbours.py does); rows left short are searched exactly."""
    n = ids.shape[0]
    keep = ids != np.arange(n)[:, None]
    keep[keep.sum(1) > k, k] = False
    indices = ids[keep].reshape(n, k)
    similarities = sims[keep].reshape(n, k)
    short = np.flatnonzero((indices < 0).any(axis=1))  # probed partitions held fewer than k other rows
    if short.size:
        indices[short], similarities[short] = _exact_rows(x, short, k)
    return indices, similarities


def scale_knn(
    features: np.ndarray,
    k: int,
    *,
    threshold: int = RAY_KNN_THRESHOLD,
    use_gpu: bool = False,
    seed: int = 0,
    n_partitions: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """kNN for any N: one machine's search up to ``threshold`` rows, the partitioned search as Ray
    tasks above it (Ray must be initialised: :func:`imgcluster.scale.engine.ray_session`)."""
    if features.shape[0] <= threshold:
        return knn_search(features, k, use_gpu=use_gpu, seed=seed)
    return partitioned_knn(features, k, n_partitions=n_partitions, nprobe=nprobe, seed=seed, tasks=RayTasks(), progress=progress)
