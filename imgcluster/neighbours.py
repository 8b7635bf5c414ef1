"""Nearest-neighbour mining with FAISS on L2-normalised features (inner product = cosine)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster.errors import ImgclusterError

if TYPE_CHECKING:
    import torch

# Above this many vectors an exact search costs O(N^2) time; an IVF index keeps it near-linear.
IVF_THRESHOLD = 200_000
IVF_NPROBE = 16  # lists searched per query; with 4 * sqrt(N) lists this balances coarse and fine search costs
IVF_TRAIN_PER_LIST = 40
IVF_TRAIN_ITERATIONS = 10
SEARCH_BLOCK = 16_384  # queries per block: bounds the distance buffer to BLOCK x k
# The torch search holds a [block, N] similarity matrix: at most this many floats (1 GiB).
TORCH_SIMILARITY_BUDGET = 1 << 28
TORCH_BLOCK = 4096
EXACT_SIMILARITY_BUDGET = 1 << 26  # floats (256 MiB) for the CPU repair of rows IVF left short


# The longest row float32 can normalise: its squared length must stay below float32's largest value.
MAX_ROW_LENGTH = float(np.sqrt(np.finfo(np.float32).max))  # 1.8e19
_CHECK_ROWS = 65_536  # rows measured at once in float64, when the quick bound fails


def first_too_long(features: np.ndarray) -> tuple[int, float] | None:
    """(index, length) of the first row too long to normalise in float32, or None.

    Its squared length overflowed to infinity and the row became zeros, without a word: features
    near 1e30 all fell into one cluster of equal probabilities. The largest value bounds every
    row's length, so this costs one pass unless some value comes near that.
    """
    if features.size == 0:
        return None
    peak = max(float(np.max(features)), -float(np.min(features)))
    if peak * np.sqrt(features.shape[1]) < MAX_ROW_LENGTH:
        return None
    for start in range(0, len(features), _CHECK_ROWS):
        block = np.asarray(features[start : start + _CHECK_ROWS], dtype=np.float64)
        lengths = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = np.flatnonzero(lengths >= MAX_ROW_LENGTH)
        if bad.size:
            return start + int(bad[0]), float(lengths[bad[0]])
    return None


def l2_normalise(features: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# pip installs faiss-cpu and faiss-gpu-cu12 into the same `faiss` folder, each over the other's files.
MIXED_FAISS = (
    "faiss is broken: faiss-cpu and faiss-gpu-cu12 are both installed and overwrite each other; keep one "
    "(for the GPU build: pip uninstall -y faiss-cpu && pip install --force-reinstall --no-deps faiss-gpu-cu12, "
    "or make install-gpu)"
)


def load_faiss() -> ModuleType:
    """``import faiss``, or a one-line :class:`ImgclusterError` saying how to repair the install."""
    try:
        import faiss
    except AttributeError:  # a module half overwritten by the other wheel fails while it loads
        raise ImgclusterError(MIXED_FAISS) from None
    except ImportError as exc:
        raise ImgclusterError(f"faiss cannot be imported ({exc}); pip install faiss-cpu") from None
    return faiss


def faiss_has_gpu() -> bool:
    faiss = load_faiss()
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def build_index(x: np.ndarray, use_gpu: bool = False, seed: int = 0):  # noqa: ANN201 - faiss types
    faiss = load_faiss()

    n, d = x.shape
    if n > IVF_THRESHOLD:
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        # Coarse centroids need only a rough fit: 40 points per list (faiss warns below 39) and 10
        # Lloyd iterations. The defaults (256 per list, 25 iterations) made training alone cost
        # more than the search at 1M images (2e13 flops for 4,000 lists).
        ivf.cp.niter = IVF_TRAIN_ITERATIONS
        ivf.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = x[np.sort(rng.choice(n, size=min(n, nlist * IVF_TRAIN_PER_LIST), replace=False))]
        ivf.train(sample)
        ivf.nprobe = IVF_NPROBE
        index: Any = ivf
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
    if use_gpu:
        import torch

        if torch.cuda.is_available():
            if not faiss_has_gpu():  # faiss-cpu only (no `gpu` extra): exact search in torch on the GPU
                return knn_search_torch(features, k, torch.device("cuda"))
            try:
                return _faiss_search(features, k, True, seed)
            except RuntimeError:
                # faiss-gpu wheels on PyPI are built for compute capability 7.0-8.9: on newer GPUs
                # (Hopper and later) their kernels fail to launch, and the torch search takes over.
                return knn_search_torch(features, k, torch.device("cuda"))
    return _faiss_search(features, k, False, seed)


def _faiss_search(features: np.ndarray, k: int, use_gpu: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
    short = np.flatnonzero((indices < 0).any(axis=1))  # IVF pads with -1 when its probed lists hold < k+1 vectors
    if short.size:
        indices[short], sims[short] = _exact_rows(x, short, k)
    return indices, sims


def _exact_rows(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (self excluded) for a few ``rows``: the repair for rows an IVF search left short.

    Blocks of rows keep the [block, N] similarity buffer within EXACT_SIMILARITY_BUDGET floats.
    """
    block = max(1, EXACT_SIMILARITY_BUDGET // x.shape[0])
    indices = np.empty((rows.size, k), dtype=np.int64)
    sims = np.empty((rows.size, k), dtype=np.float32)
    for start in range(0, rows.size, block):
        part = rows[start : start + block]
        s = x[part] @ x.T
        s[np.arange(part.size), part] = -np.inf
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
        indices[start : start + part.size] = np.take_along_axis(top, order, 1)
        sims[start : start + part.size] = np.take_along_axis(s, indices[start : start + part.size], 1)
    return indices, sims


def knn_search_torch(features: np.ndarray, k: int, device: torch.device | str, block: int = TORCH_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours by blocked matrix products in torch, self excluded by index.

    The GPU path when faiss has no GPU support: a [block, N] similarity matrix at a time, so
    memory is O(block x N + N x d), never N x N. Same output as :func:`knn_search` with an exact
    index; products run in full float32 (TF32 off) so neighbour sets match faiss.
    """
    import torch

    x_np = l2_normalise(features)
    n = x_np.shape[0]
    if n < 2:
        raise ValueError("need at least two images to find neighbours")
    k = min(k, n - 1)
    device = torch.device(device)
    block = max(1, min(block, TORCH_SIMILARITY_BUDGET // n))
    indices = np.empty((n, k), dtype=np.int64)
    sims = np.empty((n, k), dtype=np.float32)
    with _full_float32_matmul():
        with torch.inference_mode():
            x = torch.from_numpy(x_np).to(device)
            for start in range(0, n, block):
                stop = min(start + block, n)
                s = x[start:stop] @ x.T
                local = torch.arange(stop - start, device=device)
                s[local, local + start] = -torch.inf
                values, found = torch.topk(s, k, dim=1)
                indices[start:stop] = found.cpu().numpy()
                sims[start:stop] = values.cpu().numpy()
    return indices, sims


@contextlib.contextmanager
def _full_float32_matmul() -> Iterator[None]:
    """TF32 off for the duration, whichever of torch's two precision APIs the caller used.

    Reading the legacy setting raises once the newer per-backend API has been used (torch refuses
    a mix), so the newer API is used exactly when the legacy one cannot be read.
    """
    import torch

    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:
        legacy = None
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision if legacy is None else legacy
    if legacy is None:
        matmul.fp32_precision = "ieee"
    else:
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if legacy is None:
            matmul.fp32_precision = previous
        else:
            torch.set_float32_matmul_precision(legacy)
