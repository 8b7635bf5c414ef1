"""Toy data shared by the objective tests: Gaussian blobs, their kNN table, random batches, short training runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imgcluster.config import TrainConfig
from imgcluster.neighbours import knn_search, l2_normalise
from imgcluster.objectives import Batch
from imgcluster.train import TrainResult, train_objective


def blobs(k: int = 4, n: int = 100, d: int = 32, noise: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs, L2-normalised: features [k * n, d] (float32) and labels [k * n].

    The centres are drawn with a spread of 3, each image adds ``noise`` times a standard normal.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    labels = np.repeat(np.arange(k), n)
    return l2_normalise(centres[labels] + noise * rng.normal(size=(k * n, d))), labels


def toy_neighbours(k: int = 4, n: int = 100, d: int = 32, knn: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`blobs` and their ``knn`` nearest neighbours: (features, labels, neighbour indices [k * n, knn])."""
    x, y = blobs(k=k, n=n, d=d, seed=seed)
    neighbours, _ = knn_search(x, knn)
    return x, y, neighbours


def random_batch(n: int = 24, d: int = 16, seed: int = 0) -> Batch:
    """``n`` random unit anchors, each paired with an unrelated random unit "neighbour"."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1)
    b = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return Batch(anchors=a, neighbours=b, index=torch.arange(n), neighbour_index=torch.arange(n))


def random_knn_batch(n: int = 64, d: int = 16, b: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Batch]:
    """A random dataset with a random kNN table and a batch drawn from it, for objectives that need ``setup``.

    Returns the features [n, d] (unit rows), the kNN table [n, 5] and a batch of ``b`` anchors paired
    with their first listed neighbour.
    """
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=1)
    knn = torch.randint(n, (n, 5), generator=g)
    idx = torch.randperm(n, generator=g)[:b]
    nidx = knn[idx, 0]
    return x, knn, Batch(anchors=x[idx], neighbours=x[nidx], index=idx, neighbour_index=nidx)


def blob_config(objective: str, options: dict[str, Any] | None = None, *, epochs: int, min_steps: int, seed: int = 0) -> TrainConfig:
    """A training config for the default :func:`toy_neighbours` (4 clusters, batches of 100, 10 neighbours)."""
    return TrainConfig(
        objective=objective,
        clusters=4,
        epochs=epochs,
        batch_size=100,
        knn=10,
        seed=seed,
        min_steps=min_steps,
        objective_options=options or {},
    )


def train_toy(
    objective: str,
    options: dict[str, Any] | None = None,
    *,
    epochs: int,
    min_steps: int,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    """Train ``objective`` on the default :func:`toy_neighbours` blobs: (result, features, labels)."""
    x, y, neighbours = toy_neighbours()
    config = blob_config(objective, options, epochs=epochs, min_steps=min_steps, seed=seed)
    return train_objective(x, neighbours, config, torch.device(device)), x, y
