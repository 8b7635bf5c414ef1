"""Nearest-neighbour mining with FAISS on L2-normalised features (inner product = cosine)."""

from __future__ import annotations

import numpy as np

# Above this many vectors an exact search costs O(N^2) time; an IVF index keeps it near-linear.
IVF_THRESHOLD = 200_000
SEARCH_BLOCK = 16_384  # queries per block: bounds the distance buffer to BLOCK x k


def l2_normalise(features: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def faiss_has_gpu() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_index(x: np.ndarray, use_gpu: bool = False, seed: int = 0):  # noqa: ANN201 - faiss types
    import faiss

    n, d = x.shape
    if n > IVF_THRESHOLD:
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, nlist * 64), replace=False)]
        index.train(sample)
        index.nprobe = 16
    else:
        index = faiss.IndexFlatIP(d)
    if use_gpu and faiss_has_gpu():
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def knn_search(features: np.ndarray, k: int, use_gpu: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of every row, the row itself excluded: (indices [N,k], similarities [N,k]).

    Duplicate images can outrank the query itself, so self is removed by index, not by rank.
    """
    x = l2_normalise(features)
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least two images to find neighbours")
    k = min(k, n - 1)
    index = build_index(x, use_gpu=use_gpu, seed=seed)
    indices = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, SEARCH_BLOCK):
        stop = min(start + SEARCH_BLOCK, n)
        d, i = index.search(x[start:stop], k + 1)
        rows = np.arange(start, stop)[:, None]
        keep = i != rows
        # Rows where self was not returned (ties, IVF misses) keep their first k hits.
        keep[keep.sum(1) > k, k] = False
        indices[start:stop] = i[keep].reshape(-1, k)
        sims[start:stop] = d[keep].reshape(-1, k)
    return indices, sims
