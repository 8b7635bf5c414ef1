"""Groups of near-identical images from the kNN graph of the cached features.

Two images are linked when their cosine similarity is at least ``threshold``; a group is a
connected component of these links (union-find), so copies A~B and B~C form one group even when
A and C fall just under the threshold, the way a photographer's burst of shots does.

Only each image's ``k`` nearest neighbours are examined (one FAISS search, the same kind that
mines training pairs), which keeps the cost at one kNN search instead of all N² pairs. A pair
above the threshold is missed only when *both* images already have ``k`` other neighbours at
least as similar, i.e. both sit in a crowd of more than ``k`` near-copies; union-find over those
crowds' own links then usually puts them in one group anyway.

Feature similarity finds *candidates*; given the image files, the pixels decide
(:mod:`imgcluster.fingerprint`). Each candidate group is split into sets of copies, each led by
its reference: its largest file (usually the original, the highest resolution or the least
compressed copy). Every other member is labelled against its set's reference:

* ``exact``: the same bytes. Safe to delete.
* ``resized/re-encoded``: the same picture at another size, format or compression (shape,
  perceptual hash and colours agree). Safe to delete: the reference keeps the picture.
* ``similar``: alike to the model but nobody's copy by its pixels: a crop, a rotation, an edit,
  another shot of the same scene, or a different image. Look before deleting. It joins the set
  whose reference its features are closest to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcluster.atomic import atomic_open
from imgcluster.csvfile import CsvWriter
from imgcluster.errors import ParameterError
from imgcluster.fingerprint import Fingerprint, fingerprint, same_file, same_picture
from imgcluster.load import ImageDecodeError
from imgcluster.neighbours import knn_search, l2_normalise

DEFAULT_NEIGHBOURS = 10
COLUMNS = ["group", "path", "similarity", "kind"]
EXACT = "exact"
RESIZED = "resized/re-encoded"
SIMILAR = "similar"
KINDS = (EXACT, RESIZED, SIMILAR)
SAFE_TO_DELETE = (EXACT, RESIZED)


@dataclass
class DuplicateGroup:
    members: list[int]  # row indices: the reference, its copies in index order, then the similar ones in index order
    similarity: list[float]  # cosine similarity of each member to the reference (1.0 for itself)
    kinds: list[str]  # per member against the reference: "" for itself, then EXACT/RESIZED/SIMILAR


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
    features: np.ndarray,
    threshold: float,
    k: int = DEFAULT_NEIGHBOURS,
    use_gpu: bool = False,
    files: Sequence[Path] | None = None,
    prints: dict[int, Fingerprint | None] | None = None,
) -> list[DuplicateGroup]:
    """Groups of images whose features are linked by cosine similarity >= ``threshold``.

    With ``files`` (each row's image file) each candidate group is split by :func:`confirm` into
    sets of pixel copies, and each member gets a kind (module docstring); without them the pixels
    are unknown: the lowest index is the reference and every other member is ``similar``.
    ``prints`` caches fingerprints by row across calls (a benchmark trying several thresholds).
    Largest groups first, then by lowest member.
    """
    if not 0.0 < threshold <= 1.0:
        raise ParameterError(f"{{threshold}} is a cosine similarity in (0, 1], got {threshold}")
    n = features.shape[0]
    if n < 2:
        return []
    indices, sims = knn_search(features, min(k, n - 1), use_gpu=use_gpu)
    # float16 features of byte-identical images can score 0.99999: a threshold of 1.0 still finds them
    rows, cols = np.nonzero(sims >= threshold - 1e-5)
    pairs = np.stack([rows, indices[rows, cols]], axis=1)
    pairs = pairs[pairs[:, 1] >= 0]  # FAISS pads missing hits with -1
    candidates = group_pairs(n, pairs)
    z = l2_normalise(features)
    groups = []
    for members in candidates:
        if files is None:
            split = [(members, [""] + [SIMILAR] * (len(members) - 1))]
        else:
            prints = fingerprints(files, members, prints)
            split = confirm(members, files, prints, z)
        for group, kinds in split:
            sim = np.clip(z[group] @ z[group[0]], -1.0, 1.0)
            groups.append(DuplicateGroup(group, [float(s) for s in sim], kinds))
    groups.sort(key=lambda g: (-len(g.members), min(g.members)))
    return groups


def confirm(
    members: list[int], files: Sequence[Path], prints: dict[int, Fingerprint | None], z: np.ndarray
) -> list[tuple[list[int], list[str]]]:
    """Split one candidate group into sets of pixel copies, each led by its largest file.

    Largest file first, each image not yet placed takes every unplaced member that is a pixel copy
    of it (checked directly against it, never through a chain). Images that are nobody's copy (a
    crop, a look-alike) join, as ``similar``, the set whose reference their features are closest
    to; with no copies at all the candidate group stays one group of ``similar`` images.
    """
    order = sorted(members, key=lambda i: (-_file_size(files[i]), i))
    placed: set[int] = set()
    sets: list[list[int]] = []
    for ref in order:
        if ref in placed:
            continue
        copies = [j for j in order if j not in placed and j != ref and _kind(prints[ref], prints[j]) in SAFE_TO_DELETE]
        placed.update([ref, *copies])
        sets.append([ref, *sorted(copies)])
    confirmed = [s for s in sets if len(s) > 1]
    alone = sorted(s[0] for s in sets if len(s) == 1)
    if not confirmed:
        return [([order[0]] + [i for i in alone if i != order[0]], [""] + [SIMILAR] * (len(alone) - 1))]
    refs = np.array([s[0] for s in confirmed])
    extra: list[list[int]] = [[] for _ in confirmed]
    for i in alone:
        extra[int(np.argmax(z[refs] @ z[i]))].append(i)
    return [
        ([*s, *more], [""] + [_kind(prints[s[0]], prints[j]) for j in s[1:]] + [SIMILAR] * len(more))
        for s, more in zip(confirmed, extra)
    ]


def fingerprints(
    files: Sequence[Path], rows: list[int], prints: dict[int, Fingerprint | None] | None = None
) -> dict[int, Fingerprint | None]:
    """Fingerprint ``rows`` not yet in ``prints``; ``None`` for a file that cannot be read now."""
    prints = {} if prints is None else prints
    for i in rows:
        if i not in prints:
            try:
                prints[i] = fingerprint(files[i])
            except ImageDecodeError:
                prints[i] = None
    return prints


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _kind(reference: Fingerprint | None, member: Fingerprint | None) -> str:
    if reference is None or member is None:
        return SIMILAR  # no pixels to compare: only the features speak for it
    if same_file(reference, member):
        return EXACT
    return RESIZED if same_picture(reference, member) else SIMILAR


def duplicates_path(csv_path: Path) -> Path:
    """``out/photos-clusters.csv`` -> ``out/photos-clusters-duplicates.csv``."""
    return csv_path.with_name(f"{csv_path.stem}-duplicates.csv")


def write_duplicates(path: Path, paths: list[str], groups: list[DuplicateGroup], raw_csv: bool = False) -> Path:
    """One row per image in a group: ``group`` (0-based), ``path``, ``similarity`` and ``kind`` against the group's first member."""
    with atomic_open(path, "w", newline="") as handle:
        writer = CsvWriter(handle, raw_csv)
        writer.writerow(COLUMNS)
        for g, group in enumerate(groups):
            for i, s, kind in zip(group.members, group.similarity, group.kinds):
                writer.writerow([g, paths[i], round(s, 6), kind])
    return path
