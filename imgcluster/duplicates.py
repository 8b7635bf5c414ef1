"""Groups of near-identical images from the kNN graph of the cached features.

Two images are linked when their cosine similarity is at least ``threshold``; a group is a
connected component of these links (union-find), so copies A~B and B~C form one group even when
A and C fall just under the threshold, the way a photographer's burst of shots does.

Only each image's ``k`` nearest neighbours are examined (one FAISS search, the same kind that
mines training pairs), which keeps the cost at one kNN search instead of all N² pairs. A pair
above the threshold is missed only when *both* images already have ``k`` other neighbours at
least as similar, i.e. both sit in a crowd of more than ``k`` near-copies; union-find over those
crowds' own links then usually puts them in one group anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcluster.atomic import atomic_open
from imgcluster.csvfile import CsvWriter
from imgcluster.neighbours import knn_search, l2_normalise

DEFAULT_NEIGHBOURS = 10
COLUMNS = ["group", "path", "similarity"]


@dataclass
class DuplicateGroup:
    members: list[int]  # row indices, first member first (the lowest index: first in scan order)
    similarity: list[float]  # cosine similarity of each member to the first member (1.0 for itself)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the lowest index is the root: deterministic groups


def group_pairs(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components with at least two members of the graph on ``n`` nodes with edges ``pairs`` [P, 2]."""
    uf = _UnionFind(n)
    for a, b in pairs:
        uf.union(int(a), int(b))
    groups: dict[int, list[int]] = {}
    for i in np.unique(pairs.ravel()):
        groups.setdefault(uf.find(int(i)), []).append(int(i))
    return [sorted(g) for g in groups.values() if len(g) > 1]


def find_near_duplicates(
    features: np.ndarray, threshold: float, k: int = DEFAULT_NEIGHBOURS, use_gpu: bool = False
) -> list[DuplicateGroup]:
    """Groups of images whose features are linked by cosine similarity >= ``threshold``.

    Largest groups first, then by first member; within a group, in index order.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the near-duplicate threshold is a cosine similarity in (0, 1], got {threshold}")
    n = features.shape[0]
    if n < 2:
        return []
    indices, sims = knn_search(features, min(k, n - 1), use_gpu=use_gpu)
    # float16 features of byte-identical images can score 0.99999: a threshold of 1.0 still finds them
    rows, cols = np.nonzero(sims >= threshold - 1e-5)
    pairs = np.stack([rows, indices[rows, cols]], axis=1)
    pairs = pairs[pairs[:, 1] >= 0]  # FAISS pads missing hits with -1
    z = l2_normalise(features)
    groups = []
    for members in group_pairs(n, pairs):
        sim = np.clip(z[members] @ z[members[0]], -1.0, 1.0)
        groups.append(DuplicateGroup(members, [float(s) for s in sim]))
    groups.sort(key=lambda g: (-len(g.members), g.members[0]))
    return groups


def duplicates_path(csv_path: Path) -> Path:
    """``out/photos-clusters.csv`` -> ``out/photos-clusters-duplicates.csv``."""
    return csv_path.with_name(f"{csv_path.stem}-duplicates.csv")


def write_duplicates(path: Path, paths: list[str], groups: list[DuplicateGroup], raw_csv: bool = False) -> Path:
    """One row per image in a group: ``group`` (0-based), ``path``, ``similarity`` to the group's first member."""
    with atomic_open(path, "w", newline="") as handle:
        writer = CsvWriter(handle, raw_csv)
        writer.writerow(COLUMNS)
        for g, group in enumerate(groups):
            for i, s in zip(group.members, group.similarity):
                writer.writerow([g, paths[i], round(s, 6)])
    return path
