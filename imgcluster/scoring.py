"""Compare an assignment with a labelled folder: ACC (Hungarian), NMI, ARI, AMI, purity."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.csvfile import (
    as_folder_paths,
    assignments_path,
    check_assignments_file,
    names_of_clusters,
    read_assignments,
    separator_hint,
)
from imgcluster.errors import ImgclusterError, ParameterError, literal
from imgcluster.listing import list_images
from imgcluster.matching import best_matching
from imgcluster.userpath import path_argument

EXAMPLES = 5  # missing files named per kind; the count says how many there are


@dataclass
class ClusterPurity:
    """One cluster's size, most common label and the share of its images that carry it."""

    cluster: int
    size: int
    majority_label: str
    purity: float
    name: str = ""  # the cluster's name from the CSV's cluster_name column, "" without one


@dataclass
class Evaluation:
    """What :func:`imgcluster.evaluate` measured: ACC (Hungarian matching of clusters to labels),
    NMI, ARI, AMI and purity of the images in both the CSV and the folder, how many that is
    (``matched``, ``coverage``), and ``per_cluster`` purity; :meth:`to_dict` is ``evaluate --json``."""

    acc: float
    nmi: float
    ari: float
    ami: float
    purity: float
    matched: int
    unmatched_assignments: int  # rows in the CSV with no image in the folder
    unassigned_images: int  # labelled images missing from the CSV
    # The scores above are of the ``matched`` images only: a CSV of 1 of 18 images scored ACC 1.0,
    # which reads as perfect. These say how much of the labelled folder that is, and the ACC of all
    # of it with each image missing from the CSV counted wrong (equal to ``acc`` when none is missing).
    labelled: int  # labelled images in the folder
    coverage: float  # matched / labelled
    acc_of_labelled: float  # acc * matched / labelled
    clusters: int
    classes: int
    per_cluster: list[ClusterPurity]
    # the first few of each, by path, so that a count of missing files says which ones
    unmatched_examples: list[str] = field(default_factory=list)
    unassigned_examples: list[str] = field(default_factory=list)
    # rows for images at the folder's top, outside every sub-folder: in the folder, with no label, so not scored
    unlabelled_rows: int = 0
    unlabelled_examples: list[str] = field(default_factory=list)

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
    return _labelled(folder)[0]


def _labelled(folder: Path) -> tuple[dict[str, str], set[str]]:
    """(:func:`folder_labels`, the images at the folder's top, which have no label): a CSV's rows for those are
    in the folder, and were counted as "not in the folder"."""
    listed = [f.rel for f in list_images(folder)]
    return {rel: rel.split("/", 1)[0] for rel in listed if "/" in rel}, {rel for rel in listed if "/" not in rel}


def check_labelled_folder(folder: Path, parameter: str) -> None:
    """Refuse, naming ``parameter``, a labelled folder that is missing or is a file (evaluate and
    the report's labels; a file was said to be "not found")."""
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"{{{parameter}}} {literal(folder)} is not a folder: give the folder whose sub-folders are the labels")
    if not folder.is_dir():
        raise ParameterError(f"labelled folder not found: {literal(folder)}", parameter)


def evaluate(assignments: str | os.PathLike[str], labelled_folder: str | os.PathLike[str]) -> Evaluation:
    """Score an assignment CSV against a folder whose top-level sub-folder names are the labels:
    ACC (Hungarian matching), NMI, ARI, AMI, purity overall and per cluster, of the images that are
    in both; ``coverage`` and ``acc_of_labelled`` say what that is worth when the CSV leaves some out."""
    assignments = assignments_path(assignments)
    labelled_folder = Path(path_argument(labelled_folder, "labelled_folder", "a folder whose sub-folders are the labels"))
    check_assignments_file(assignments)
    check_labelled_folder(labelled_folder, "labelled_folder")
    rows = as_folder_paths(read_assignments(assignments), labelled_folder)
    paths = [r.path for r in rows]
    clusters = np.array([r.cluster for r in rows], dtype=np.int64)
    truth, top = _labelled(labelled_folder)
    if not truth:
        raise ImgclusterError(f"no labelled images in {labelled_folder}: put each class in its own sub-folder")
    keep = [i for i, p in enumerate(paths) if p in truth]
    if not keep:
        hint = separator_hint(paths)
        where = f"{labelled_folder}{hint}"
        raise ImgclusterError(f"no path in {assignments.name} matches an image in {where}; were they made from the same folder?")
    matched_paths = [paths[i] for i in keep]
    y = np.array([truth[p] for p in matched_paths])
    c = clusters[keep]
    metrics = score(y, c)
    names = names_of_clusters(rows)
    per_cluster = []
    for k in np.unique(c):
        members = y[c == k]
        values, counts = np.unique(members, return_counts=True)
        majority, purity = str(values[counts.argmax()]), float(counts.max() / members.size)
        per_cluster.append(ClusterPurity(int(k), int(members.size), majority, purity, names.get(int(k), "")))
    per_cluster.sort(key=lambda p: (-p.size, p.cluster))
    purity = sum(p.purity * p.size for p in per_cluster) / len(keep)
    unlabelled = sorted(set(paths) & top)
    unmatched = sorted(set(paths) - set(matched_paths) - top)
    unassigned = sorted(set(truth) - set(matched_paths))
    return Evaluation(
        **metrics,
        purity=float(purity),
        matched=len(keep),
        unmatched_assignments=len(unmatched),
        unassigned_images=len(unassigned),
        labelled=len(truth),
        coverage=len(keep) / len(truth),
        acc_of_labelled=metrics["acc"] * len(keep) / len(truth),
        clusters=int(np.unique(c).size),
        classes=int(np.unique(y).size),
        per_cluster=per_cluster,
        unmatched_examples=unmatched[:EXAMPLES],
        unassigned_examples=unassigned[:EXAMPLES],
        unlabelled_rows=len(unlabelled),
        unlabelled_examples=unlabelled[:EXAMPLES],
    )
