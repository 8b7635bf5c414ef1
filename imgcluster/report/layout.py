"""Which images a report shows: clusters largest first, their most typical and least confident images."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcluster.csvfile import Row, names_of_clusters, separator_hint
from imgcluster.errors import ImgclusterError

DEFAULT_PER_CLUSTER = 48  # most typical images per cluster; a third as many least confident ones join them
MAX_IMAGES = 2400  # thumbnails in one page, over all clusters


@dataclass
class ClusterView:
    cluster: int
    size: int
    mean_confidence: float
    typical: list[int]  # row indices, most typical first
    least: list[int]  # row indices, least confident first, none of them in ``typical``
    mix: list[tuple[str, int]] | None = None  # (label, count), largest first, from a labelled folder
    majority: tuple[str, float] | None = None  # (label, purity) from an evaluation JSON
    name: str = ""  # the cluster's name from the CSV's cluster_name column


@dataclass
class Plan:
    views: list[ClusterView]  # largest cluster first
    outliers: list[int]  # row indices of flagged rows shown, least confident first
    typical: int  # per-cluster caps in force, after shrinking to fit ``max_images``
    least: int


def label_mix(rows: list[Row], labelled_folder: Path) -> dict[int, Counter[str]]:
    """Per cluster, how many images carry each label (the top sub-folder name in ``labelled_folder``)."""
    from imgcluster.scoring import check_labelled_folder, folder_labels

    check_labelled_folder(labelled_folder, "labels")
    truth = folder_labels(labelled_folder)
    if not truth:
        raise ImgclusterError(f"no labelled images in {labelled_folder}: put each class in its own sub-folder")
    if not any(r.path in truth for r in rows):
        hint = separator_hint(r.path for r in rows)
        raise ImgclusterError(f"no path in the CSV matches an image in {labelled_folder}{hint}; were they made from the same folder?")
    mix: dict[int, Counter[str]] = {}
    for r in rows:
        mix.setdefault(r.cluster, Counter())[truth.get(r.path, "(no label)")] += 1
    return mix


def _allocate(sizes: list[int], outliers: int, per_cluster: int, max_images: int) -> tuple[int, int]:
    """Per-cluster (typical, least confident) counts, shrunk evenly until the page fits ``max_images``."""
    typical = per_cluster
    while True:
        least = typical // 3
        planned = sum(min(n, typical + least) for n in sizes) + min(outliers, typical)
        if planned <= max_images or typical == 1:
            return typical, least
        typical = max(1, int(typical * 0.8))


def plan_clusters(rows: list[Row], feats: dict[str, np.ndarray] | None, per_cluster: int, max_images: int) -> Plan:
    """Clusters largest first with their typical and least confident images, and the outliers.

    Typical means closest (cosine) to the cluster centre, the mean of its members' normalised
    features; without features (or for members the cache lacks) highest confidence stands in.
    """
    members: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        members.setdefault(r.cluster, []).append(i)
    order = sorted(members, key=lambda k: (-len(members[k]), k))
    outliers = sorted((i for i, r in enumerate(rows) if r.outlier), key=lambda i: _conf(rows[i]))
    typical_n, least_n = _allocate([len(members[k]) for k in order], len(outliers), per_cluster, max_images)
    budget = max_images
    names = names_of_clusters(rows)
    views = []
    for k in order:
        idx = members[k]
        typical: list[int] = []
        least: list[int] = []
        if budget > 0:  # once the cap is spent, later clusters need no ranking (there may be 200,000)
            typical = _typical_order(idx, rows, feats)[: min(typical_n, budget)]
            chosen = set(typical)
            rest = sorted((i for i in idx if i not in chosen), key=lambda i: (_conf(rows[i]), rows[i].path))
            least = rest[: min(least_n, budget - len(typical))]
            budget -= len(typical) + len(least)
        confidences = [rows[i].confidence for i in idx if not math.isnan(rows[i].confidence)]
        mean = float(np.mean(confidences)) if confidences else math.nan
        views.append(ClusterView(k, len(idx), mean, typical, least, name=names.get(k, "")))
    return Plan(views, outliers[: min(typical_n, max(budget, 0))], typical_n, least_n)


def _conf(row: Row) -> float:
    return -1.0 if math.isnan(row.confidence) else row.confidence


def _typical_order(idx: list[int], rows: list[Row], feats: dict[str, np.ndarray] | None) -> list[int]:
    have = [i for i in idx if feats is not None and rows[i].path in feats]
    lack = sorted((i for i in idx if feats is None or rows[i].path not in feats), key=lambda i: (-_conf(rows[i]), rows[i].path))
    if not have or feats is None:
        return lack
    x = np.stack([feats[rows[i].path] for i in have]).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    centre = x.mean(0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    similarity = x @ centre
    ranked = sorted(range(len(have)), key=lambda j: (-float(similarity[j]), rows[have[j]].path))
    return [have[j] for j in ranked] + lack
