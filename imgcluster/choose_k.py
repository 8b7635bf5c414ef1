"""Choose the number of clusters K without labels, from the cached features (``--clusters auto``).

Criterion: **modularity of the kNN graph** (Newman & Girvan, Phys. Rev. E 69, 2004) under the
k-means partition for each candidate K, with a one-standard-error rule for parsimony.

1. L2-normalise, centre, PCA to ``PCA_DIMS`` = 64 dimensions (seeded randomised SVD), re-normalise;
   at most ``MAX_POINTS`` = 20,000 images (a seeded sample) take part, which bounds the time.
2. Build the symmetrised, unweighted ``GRAPH_K`` = 10 nearest-neighbour graph (FAISS, cosine).
3. For each K in ``[k_min, k_max]``: spherical k-means (:mod:`imgcluster.kmeans`) with
   ``RESTARTS`` = 5 restarts, the partition with the highest mean similarity kept; score it by its modularity
   ``Q = sum_c [ e_cc / 2m - (d_c / 2m)^2 ]`` -- the share of kNN edges that stay inside clusters
   minus the share expected if cluster membership ignored the graph. This is what the default
   objective (SCAN, kNN consistency with a balance term) optimises, so a K with high Q is a K
   the head can actually realise.
4. Take the best K, estimate the standard error of its Q by the delete-half jackknife
   (``JACKKNIFE_HALVES`` = 20 random halves of the images, Q of the induced subgraphs; for
   d = n/2 the jackknife variance is the plain variance of the half-sample values), and return the
   **smallest** K whose Q is within one standard error of the best (Breiman's 1-SE rule): the Q
   curve of real features has a broad plateau, and inside it fewer clusters are easier to read.

Measured on one PCA-64 space and the same best-of-5 k-means partitions for every
partition-based criterion (scikit-learn's k-means for the rows of other criteria; the last row
rerun with the shared spherical k-means on 2026-11-29) (efficientnet-lite0 features; true K in brackets; blobs: 3, 5,
8, 12, 16 groups of 200 points in 128-d, centres 0.99 apart, isotropic noise of norm about 1):

=======================================  ==========  ========  ========  ==================
criterion (argmax over K = 2..20)        fmnist      digits    sample    blobs
                                         10,000(10)  1797(10)  125(5)    3/5/8/12/16
=======================================  ==========  ========  ========  ==================
eigengap, norm. Laplacian, 10-NN, 1280-d 8           5         7         all right
eigengap, same on PCA-64                 12          4         7         all right
silhouette (cosine, 3,000-image sample)  7           3         5         all right
Calinski-Harabasz                        2           2         2         all right
Davies-Bouldin                           10          3         18        all right
stability (mean ARI of 5 k-means runs)   2           3         6         3/6/8/13/18
kNN modularity, argmax                   13          9         5         all right
kNN modularity + 1-SE (this), seeds 0-2  10, 11, 11  7, 8, 7   5, 5, 5   all right
=======================================  ==========  ========  ========  ==================

Only modularity is near the truth on all three image sets. The eigengap also depends on the
graph's weighting: with 5-, 10- and 20-NN graphs weighted by similarity, 0/1 or a self-tuned heat
kernel it gave 8, 12, 17 or 20 on Fashion-MNIST -- its spectrum has no clear gap. On
Fashion-MNIST the modularity curve is a plateau from K = 10 to 14 (Q = 0.789 to 0.794), so the
argmax moves within it with the seed and the 1-SE rule picks its low end. The digits' ImageNet
features are weak (NMI 0.44 at K = 10), and every criterion under-counts there. Averaging Q over
the restarts instead of keeping the best one chose 7 for 8 separated blobs (k-means++
merged two blobs in 3 of 5 restarts), hence best-of-5. A kNN graph on the full 1280-d features
gave the same kind of choices as the PCA-64 graph (10-12 on Fashion-MNIST) at 6x the search CPU.
Cost for 10,000 x 1280: about 9.5 s of CPU (process time, both threads), 23 s wall on two cores
shared with a load average of 10.

Limits: modularity may merge clusters with fewer than about ``sqrt(edges / 2)`` internal edges
(its resolution limit, Fortunato & Barthélemy, PNAS 2007: a few dozen images in a 10,000-image
folder), and it finds the groups the *features* separate, which need not be the groups a person
would name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from imgcluster.errors import ParameterError, render
from imgcluster.kmeans import spherical_kmeans
from imgcluster.neighbours import knn_search, l2_normalise
from imgcluster.preflight import check_auto_k_fits, check_k_range

CRITERION = "knn-modularity"
DEFAULT_K_MIN = 2
DEFAULT_K_MAX = 20
PCA_DIMS = 64
GRAPH_K = 10
RESTARTS = 5
JACKKNIFE_HALVES = 20
KMEANS_ITERS = 100  # Lloyd iterations at most; on 64-d features they stop far earlier, once no label changes
MAX_POINTS = 20_000


@dataclass
class KChoice:
    """The chosen K, the evidence for it, and one line saying why."""

    k: int
    scores: dict[int, float]  # modularity Q per candidate K
    best_k: int  # K with the highest Q (k differs when a smaller K is within one standard error)
    standard_error: float  # jackknife standard error of Q at best_k
    explanation: str  # may name parameters as {placeholders} (errors.render)
    k_min: int
    k_max: int
    points: int  # images used (a seeded sample above MAX_POINTS)
    seconds: float
    criterion: str = CRITERION
    settings: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for the sidecar and checkpoint files."""
        return {
            "clusters_requested": "auto",
            "k": self.k,
            "criterion": self.criterion,
            # a list in K order: a {K: score} mapping would read "10" before "2" in the sorted-key JSON files
            "scores": [{"k": k, "score": round(self.scores[k], 6)} for k in sorted(self.scores)],
            "best_k": self.best_k,
            "standard_error": round(self.standard_error, 6),
            "k_min": self.k_min,
            "k_max": self.k_max,
            "points": self.points,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
            "explanation": render(self.explanation, {}),
        }


