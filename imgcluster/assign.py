"""Cluster labels for embedded images, written as CSV one row at a time."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import torch

from imgcluster.atomic import atomic_open
from imgcluster.errors import ImgclusterError
from imgcluster.neighbours import l2_normalise
from imgcluster.objectives import Objective

if TYPE_CHECKING:
    from imgcluster.outliers import Outliers

BASE_COLUMNS = ["path", "cluster", "confidence"]


@dataclass
class Assignment:
    cluster: np.ndarray  # [N] int
    confidence: np.ndarray  # [N] float, probability of the chosen cluster
    extra: dict[str, np.ndarray]  # optional columns (explanations)


@torch.no_grad()
def predict(objective: Objective, features: np.ndarray, device: torch.device, explain: bool = False, batch_size: int = 65536) -> Assignment:
    """Stream features through the head in blocks, so memory stays flat for large folders."""
    objective.eval().to(device)
    clusters, confidences = [], []
    extra: dict[str, list[np.ndarray]] = {}
    for start in range(0, features.shape[0], batch_size):
        z = torch.from_numpy(l2_normalise(features[start : start + batch_size])).to(device)
        p = objective.predict(z)
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


@contextmanager
def _output(out: str) -> Iterator[IO[str]]:
    if out == "-":
        yield sys.stdout
        sys.stdout.flush()
    else:
        with atomic_open(Path(out), "w", newline="") as handle:
            yield handle


def write_assignments(out: str, paths: list[str], assignment: Assignment) -> None:
    """Write the CSV to ``out`` (``-`` for stdout); strings are quoted, so any file name is safe."""
    columns = BASE_COLUMNS + sorted(assignment.extra)
    with _output(out) as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(columns)
        extras = [assignment.extra[c] for c in columns[len(BASE_COLUMNS) :]]
        for i, rel in enumerate(paths):
            row: list[object] = [rel, int(assignment.cluster[i]), round(float(assignment.confidence[i]), 6)]
            for values in extras:
                v = values[i]
                if values.dtype.kind in "USO":  # text columns (outlier_reason) are quoted like paths
                    row.append(str(v))
                else:
                    row.append(round(float(v), 6) if np.issubdtype(values.dtype, np.floating) else int(v))
            writer.writerow(row)


def mark_outliers(assignment: Assignment, features: np.ndarray, min_confidence: float) -> Outliers:
    """Add the ``outlier`` (0/1) and ``outlier_reason`` columns; the rule is in :mod:`imgcluster.outliers`."""
    from imgcluster.outliers import find_outliers

    found = find_outliers(features, assignment.cluster, assignment.confidence, min_confidence=min_confidence)
    assignment.extra["outlier"] = found.flags.astype(np.int64)
    assignment.extra["outlier_reason"] = found.reasons()
    return found


def read_assignments(path: Path) -> tuple[list[str], np.ndarray]:
    """Read back ``path`` and ``cluster`` columns exactly as written (any file name)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"path": str}, keep_default_na=False)
    missing = [c for c in ("path", "cluster") if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)}")
    return frame["path"].tolist(), frame["cluster"].to_numpy(dtype=np.int64)
