"""Spherical k-means: the one implementation behind the k-means objective, TEMI's prototypes, the
centre objectives' seeds and ``choose_k``.

Lloyd, "Least squares quantization in PCM", 1982; spherical variant: Dhillon & Modha, "Concept
decompositions for large sparse text data using clustering", Machine Learning 42, 2001; seeding:
Arthur & Vassilvitskii, "k-means++", SODA 2007. On unit vectors ``z_i`` it maximises, over unit
centroids ``c_1..c_K``::

    J = sum_i max_k z_i^T c_k

Inputs are L2-normalised first and, with ``centre=True``, their mean is subtracted before they are
normalised again. Cached CNN features (post-ReLU) share a large mean direction, so uncentred cosine
similarities are all high and differ little; centring spreads them. On the efficientnet-lite0
features of the 10,000 Fashion-MNIST test images it moved k-means from ACC 0.672 ± 0.038 to
0.726 ± 0.0003 over seeds 0-2. The mean is returned with the centroids, and new data must be
centred by it (:meth:`KMeansFit.project`) to be compared with them.

Each restart seeds by greedy k-means++ (each step draws ``2 + ln K`` candidates in proportion to
the squared distance to the nearest chosen centre and keeps the one that lowers the potential most,
as scikit-learn does; on separated blobs it puts one seed per blob where random seeds often put
two in one), then runs Lloyd iterations (assign to the most similar centroid, set each centroid to
the normalised mean of its members; an empty cluster takes the point farthest from its centroid)
until no label changes. Every random draw comes from the ``torch.Generator`` given, on the CPU, so
the same generator state gives the same centroids; the arithmetic runs on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK = 65_536  # rows per similarity block when labelling all points: memory stays O(BLOCK * K)


@dataclass
class Restart:
    """One seeded run: unit centroids ``[K, d]``, every point's label ``[N]`` and its mean similarity ``J / N``."""

    centroids: torch.Tensor
    labels: torch.Tensor
    score: float


@dataclass
class KMeansFit:
    """All restarts of one fit and the mean subtracted before clustering (zeros without centring)."""

    mean: torch.Tensor  # [d]
    restarts: list[Restart]

    @property
    def best(self) -> Restart:
        """The restart with the highest ``J``; ties go to the earliest."""
        return max(self.restarts, key=lambda r: r.score)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the space the centroids live in: normalised, centred by the fit's mean, normalised."""
        return project(x, self.mean)


def project(x: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """Unit rows of ``normalise(x) - mean`` (of ``normalise(x)`` when ``mean`` is None)."""
    z = F.normalize(x.float(), dim=-1)
    return z if mean is None else F.normalize(z - mean.to(z), dim=-1)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Row indices ``[k]`` of greedy k-means++ seeds among the unit rows of ``x``.

    When fewer than ``k`` distinct points remain uncovered (all squared distances zero), the rest
    are drawn uniformly.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (2.0 - 2.0 * x @ x[chosen[0]]).clamp_min(0.0)
    for _ in range(1, k):
        weights = d2.double().cpu()
        if float(weights.sum()) <= 0:
            chosen.append(int(torch.randint(n, (1,), generator=generator)))
            continue
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator).to(x.device)
        new_d2 = torch.minimum(d2.unsqueeze(0), (2.0 - 2.0 * x[candidates] @ x.T).clamp_min(0.0))  # [trials, N]
        best = int(new_d2.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d2 = new_d2[best]
    return torch.tensor(chosen, dtype=torch.long)


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's most similar centroid and that similarity, computed in blocks of ``BLOCK`` rows."""
    labels, sims = [], []
    for start in range(0, x.shape[0], BLOCK):
        top = (x[start : start + BLOCK] @ centroids.T).max(-1)
        labels.append(top.indices)
        sims.append(top.values)
    return torch.cat(labels), torch.cat(sims)


def lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int) -> torch.Tensor:
    """At most ``iters`` Lloyd iterations from ``centroids`` ``[K, d]`` on unit rows ``x``; stops when no label changes."""
    k = centroids.shape[0]
    previous: torch.Tensor | None = None
    for _ in range(iters):
        labels, sims = assign(x, centroids)
        if previous is not None and torch.equal(labels, previous):
            break
        previous = labels.clone()
        counts = torch.bincount(labels, minlength=k)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # move each empty cluster onto one of the points its centroid fits worst
            far = sims.argsort()[: empty.numel()]
            labels[far] = empty
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        centroids = F.normalize(sums, dim=-1)
    return centroids


def spherical_kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    *,
    restarts: int = 1,
    iters: int = 50,
    max_points: int | None = None,
    centre: bool = True,
) -> KMeansFit:
    """Cluster the rows of ``x`` ``[N, d]`` into ``k`` groups by cosine similarity; see the module docstring.

    ``restarts`` independent seedings are run and all returned (:attr:`KMeansFit.best` is the one
    to keep). ``iters = 0`` returns the k-means++ seeds themselves. With ``max_points`` each restart
    seeds and iterates on its own random sample of that many rows, then labels every row, which
    bounds the time on large folders. ``centre`` subtracts the mean of the normalised rows first.
    """
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= {x.shape[0]} (the number of points), got k={k}")
    z = F.normalize(x.float(), dim=-1)
    mean = z.mean(0) if centre else torch.zeros(z.shape[1], device=z.device)
    if centre:
        z = F.normalize(z - mean, dim=-1)
    n = z.shape[0]
    runs = []
    for _ in range(restarts):
        sample = z
        if max_points is not None and n > max_points:
            sample = z[torch.randperm(n, generator=generator)[:max_points].to(z.device)]
        seeds = kmeans_plus_plus(sample, k, generator).to(z.device)
        centroids = lloyd(sample, sample[seeds], iters)
        labels, sims = assign(z, centroids)
        runs.append(Restart(centroids=centroids, labels=labels, score=float(sims.mean())))
    return KMeansFit(mean=mean, restarts=runs)
