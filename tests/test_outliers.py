"""Outlier flags: planted far points and planted groups are found, ordinary members are not, small clusters are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, copy_sample, picture

import imgcluster
from imgcluster.errors import ParameterError
from imgcluster.neighbours import knn_search
from imgcluster.outliers import (
    ISOLATION_K_MIN,
    MIN_CLUSTER_SIZE,
    RULE,
    centre_distances,
    find_outliers,
    isolation_k,
    local_outlier_factor,
    robust_thresholds,
)


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
    assert found.isolated[planted].all()  # far from everything, so also isolated from the folder
    assert found.count == len(flagged | set(np.flatnonzero(found.isolated).tolist()))
    assert list(found.reasons()[planted]) == ["far-from-centre+isolated"] * 3
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
    assert found.reasons()[7] == "low-confidence+far-from-centre+isolated"  # all three tests, in this order
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


def _diverse_cluster_with_a_planted_group(seed: int, dim: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three tight clusters of 100 and a diverse one of 20 (as 68 different wallpapers are): 16 members in their own
    directions at varied distances from its centre, and 4 near-identical strays a little farther out, together."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    tight = centres[:3].repeat(100, 0) + 0.15 * rng.normal(size=(300, dim)) / np.sqrt(dim)
    u = rng.normal(size=(16, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    diverse = centres[3] + rng.uniform(0.3, 1.2, size=(16, 1)) * u
    v = rng.normal(size=dim)
    strays = centres[3] + 2.0 * v / np.linalg.norm(v) + 0.05 * rng.normal(size=(4, dim)) / np.sqrt(dim)
    x = np.concatenate([tight, diverse, strays]).astype(np.float32)
    return x, np.repeat([0, 1, 2, 3], [100, 100, 100, 20]), np.arange(len(x)) >= 316


def test_a_planted_group_that_shares_a_cluster_is_found() -> None:
    """Four strays that arrive together pull their cluster's centre and widen its spread, so the distance test
    misses them (the wallpapers' case); their 10th neighbour lies outside the group, so their LOF gives them away."""
    whole_group, by_distance = 0, 0
    for seed in range(10):
        x, labels, strays = _diverse_cluster_with_a_planted_group(seed)
        found = find_outliers(x, labels, np.ones(len(x)))
        whole_group += bool(found.flags[strays].all())
        by_distance += bool(found.far_from_centre[strays].all())
        assert found.flags[~strays].mean() < 0.03
        if found.isolated[strays].all():
            assert set(found.reasons()[strays]) <= {"isolated", "far-from-centre+isolated"}
    assert by_distance <= 1  # the distance test alone: measured 1 of 10 seeds
    assert whole_group >= 7  # measured 8 of 10


def test_ordinary_gaussian_clusters_are_rarely_isolated() -> None:
    """Nothing odd in the folder: the floors keep the tail of a nearly uniform density unflagged
    (these draws: 0.7 %; without the floors 2.4 %, with a LOF floor of 1.2 instead of 1.3 1.7 %)."""
    rng = np.random.default_rng(5)
    shares = []
    for n in (100, 300):
        for k in (1, 3):
            for _ in range(3):
                centres = rng.normal(size=(k, 64))
                centres /= np.linalg.norm(centres, axis=1, keepdims=True)
                labels = rng.integers(0, k, n)
                x = (centres[labels] + 0.15 * rng.normal(size=(n, 64)) / 8).astype(np.float32)
                found = find_outliers(x, labels, np.ones(n))
                shares.append(found.isolated.mean())
                assert found.summary()["isolated"] == int(found.isolated.sum())
    assert np.mean(shares) < 0.015


def test_isolation_needs_enough_images_and_survives_duplicates() -> None:
    rng = np.random.default_rng(6)
    assert isolation_k(2 * ISOLATION_K_MIN - 1) == 0 and isolation_k(20) == 10 and isolation_k(2000) == 40 and isolation_k(10**6) == 50
    few = rng.normal(size=(2 * ISOLATION_K_MIN - 1, 16)).astype(np.float32)
    found = find_outliers(few, np.zeros(len(few), int), np.ones(len(few)))
    assert not found.isolated.any() and np.isnan(found.isolation).all() and found.summary()["isolation_threshold"] is None
    copies = np.repeat(rng.normal(size=(3, 16)), 12, axis=0).astype(np.float32)  # three images, twelve copies each
    lof = local_outlier_factor(copies, 10)
    assert np.isfinite(lof).all() and np.allclose(lof, 1.0)


def test_a_given_neighbour_search_replaces_the_isolation_tests_own() -> None:
    """Training's kNN search, run at more neighbours than the isolation test needs, gives the same LOF and flags."""
    rng = np.random.default_rng(7)
    x, labels = _clusters(rng, per=40)
    k = isolation_k(len(x))
    searched = knn_search(x, k + 15)
    np.testing.assert_allclose(local_outlier_factor(x, k, neighbours=searched), local_outlier_factor(x, k), rtol=1e-6)
    own, shared = find_outliers(x, labels, np.ones(len(x))), find_outliers(x, labels, np.ones(len(x)), neighbours=searched)
    assert np.array_equal(own.flags, shared.flags) and own.isolation_threshold == pytest.approx(shared.isolation_threshold)


def test_a_cold_assign_runs_one_neighbour_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training mines its kNN at max(knn, the isolation test's k) and the outlier test reuses it: one search, the
    same flags as a search of its own. ``knn=5`` is below the isolation test's 10, so the shared search must be deeper."""
    import imgcluster.neighbours as neighbours

    folder = copy_sample(tmp_path / "photos", CLASSES[:3], per_class=8)
    searches: list[int] = []
    search = neighbours._faiss_search

    def counted(features: np.ndarray, k: int, use_gpu: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
        searches.append(k)
        return search(features, k, use_gpu, seed)

    monkeypatch.setattr(neighbours, "_faiss_search", counted)
    result = imgcluster.cluster_folder(
        folder, n_clusters=3, knn=5, names=False, cache_dir=tmp_path / "cache", model="efficientnet-lite0", workers=0, device="cpu"
    )
    assert searches == [isolation_k(24)]
    features = result.embeddings.features
    alone = find_outliers(features, result.cluster, result.confidence)
    assert np.array_equal(result.outliers.flags, alone.flags)
    np.testing.assert_allclose(result.outliers.isolation, alone.isolation, rtol=1e-5)


def _copies_with_a_resave(rng: np.random.Generator, dim: int = 64) -> np.ndarray:
    """24 copies of one picture (float16 rounding apart), a re-save at cosine distance 0.03 and an upscale at 0.0015 (as
    efficientnet-lite0 puts them: 0.015-0.033 and 0.0006-0.0015), then a different picture at 0.3."""
    base = np.abs(rng.normal(size=dim))  # non-negative, as pooled activations are
    base /= np.linalg.norm(base)

    def at(distance: float) -> np.ndarray:
        v = rng.normal(size=dim)
        v -= (v @ base) * base
        return (1.0 - distance) * base + np.sqrt(1.0 - (1.0 - distance) ** 2) * v / np.linalg.norm(v)

    rows = [base] * 24 + [at(0.03), at(0.0015), at(0.3)]
    return np.asarray(rows).astype(np.float16).astype(np.float32)


def test_a_resave_among_copies_is_neither_far_nor_isolated() -> None:
    """Copies have no spread, so any scale taken from them calls a re-save of the same picture a stray (it was: LOF 15-32
    and past the 0.0045 distance cut); distances under NEAR_COPY_DISTANCE are one picture. A different picture still is."""
    x = _copies_with_a_resave(np.random.default_rng(8))
    found = find_outliers(x, np.zeros(len(x), int), np.ones(len(x)))
    assert np.flatnonzero(found.flags).tolist() == [26]
    assert found.reasons()[26] == "far-from-centre+isolated"
    assert found.isolation[24] > found.isolation_threshold  # the LOF alone would call the re-save isolated


def test_a_folder_of_copies_flags_no_resave(tmp_path: Path) -> None:
    """The new-user pass: 24 copies of one picture, a re-saved JPEG and a 2x upscale of it; nothing is an outlier."""
    folder = tmp_path / "copies"
    folder.mkdir()
    original = picture(3)
    for i in range(24):
        original.save(folder / f"copy{i:02d}.png")
    original.save(folder / "resave.jpg", quality=85)
    original.resize((2 * original.width, 2 * original.height)).save(folder / "upscale.png")
    result = imgcluster.cluster_folder(
        folder, n_clusters=2, names=False, cache_dir=tmp_path / "cache", model="efficientnet-lite0", workers=0, device="cpu"
    )
    assert result.outliers.count == 0, dict(zip(result.paths, result.outliers.reasons()))
    assert np.isfinite(result.outliers.isolation_threshold)  # the isolation test ran (26 images)
