"""Outlier flags: planted far points are found, ordinary members are not, small clusters are left alone."""

from __future__ import annotations

import numpy as np
import pytest

from imgcluster.errors import ParameterError
from imgcluster.outliers import MIN_CLUSTER_SIZE, RULE, centre_distances, find_outliers, robust_thresholds


def _clusters(rng: np.random.Generator, k: int = 3, per: int = 100, dim: int = 64, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    x = centres[labels] + spread * rng.normal(size=(k * per, dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


def test_planted_far_points_are_flagged_and_members_are_not() -> None:
    rng = np.random.default_rng(0)
    x, labels = _clusters(rng)
    planted = [5, 150, 260]
    x[planted] = rng.normal(size=(3, x.shape[1])).astype(np.float32)  # random directions: far from every centre
    confidence = np.full(len(x), 0.9)
    found = find_outliers(x, labels, confidence)
    flagged = set(np.flatnonzero(found.far_from_centre).tolist())
    assert set(planted) <= flagged
    assert len(flagged - set(planted)) <= 3  # chi-like tails: ~1 % of ordinary members lie past the robust 3-sigma cut
    assert not found.low_confidence.any()
    assert found.count == len(flagged)
    assert list(found.reasons()[planted]) == ["far-from-centre"] * 3
    assert found.reasons()[0] == ""


def test_low_confidence_flags_and_combined_reason() -> None:
    rng = np.random.default_rng(1)
    x, labels = _clusters(rng)
    x[7] = rng.normal(size=x.shape[1])
    confidence = np.full(len(x), 0.95)
    confidence[[7, 42]] = [0.3, 0.49]
    found = find_outliers(x, labels, confidence, min_confidence=0.5)
    assert {7, 42} <= set(np.flatnonzero(found.flags).tolist())
    assert set(np.flatnonzero(found.low_confidence).tolist()) == {7, 42}
    assert found.reasons()[7] == "low-confidence+far-from-centre"
    assert found.reasons()[42] == "low-confidence"
    assert find_outliers(x, labels, confidence, min_confidence=0.0).low_confidence.sum() == 0


def test_thresholds_follow_each_clusters_spread() -> None:
    """A loose cluster gets a looser cut than a tight one: one global cut would flag it whole."""
    rng = np.random.default_rng(2)
    tight, _ = _clusters(rng, k=1, spread=0.05)
    loose, _ = _clusters(rng, k=1, spread=0.6)
    x = np.concatenate([tight, loose])
    labels = np.repeat([0, 1], 100)
    distance, centres = centre_distances(x, labels)
    thresholds = robust_thresholds(distance, labels)
    assert thresholds[1] > 3 * thresholds[0]
    assert set(centres) == {0, 1}
    assert find_outliers(x, labels, np.ones(200)).far_from_centre.sum() <= 4  # ~0.3 % of normal data lies past 3 sigma


def test_small_clusters_and_identical_members_are_not_flagged() -> None:
    rng = np.random.default_rng(3)
    x, labels = _clusters(rng, k=2, per=50)
    x = np.concatenate([x, rng.normal(size=(MIN_CLUSTER_SIZE - 1, x.shape[1])).astype(np.float32)])
    labels = np.concatenate([labels, np.full(MIN_CLUSTER_SIZE - 1, 2)])
    found = find_outliers(x, labels, np.ones(len(x)))
    assert found.thresholds[2] == float("inf")
    assert not found.far_from_centre[labels == 2].any()
    same = np.repeat(x[:1], 20, axis=0).astype(np.float16).astype(np.float32)
    same[3] += np.float32(1e-3)  # float16 rounding-sized difference
    assert not find_outliers(same, np.zeros(20, int), np.ones(20)).flags.any()


def test_validation_and_empty_input() -> None:
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ParameterError, match="min_confidence must lie in"):
        find_outliers(x, np.zeros(3, int), np.ones(3), min_confidence=1.5)
    with pytest.raises(ParameterError, match="mad_factor"):
        find_outliers(x, np.zeros(3, int), np.ones(3), mad_factor=0)
    with pytest.raises(ValueError):
        find_outliers(x, np.zeros(2, int), np.ones(3))
    assert find_outliers(np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros(0)).count == 0


def test_default_ignores_confidence() -> None:
    """An unsure head is not a sign of a stray: by default only the distance test flags (14.6 % -> 2.7 % on Fashion-MNIST)."""
    rng = np.random.default_rng(4)
    x, labels = _clusters(rng)
    confidence = rng.uniform(0.2, 0.6, size=len(x))  # a head unsure about most images, as on a small folder
    found = find_outliers(x, labels, confidence)
    assert not found.low_confidence.any()
    assert found.count <= 0.03 * len(x)
    assert find_outliers(x, labels, confidence, min_confidence=0.5).low_confidence.mean() > 0.5  # still there when asked
    assert found.summary()["rule"] == RULE