def modularity(graph: sp.csr_matrix, labels: np.ndarray) -> float:
    """Newman-Girvan modularity of ``labels`` on the symmetric adjacency matrix ``graph``."""
    two_m = float(graph.sum())
    if two_m == 0:
        return 0.0
    degree = np.asarray(graph.sum(1)).ravel()
    n_labels = int(labels.max()) + 1
    degree_per_cluster = np.bincount(labels, weights=degree, minlength=n_labels)
    coo = graph.tocoo()
    inside = float(coo.data[labels[coo.row] == labels[coo.col]].sum())
    return inside / two_m - float(((degree_per_cluster / two_m) ** 2).sum())


def knn_graph(z: np.ndarray, k: int) -> sp.csr_matrix:
    """Unweighted kNN graph, symmetrised (an edge when either is among the other's neighbours)."""
    n = z.shape[0]
    indices, _ = knn_search(z, min(k, n - 1))
    rows = np.repeat(np.arange(n), indices.shape[1])
    valid = indices.ravel() >= 0
    graph = sp.csr_matrix((np.ones(int(valid.sum())), (rows[valid], indices.ravel()[valid])), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def reduce(features: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """Unit vectors -> centred PCA to ``dims`` -> unit vectors: cosine geometry at a fraction of the cost."""
    from sklearn.decomposition import PCA

    x = l2_normalise(features)
    dims = min(dims, x.shape[1], x.shape[0] - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x).astype(np.float32)
    else:
        x = x - x.mean(0)
    return l2_normalise(x)


def kmeans_labels(z: np.ndarray, k: int, seed: int, restarts: int = RESTARTS) -> np.ndarray:
    """Spherical k-means (:mod:`imgcluster.kmeans`), the best of ``restarts`` seeded runs."""
    x = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    fit = spherical_kmeans(x, k, torch.Generator().manual_seed(seed), restarts=restarts, iters=KMEANS_ITERS)
    return fit.best.labels.numpy().astype(np.int64)


def jackknife_se(graph: sp.csr_matrix, labels: np.ndarray, halves: int, seed: int) -> float:
    """Delete-half jackknife standard error of the modularity (spread of Q over random halves)."""
    n = graph.shape[0]
    if n < 8 or halves < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(halves):
        keep = np.sort(rng.permutation(n)[: n // 2])
        values.append(modularity(graph[keep][:, keep], labels[keep]))
    return float(np.std(values, ddof=1))


def choose_k(
    features: np.ndarray,
    k_min: int = DEFAULT_K_MIN,
    k_max: int = DEFAULT_K_MAX,
    seed: int = 0,
    *,
    max_points: int = MAX_POINTS,
    graph_k: int = GRAPH_K,
    restarts: int = RESTARTS,
    pca_dims: int = PCA_DIMS,
) -> KChoice:
    """Choose K in ``[k_min, k_max]`` by kNN-graph modularity with the 1-SE rule (module docstring).

    ``k_max`` is lowered to ``n // 2`` (two images per cluster on average); ValueError when no
    candidate is left or the arguments are out of range.
    """
    start = time.perf_counter()
    n_all = features.shape[0]
    if k_min < 2:
        raise ParameterError(f"{{k_min}} must be at least 2, got {k_min}")
    check_k_range(k_min, k_max)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n_all, max_points, replace=False)) if n_all > max_points else np.arange(n_all)
    n = rows.size
    check_auto_k_fits(n_all, k_min, k_max, sampled=n)
    upper = min(k_max, n // 2)
    z = reduce(features[rows], pca_dims, seed)
    graph = knn_graph(z, graph_k)
    candidates = list(range(k_min, upper + 1))
    labels = {k: kmeans_labels(z, k, seed, restarts) for k in candidates}
    scores = {k: modularity(graph, labels[k]) for k in candidates}
    best = max(candidates, key=lambda k: scores[k])
    se = jackknife_se(graph, labels[best], JACKKNIFE_HALVES, seed)
    chosen = next(k for k in candidates if scores[k] >= scores[best] - se)
    capped = f" (capped at {upper} by the number of images)" if upper < k_max else ""
    if chosen == best:
        why = f"the most modular k-means partition of the {graph_k}-NN graph (Q={scores[best]:.3f})"
    else:
        why = (
            f"the fewest clusters within one standard error of the most modular k-means partition of the "
            f"{graph_k}-NN graph (Q={scores[chosen]:.3f} vs {scores[best]:.3f} ± {se:.3f} at K={best})"
        )
    sample = f"a sample of {n} of {n_all} images" if n < n_all else f"{n} images"
    seconds = time.perf_counter() - start
    explanation = f"{{n_clusters}} auto chose K={chosen} of {k_min}-{upper}{capped}: {why}; {sample}, {seconds:.1f}s"
    if n <= graph_k + 1:  # every image links to every other: a complete graph, where no split beats chance
        explanation += (
            f"; with {n} images each is a neighbour of every other in the {graph_k}-NN graph, so no K can be judged "
            "and this one is a guess: give {n_clusters} a number"
        )
    elif scores[best] <= 0:  # no partition keeps more neighbour links inside clusters than chance would
        explanation += "; no K shows cluster structure (every Q <= 0), so this K is a guess: give {n_clusters} a number"
    return KChoice(
        k=chosen,
        scores=scores,
        best_k=best,
        standard_error=se,
        explanation=explanation,
        k_min=k_min,
        k_max=k_max,
        points=n,
        seconds=seconds,
        settings={"pca_dims": int(z.shape[1]), "graph_k": graph_k, "restarts": restarts, "jackknife_halves": JACKKNIFE_HALVES},
    )
