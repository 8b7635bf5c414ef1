"""Training a head on a feature array: what :meth:`ClusterHead.fit` and ``imgcluster assign`` share.

Kept apart from :mod:`imgcluster.estimator` so that ``assign`` trains without importing
scikit-learn, whose import (with scipy.stats and pandas) took 135 MB of RSS and about two CPU
seconds of a cold run on sample_data (``benchmarks/results_memory.md``); the estimator adds
only scikit-learn's input checks and attributes around :func:`fit_head`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster.config import TrainConfig
from imgcluster.progress import ProgressFn, Reporter

if TYPE_CHECKING:
    import torch

    from imgcluster.pipeline import Embeddings
    from imgcluster.train import EpochLog


@dataclass
class FittedHead:
    """A trained head and how it was trained (what its checkpoint holds)."""

    objective: Any  # the trained objective (a torch module)
    config: TrainConfig  # with the K chosen when it was ``auto``
    history: list[EpochLog]
    choose_k: dict[str, Any] | None  # the evidence for an ``auto`` K, else None
    description: dict[str, Any]  # the checkpoint's JSON
    # The kNN search training ran, (indices, similarities) at ``max(knn, search_k)`` neighbours, for the caller's
    # outlier test; None when the caller gave ``neighbours``.
    knn: tuple[np.ndarray, np.ndarray] | None = None


def fit_head(
    features: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    *,
    auto: bool,
    k_min: int,
    k_max: int,
    seed: int,
    embeddings: Embeddings | None = None,
    progress: ProgressFn | None = None,
    neighbours: np.ndarray | None = None,
    search_k: int = 0,
) -> FittedHead:
    """Train ``config`` on ``features`` [n, d] (float32, checked by the caller), choosing K in
    ``[k_min, k_max]`` first when ``auto``; ``embeddings``, when the features are theirs, puts the
    backbone into the description. ``neighbours`` replaces the kNN search (see :meth:`ClusterHead.fit`);
    without it the search finds ``max(knn, search_k)`` neighbours and :attr:`FittedHead.knn` keeps them, so that
    ``assign``'s isolation test reuses this one search instead of running its own."""
    from imgcluster.neighbours import knn_search
    from imgcluster.objectives import objective_class
    from imgcluster.train import effective_schedule, train_objective

    report = Reporter(progress, "train")
    choice = None
    if auto:
        from imgcluster.choose_k import choose_k  # scipy: only to choose K

        report.at("choose_k").info(f"choosing K between {k_min} and {k_max} ...")
        found = choose_k(features, k_min, k_max, seed=seed)
        report.at("choose_k").info(found.explanation)
        config, choice = dataclasses.replace(config, clusters=found.k), found.to_dict()
    n = len(features)
    searched = None
    report.info(f"finding the {min(max(config.knn, search_k), n - 1)} nearest neighbours of each of {n} images ...")
    if neighbours is None:
        searched = knn_search(features, max(config.knn, search_k), use_gpu=device.type == "cuda")
        neighbours = searched[0]
    else:
        neighbours = _checked_neighbours(neighbours, n, min(config.knn, n - 1))
    batch, epochs = effective_schedule(n, config)
    if epochs > config.epochs and objective_class(config.objective).trainable:  # why a run takes longer than asked
        report.info(f"{n} images: {epochs} epochs of batch {batch} instead of {config.epochs}, to reach {config.min_steps} steps")
    report.info(f"training {config.objective} (K={config.clusters}) ...")
    steps_per_epoch = max(1, n // batch)

    def on_progress(done: int, total: int, log: EpochLog | None) -> None:
        """Optimiser steps as the stage's steps, from before the first one; each epoch's end adds its loss line."""
        if done == 0:
            report.start(total, f"training {config.objective}")
            return
        moved = done - report.done
        if log is None:
            report.advance(moved)
            return
        epochs_total = total // steps_per_epoch
        line = f"epoch {log.epoch}/{epochs_total} [{log.stage}] loss {log.loss:.4f} ({log.seconds:.1f}s)"
        report.advance(moved, line, status=f"loss {log.loss:.4f}", total=total)

    trained = train_objective(features, neighbours, config, device, on_progress)
    if trained.stopped_early and config.stable_fraction is not None:
        report.info(
            f"stopped after epoch {len(trained.history)}: at most {config.stable_fraction:.1%} of the images changed cluster "
            f"in {config.stable_epochs} epochs in a row"
        )
    report.info(f"trained {config.objective} (K={config.clusters}) in {trained.seconds:.1f}s")
    if trained.empty_clusters:
        report.warning(
            f"{trained.empty_clusters} of {config.clusters} clusters are empty; "
            "try fewer {n_clusters}, or {balance} 2 for a stronger pull towards equal cluster sizes"
        )
    description = {
        **({"backbone": embeddings.identity, "embed": dataclasses.asdict(embeddings.config)} if embeddings else {}),
        "train": dataclasses.asdict(config),
        "images": n,
        "empty_clusters": trained.empty_clusters,
        "train_seconds": trained.seconds,
        "schedule": trained.schedule,
        "history": [dataclasses.asdict(log) for log in trained.history],
        **({"choose_k": choice} if choice is not None else {}),
    }
    return FittedHead(trained.objective, config, trained.history, choice, description, searched)


def _checked_neighbours(neighbours: object, n: int, least: int) -> np.ndarray:
    """A caller's kNN table as training indexes it: [n, >= least] row numbers of the features. Out
    of range ones failed inside torch with an IndexError, negative ones were read from the end and
    floats were truncated, all without a word."""
    from imgcluster.errors import ParameterError

    table = np.asarray(neighbours)
    if table.ndim != 2 or table.shape[0] != n or table.shape[1] < least:
        raise ParameterError(f"neighbours must be [{n}, >= {least}] row numbers, got shape {list(table.shape)}", "neighbours")
    if not np.issubdtype(table.dtype, np.integer):
        raise ParameterError(f"neighbours must be whole row numbers, got dtype {table.dtype}", "neighbours")
    if table.size and (table.min() < 0 or table.max() >= n):
        raise ParameterError(f"neighbours must be row numbers from 0 to {n - 1}, got {table.min()} to {table.max()}", "neighbours")
    return table
