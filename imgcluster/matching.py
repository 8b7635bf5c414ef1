"""The one-to-one matching of two labellings that keeps the most points together (Hungarian method).

Kuhn, "The Hungarian method for the assignment problem", 1955, through SciPy's
``linear_sum_assignment``. ACC matches clusters to classes with it; k-means matches one restart's
clusters to another's to calibrate its confidences.
"""

from __future__ import annotations

import numpy as np


def best_matching(rows_of: np.ndarray, cols_of: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The count table of ``shape`` (``table[r, c]``: points labelled ``r`` by ``rows_of`` and ``c`` by
    ``cols_of``) and the one-to-one match of rows to columns that keeps the most points, for any shape."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros(shape, dtype=np.int64)
    np.add.at(table, (rows_of, cols_of), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return table, rows, cols


def relabel(reference: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``labels`` (ids 0..k-1) renamed to ``reference``'s ids by the matching that agrees with it most."""
    _, rows, cols = best_matching(labels, reference, (k, k))
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return mapping[labels]
