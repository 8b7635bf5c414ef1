"""Compare an assignment with a labelled folder: ACC (Hungarian), NMI, ARI, AMI, purity."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.assign import read_assignments
from imgcluster.errors import UserError
from imgcluster.listing import list_images
from imgcluster.matching import best_matching


@dataclass
class ClusterPurity:
    cluster: int
    size: int
    majority_label: str
    purity: float


@dataclass
class Evaluation:
    acc: float
    nmi: float
    ari: float
    ami: float
    purity: float
    matched: int
    unmatched_assignments: int  # rows in the CSV with no labelled image
    unassigned_images: int  # labelled images missing from the CSV
    clusters: int
    classes: int
    per_cluster: list[ClusterPurity]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Best one-to-one match of clusters to classes; works when K differs from the class count."""
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    table, rows, cols = best_matching(c, y, (c.max() + 1, y.max() + 1))
    return float(table[rows, cols].sum() / len(labels))


def score(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    return {
        "acc": hungarian_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
    }


def folder_labels(folder: Path) -> dict[str, str]:
    """Relative path -> label, the label being the top-level sub-folder's name."""
    return {f.rel: f.rel.split("/", 1)[0] for f in list_images(folder) if "/" in f.rel}


def evaluate(assignments: Path, labelled_folder: Path) -> Evaluation:
    if not assignments.is_file():
        raise UserError(f"assignments file not found: {assignments}", exit_code=2)
    if not labelled_folder.is_dir():
        raise UserError(f"labelled folder not found: {labelled_folder}", exit_code=2)
    try:
        paths, clusters = read_assignments(assignments)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read assignments {assignments}: {exc}") from None
    if not paths:
        raise UserError(f"{assignments} has no rows")
    repeated = sorted(p for p, n in Counter(paths).items() if n > 1)
    if repeated:  # each image would count more than once in every score
        raise UserError(
            f"{assignments} lists {len(repeated)} path(s) more than once (e.g. {repeated[0]!r}); an assignment has one row per image"
        )
    truth = folder_labels(labelled_folder)
    if not truth:
        raise UserError(f"no labelled images in {labelled_folder}: put each class in its own sub-folder")
    keep = [i for i, p in enumerate(paths) if p in truth]
    if not keep:
        raise UserError(f"no path in {assignments.name} matches an image in {labelled_folder}; were they made from the same folder?")
    matched_paths = [paths[i] for i in keep]
    y = np.array([truth[p] for p in matched_paths])
    c = clusters[keep]
    metrics = score(y, c)
    per_cluster = []
    for k in np.unique(c):
        members = y[c == k]
        values, counts = np.unique(members, return_counts=True)
        per_cluster.append(ClusterPurity(int(k), int(members.size), str(values[counts.argmax()]), float(counts.max() / members.size)))
    per_cluster.sort(key=lambda p: (-p.size, p.cluster))
    purity = sum(p.purity * p.size for p in per_cluster) / len(keep)
    return Evaluation(
        **metrics,
        purity=float(purity),
        matched=len(keep),
        unmatched_assignments=len(paths) - len(keep),
        unassigned_images=len(set(truth) - set(matched_paths)),
        clusters=int(np.unique(c).size),
        classes=int(np.unique(y).size),
        per_cluster=per_cluster,
    )
