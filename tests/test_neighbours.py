import numpy as np

from imgcluster.neighbours import knn_search, l2_normalise


def test_matches_brute_force_and_excludes_self() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    idx, sims = knn_search(x, 5)
    z = l2_normalise(x)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    expected = np.argsort(-s, axis=1)[:, :5]
    assert (idx != np.arange(300)[:, None]).all()
    assert np.array_equal(np.sort(idx, 1), np.sort(expected, 1))
    assert np.allclose(sims, np.take_along_axis(s, idx, 1), atol=1e-5)


def test_duplicates_still_exclude_self() -> None:
    x = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 2, 3]]
    idx, _ = knn_search(x, 2)
    assert (idx != np.arange(6)[:, None]).all()
    assert set(idx[0]) == {1, 2}


def test_k_capped_by_n() -> None:
    idx, _ = knn_search(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32), 10)
    assert idx.shape == (4, 3)
