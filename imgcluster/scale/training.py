"""``imgcluster.scale.train_from_store``: a clustering head trained on a feature store's rows.

The head trains on every row up to ``train_sample`` rows (default 2,000,000,
:data:`imgcluster.scale.sample.DEFAULT_TRAIN_SAMPLE`), above that on a seeded uniform sample of
that many (:mod:`imgcluster.scale.sample`); the kNN pairs come from one machine's search up to
``knn_threshold`` rows and from the partitioned Ray search above it (:mod:`imgcluster.scale.knn`),
which searches each row in its ``nprobe`` nearest partitions. Raise ``knn_threshold`` when one
machine (a GPU's exact search) still handles the sample; raise ``nprobe`` for recall, at a cost
growing with it (docs/scale.md, "Neighbours at scale").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster.config import DEFAULT_CLUSTERS, DEFAULT_KNN, DEFAULT_OBJECTIVE, TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.outputs import check_head_name
from imgcluster.preflight import check_clusters_fit, parse_clusters
from imgcluster.progress import ProgressFn, Reporter, check_progress, count
from imgcluster.scale.knn import DEFAULT_NPROBE, RAY_KNN_THRESHOLD
from imgcluster.scale.sample import DEFAULT_TRAIN_SAMPLE
from imgcluster.userpath import expand_home

if TYPE_CHECKING:
    from imgcluster.estimator import ClusterHead
    from imgcluster.featurestore import FeatureStoreMeta
    from imgcluster.scale.tasks import Tasks

__all__ = ["StoreSample", "train_from_store"]

PathLike = str | os.PathLike[str]
HEADS = "_heads"  # a local store's trained heads: <store>/_heads/<objective>-k<K>-seed<S>-<hash>.safetensors


@dataclass
class StoreSample:
    """The rows a head is trained on (all of the store's, or a seeded sample), sorted by path."""

    uri: str
    meta: FeatureStoreMeta
    paths: list[str]
    features: np.ndarray  # [n, dim] float32
    rows: int  # rows in the store
    seed: int
    size: int  # the sample size asked for

    @property
    def whole(self) -> bool:
        return len(self.paths) == self.rows

    def describe(self) -> dict[str, Any]:
        """What a head's or a CSV's description records about the rows it came from."""
        return {"uri": self.uri, "key": self.meta.key, "rows": self.rows, "sample": len(self.paths), "sample_seed": self.seed}


ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None = None) -> None:
    """``local`` or ``ray``, and for ``ray`` the extra installed: one line before any work. A Ray
    ``address`` with the local engine is refused: it was ignored, and a job meant for a cluster ran
    in this process."""
    if engine not in ENGINES:
        raise ParameterError(f"{{engine}} must be local or ray, not {engine!r}")
    if address is not None and engine != "ray":
        raise ParameterError(f"{{address}} {address} applies to {{engine}} ray only; {{engine}} {engine} runs in this process")
    if engine == "ray":
        from imgcluster.scale.engine import import_ray

        import_ray()


@contextlib.contextmanager
def engine_session(engine: str, address: str | None, num_cpus: int | None) -> Iterator[Tasks | None]:
    """With the Ray engine, one Ray session for the whole command (the sample's tasks, the
    partitioned kNN, the assign pass) and the runner of the sample's tasks; else nothing."""
    if engine != "ray":
        yield None
        return
    from imgcluster.scale.engine import ray_session
    from imgcluster.scale.tasks import RayTasks

    with ray_session(address, num_cpus):
        yield RayTasks()


NOTHING_WRITTEN = "nothing was written; the next run starts again from the store"


@contextlib.contextmanager
def said_when_stopped(doing: str, kept: str = NOTHING_WRITTEN) -> Iterator[None]:
    """Ctrl-C or SIGTERM inside (as :class:`imgcluster.signals.Interrupted`, same signal) says what
    was being done and what is kept, instead of the CLI's generic line about the embedding cache."""
    try:
        yield
    except KeyboardInterrupt as exc:
        from imgcluster.signals import Interrupted

        raise Interrupted.wrap(exc, f"interrupted while {doing}: {kept}") from None


def read_sample(
    uri: str, size: int = DEFAULT_TRAIN_SAMPLE, seed: int = 0, progress: ProgressFn | None = None, tasks: Tasks | None = None
) -> StoreSample:
    """The store's rows, or a seeded uniform sample of ``size`` of them, reading the features of
    the sample's rows only (:func:`imgcluster.scale.sample.store_sample`; ``tasks``: in this
    process by default, Ray tasks with :class:`imgcluster.scale.tasks.RayTasks`)."""
    from imgcluster.featurestore import check_finite, read_meta
    from imgcluster.scale.sample import store_sample

    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ParameterError(f"{{train_sample}} must be a whole number of at least 2, got {size!r}")
    meta = read_meta(uri)
    paths, features, rows = store_sample(uri, size, seed, tasks, progress=progress)
    if rows == 0:
        raise ImgclusterError(f"the feature store {uri} holds no rows yet; embed into it first")
    features = features.reshape(len(paths), meta.dim)
    check_finite(uri, paths, features, " in the sample")
    if len(paths) < rows:
        Reporter(progress, "sample").info(
            f"training on a seeded sample of {len(paths)} of the store's {rows} rows ({{train_sample}} {size}, {{seed}} {seed})"
        )
    return StoreSample(uri, meta, paths, features, rows, seed, size)


