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


def strips(k: int = 4, n: int = 60, d: int = 16, length: float = 10.0, gap: float = 4.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` long, thin, parallel strips, L2-normalised: features [k * n, d] (float32) and labels [k * n].

    Each strip runs ``2 * length`` along one shared direction and sits ``gap * sqrt(2)`` from every
    other across it (width 0.1), all far from the origin so that normalising keeps the shape. The true
    groups are not convex blobs, so no nearest-centre partition finds them: k-means (and any
    k-means or k-means++ start) cuts across the strips, while every point's nearest neighbours lie
    in its own strip. Only training on the neighbours can separate them.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]  # a random rotation: no strip lies along an axis
    labels = np.repeat(np.arange(k), n)
    offsets = gap * np.eye(k, d - 2)  # every two strips gap * sqrt(2) apart
    points = np.zeros((k * n, d))
    points[:, 0] = 20.0
    points[:, 1] = rng.uniform(-length, length, size=k * n)
    points[:, 2:] = offsets[labels] + 0.1 * rng.normal(size=(k * n, d - 2))
    return l2_normalise((points @ basis.T).astype(np.float32)), labels


def faint_blobs(k: int = 4, n: int = 60, d: int = 8, faint: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`blobs` in ``d`` dimensions plus ``faint`` dimensions of faint noise (std 0.01), like the
    near-constant units of real CNN features.

    The faint dimensions hardly move cosine similarities, so the neighbours and k-means find the
    blobs; a start that standardises every dimension first (TEMI's) sees mostly noise.
    """
    x, labels = blobs(k=k, n=n, d=d, seed=seed)
    noise = 0.01 * np.random.default_rng(seed + 1).normal(size=(k * n, faint))
    return l2_normalise(np.hstack([x, noise]).astype(np.float32)), labels
