"""Cluster labels for embedded images (the CSV they go into is :mod:`imgcluster.csvfile`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from imgcluster.errors import ImgclusterError
from imgcluster.neighbours import l2_normalise
from imgcluster.objectives import Objective

if TYPE_CHECKING:
    from imgcluster.outliers import Outliers


@dataclass
class Assignment:
    cluster: np.ndarray  # [N] int
    confidence: np.ndarray  # [N] float, probability of the chosen cluster
    extra: dict[str, np.ndarray]  # optional columns (explanations)


@torch.no_grad()
def probabilities(
    objective: Objective, features: np.ndarray, device: torch.device, batch_size: int = 65536
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised features, cluster probabilities) block by block, so memory stays flat for large folders."""
    objective.eval().to(device)
    for start in range(0, features.shape[0], batch_size):
        z = torch.from_numpy(l2_normalise(features[start : start + batch_size])).to(device)
        yield z, objective.predict(z)


@torch.no_grad()
def predict(objective: Objective, features: np.ndarray, device: torch.device, explain: bool = False, batch_size: int = 65536) -> Assignment:
    """Each image's most probable cluster and its probability (plus the objective's explanations)."""
    clusters, confidences = [], []
    extra: dict[str, list[np.ndarray]] = {}
    for z, p in probabilities(objective, features, device, batch_size):
        conf, cluster = p.max(-1)
        if not bool(torch.isfinite(conf).all()):  # NaN would land every image in cluster 0 with no outlier flag
            raise ImgclusterError("the head gives confidences that are not finite numbers (its weights overflow); train it again")
        clusters.append(cluster.cpu().numpy())
        confidences.append(conf.float().cpu().numpy())
        if explain:
            for key, value in objective.explain(z).items():
                extra.setdefault(key, []).append(value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy())
    return Assignment(
        cluster=np.concatenate(clusters) if clusters else np.zeros(0, np.int64),
        confidence=np.concatenate(confidences) if confidences else np.zeros(0, np.float32),
        extra={k: np.concatenate(v) for k, v in extra.items()},
    )


def mark_outliers(
    assignment: Assignment,
    features: np.ndarray,
    min_confidence: float,
    use_gpu: bool = False,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> Outliers:
    """Add the ``outlier`` (0/1) and ``outlier_reason`` columns; the rule is in :mod:`imgcluster.outliers`.

    ``neighbours``: the kNN search training just ran on ``features`` (:attr:`FittedHead.knn`), reused when it is deep enough.
    """
    from imgcluster.outliers import find_outliers

    found = find_outliers(
        features, assignment.cluster, assignment.confidence, min_confidence=min_confidence, use_gpu=use_gpu, neighbours=neighbours
    )
    assignment.extra["outlier"] = found.flags.astype(np.int64)
    assignment.extra["outlier_reason"] = found.reasons()
    return found
