"""Near-duplicate groups: exact and near copies are grouped, distinct images are not."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from imgcluster.duplicates import duplicates_path, find_near_duplicates, group_pairs, write_duplicates


def _distinct(rng: np.random.Generator, n: int = 200, dim: int = 64) -> np.ndarray:
    return rng.normal(size=(n, dim)).astype(np.float32)  # random directions: pairwise cosine ~ N(0, 1/64)


def test_exact_and_near_copies_grouped_distinct_not() -> None:
    rng = np.random.default_rng(0)
    x = _distinct(rng)
    x[10] = x[3]  # exact copy
    x[50] = x[3] * 2.0  # same direction, other scale: cosine 1
    x[120] = x[7] + 0.05 * rng.normal(size=x.shape[1]).astype(np.float32) * np.linalg.norm(x[7]) / 8  # near copy
    x = x.astype(np.float16).astype(np.float32)  # as the cache stores them
    groups = find_near_duplicates(x, threshold=0.98)
    assert [g.members for g in groups] == [[3, 10, 50], [7, 120]]
    assert groups[0].similarity[0] == pytest.approx(1.0, abs=1e-5)
    assert min(groups[0].similarity) > 0.999
    assert 0.98 <= groups[1].similarity[1] < 1.0
    assert find_near_duplicates(x, threshold=1.0)[0].members == [3, 10, 50]  # float16 rounding tolerated


def test_transitive_links_form_one_group() -> None:
    assert group_pairs(6, np.array([[0, 1], [2, 1], [5, 4]])) == [[0, 1, 2], [4, 5]]
    assert group_pairs(3, np.zeros((0, 2), np.int64)) == []


def test_large_group_of_copies_stays_one_group() -> None:
    """More copies than neighbours searched: union-find still joins them all."""
    rng = np.random.default_rng(1)
    x = _distinct(rng, 100)
    x[20:45] = x[20]
    groups = find_near_duplicates(x, threshold=0.99, k=5)
    assert [g.members for g in groups] == [list(range(20, 45))]


def test_no_duplicates_and_bad_threshold() -> None:
    x = _distinct(np.random.default_rng(2))
    assert find_near_duplicates(x, 0.9) == []
    assert find_near_duplicates(x[:1], 0.9) == []
    with pytest.raises(ValueError):
        find_near_duplicates(x, 1.5)


def test_write_duplicates_csv(tmp_path: Path) -> None:
    x = _distinct(np.random.default_rng(3), 20)
    x[5] = x[2]
    groups = find_near_duplicates(x, 0.98)
    out = duplicates_path(tmp_path / "photos-clusters.csv")
    assert out.name == "photos-clusters-duplicates.csv"
    write_duplicates(out, [f'img {i}, "q".png' for i in range(20)], groups)
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["group"], r["path"]) for r in rows] == [("0", 'img 2, "q".png'), ("0", 'img 5, "q".png')]
    assert float(rows[1]["similarity"]) == pytest.approx(1.0, abs=1e-5)