def head_for_store(
    sample: StoreSample,
    estimator: ClusterHead,
    *,
    knn_threshold: int = RAY_KNN_THRESHOLD,
    nprobe: int = DEFAULT_NPROBE,
    progress: ProgressFn | None = None,
) -> ClusterHead:
    """Fit ``estimator`` on the sample, recording the backbone, the store and the kNN search it came from."""
    from imgcluster.scale.knn import scale_knn

    if len(sample.paths) < 2:
        raise ImgclusterError("need at least two images to cluster")
    k = parse_clusters(estimator.n_clusters)  # the CLI gives it as text ("12"): an isinstance(int) check let that pass
    if k is not None:  # before the kNN and "training ..."
        check_clusters_fit(k, len(sample.paths))
    neighbours = None
    partitioned = len(sample.paths) > knn_threshold
    if partitioned:
        config = estimator.train_config()
        neighbours, _ = scale_knn(sample.features, config.knn, threshold=knn_threshold, nprobe=nprobe, seed=config.seed, progress=progress)
    estimator.fit(sample.features, progress=progress, neighbours=neighbours)
    search = {"knn_threshold": knn_threshold, "nprobe": nprobe, "search": "partitioned" if partitioned else "one machine"}
    estimator.description_ = {
        "backbone": sample.meta.identity,
        "features": sample.describe(),
        "knn_search": search,
        **estimator.description_,
    }
    return estimator


def default_head_path(sample: StoreSample, config: TrainConfig, beside: Path | None = None) -> Path:
    """Where a head trained on the store goes when no ``out`` is given: inside a local store
    (``_heads/``), else beside the CSV ``beside`` (``<stem>-head.safetensors``)."""
    from imgcluster.featurestore import resolve
    from imgcluster.pipeline import head_path_for

    fs, root = resolve(sample.uri)
    if type(fs).__name__ == "LocalFileSystem":
        return Path(root) / HEADS / head_path_for(Path(root), config, sample.paths, sample.features).name
    if beside is not None:
        return beside.with_name(f"{beside.stem}-head.safetensors")
    raise ParameterError(f"a head trained on {sample.uri} needs {{out}}: a local file to save it in")


def train_from_store(
    features: str,
    *,
    out: PathLike | None = None,
    n_clusters: int | str = DEFAULT_CLUSTERS,
    objective: str = DEFAULT_OBJECTIVE,
    k_min: int = 2,
    k_max: int = 20,
    epochs: int | None = None,
    batch_size: int = TrainConfig.batch_size,
    lr: float = TrainConfig.lr,
    knn: int = DEFAULT_KNN,
    seed: int = 0,
    balance: float | None = None,
    self_label: bool = False,
    uco: bool = False,
    objective_options: dict[str, Any] | None = None,
    train_sample: int = DEFAULT_TRAIN_SAMPLE,
    knn_threshold: int = RAY_KNN_THRESHOLD,
    nprobe: int = DEFAULT_NPROBE,
    engine: str = "local",
    address: str | None = None,
    num_cpus: int | None = None,
    device: str = "auto",
    progress: ProgressFn | None = None,
) -> tuple[ClusterHead, Path]:
    """Train a head on the feature store at ``features`` (a path or URI): what ``imgcluster train
    --features`` does. Saved to ``out``, or inside a local store (``_heads/``); returns the head and that path.

    The training parameters are those of :class:`imgcluster.ClusterHead`; ``train_sample``,
    ``knn_threshold`` and ``nprobe`` (partitions searched per row above it) are described in the
    module docstring and recorded in the head's description. ``engine="ray"`` reads the sample's
    buckets as Ray tasks (``address``: a cluster, None: a local instance of ``num_cpus`` cores);
    training itself runs here. ``progress`` receives the events of stages ``sample``, ``knn``,
    ``choose_k`` and ``train``.
    """
    from imgcluster.atomic import check_writable
    from imgcluster.featurestore import read_meta
    from imgcluster.head_config import Training, check_flags
    from imgcluster.scale.knn import check_knn_options

    features, out = expand_home(features), expand_home(out)
    check_progress(progress)
    check_engine(engine, address)
    check_knn_options(knn_threshold, nprobe)
    check_flags(self_label=self_label, uco=uco)
    if out is not None:
        check_head_name(Path(out), "out")  # before the training, not when saving after it
        check_writable(Path(out))
    read_meta(features)  # no store there: said before torch is imported (the head's checks import it), as a missing FOLDER is
    from imgcluster.estimator import checked_head

    estimator = checked_head(Training.of(locals()), device=device, objective_options=objective_options)
    with engine_session(engine, address, num_cpus) as tasks:
        with said_when_stopped("reading the training sample", "no head was written; the next run starts again from the store"):
            sample = read_sample(features, train_sample, seed, progress, tasks)
        with said_when_stopped("training the head", "no head was written (it is written only when trained); the next run trains again"):
            head_for_store(sample, estimator, knn_threshold=knn_threshold, nprobe=nprobe, progress=progress)
    path = Path(out) if out is not None else default_head_path(sample, estimator.train_config_)
    estimator.save(path)
    Reporter(progress, "train").info(f"head saved to {path} (trained on {count(len(sample.paths), 'row')} of {sample.rows})")
    return estimator, path
