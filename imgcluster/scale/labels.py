"""The assignment columns of one block of a feature store's rows, from a head and what its sample showed.

A streaming pass sees each row once and never all of them, so what ``assign`` computes over the
whole folder is estimated on the training sample (a seeded uniform sample of the store, all of it
when the store is no larger) and then applied row by row:

- ``outlier`` / ``outlier_reason``: each cluster's centre and distance threshold (median + 3 x
  1.4826 x MAD, :mod:`imgcluster.outliers`) come from the sample's members of that cluster; a row
  is far from its centre when its distance passes that threshold. A cluster with fewer than 10
  members in the sample gets no distance test, as in a folder. ``min_confidence`` is per row.
- ``cluster_name``: from the sample's members (:mod:`imgcluster.naming`), only for stores of the
  bundled EfficientNet-Lite0's features: for any other backbone it would take an extra Lite0
  pass over every image, which at this scale costs as much as the embedding itself.

Near-duplicates are not offered at this scale: they need every row's neighbours and a decode of
each candidate pair's pixels (docs/scale.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcluster.neighbours import l2_normalise


@dataclass
class SampleModel:
    """What the pass needs besides the head: per-cluster centres, thresholds and names, and the options."""

    centres: np.ndarray  # [K, d] unit mean feature of each cluster's sample members (zeros when it had none)
    thresholds: np.ndarray  # [K] distance above which a member is far from its centre (inf: no test)
    names: list[str] | None  # [K] cluster names, None without the cluster_name column
    min_confidence: float
    explain: bool

    def to_dict(self) -> dict[str, Any]:
        """What the sidecar records about the estimates."""
        return {
            "distance_thresholds": {str(k): (None if not np.isfinite(t) else round(float(t), 6)) for k, t in enumerate(self.thresholds)},
            **({"cluster_names": dict(enumerate(self.names))} if self.names is not None else {}),
        }


def fit_sample_model(
    objective: Any, features: np.ndarray, device: Any, *, min_confidence: float, names: bool, explain: bool
) -> tuple[SampleModel, np.ndarray]:
    """The estimates from the sample's ``features`` (float32, the head's input) and the sample's clusters."""
    from imgcluster.assign import predict
    from imgcluster.outliers import centre_distances, robust_thresholds

    clusters = predict(objective, features, device).cluster
    k, dim = objective.n_clusters, features.shape[1]
    distance, found = centre_distances(features, clusters)
    limits = robust_thresholds(distance, clusters)
    centres = np.zeros((k, dim), np.float32)
    thresholds = np.full(k, np.inf)
    for c, centre in found.items():
        centres[c], thresholds[c] = centre, limits[c]
    cluster_names = None
    if names:
        from imgcluster.naming import cluster_names as name_clusters

        named = name_clusters(features, clusters)
        cluster_names = [named.get(c, "") for c in range(k)]
    return SampleModel(centres, thresholds, cluster_names, min_confidence, explain), clusters


def label_batch(objective: Any, model: SampleModel, paths: list[str], features: np.ndarray, device: Any) -> dict[str, np.ndarray]:
    """The CSV's columns for these rows: path, cluster, confidence and the extra columns."""
    from imgcluster.assign import predict
    from imgcluster.outliers import REASON_CONFIDENCE, REASON_DISTANCE

    x = np.asarray(features, dtype=np.float32)
    with _one_thread():
        prediction = predict(objective, x, device, explain=model.explain)
    cluster, confidence = prediction.cluster, prediction.confidence
    z = l2_normalise(x)
    distance = np.clip(1.0 - np.einsum("ij,ij->i", z, model.centres[cluster]), 0.0, 2.0)
    far = distance > model.thresholds[cluster]
    low = confidence.astype(np.float64) < model.min_confidence
    reasons = np.array(
        ["+".join(r for r, on in ((REASON_CONFIDENCE, a), (REASON_DISTANCE, b)) if on) for a, b in zip(low, far)], dtype=object
    ).astype(str)
    extra: dict[str, np.ndarray] = {**prediction.extra, "outlier": (low | far).astype(np.int64), "outlier_reason": reasons}
    if model.names is not None:
        extra["cluster_name"] = np.array([model.names[int(c)] for c in cluster], dtype=object).astype(str)
    return {"path": np.array(paths, dtype=object), "cluster": cluster, "confidence": confidence, **dict(sorted(extra.items()))}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread while labelling: a float32 product's last bits depend on how many
    threads share it (measured: 23 of 455 confidences moved), and a Ray actor has one CPU, so the
    local pass computes as an actor does and both engines write the same CSV."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
