"""The Hungarian matching shared by ACC and k-means' temperature calibration."""

import numpy as np

from imgcluster.matching import best_matching, relabel


def test_relabel_undoes_a_permutation() -> None:
    reference = np.array([0, 0, 1, 1, 2, 2, 2])
    assert np.array_equal(relabel(reference, np.array([2, 2, 0, 0, 1, 1, 0]), 3), [0, 0, 1, 1, 2, 2, 1])


def test_best_matching_keeps_the_most_points_for_any_shape() -> None:
    clusters = np.array([0, 0, 0, 1, 1, 2, 2, 3])
    classes = np.array([1, 1, 0, 0, 0, 1, 1, 0])
    table, rows, cols = best_matching(clusters, classes, (4, 2))
    assert table.tolist() == [[1, 2], [2, 0], [0, 2], [1, 0]]
    assert table[rows, cols].sum() == 4 and len(rows) == 2  # two classes: two clusters matched
    # A greedy pick of the largest cell first (cluster 0 -> class 1) would also give 4 here; with
    # cluster 2 -> class 1 taken, only the one-to-one optimum reaches 4 with cluster 1 -> class 0.
    assert sorted(zip(rows.tolist(), cols.tolist())) in ([(0, 1), (1, 0)], [(1, 0), (2, 1)])
