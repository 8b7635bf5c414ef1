"""Spherical k-means baseline on the cached features, stored like any trained head.

Lloyd 1982; spherical variant: Dhillon & Modha 2001. Every clustering paper's baseline table runs
it on the same features. The algorithm (centring, greedy k-means++ seeding, Lloyd iterations,
restarts) is :mod:`imgcluster.kmeans`; this module keeps the best of ``nredo`` restarts and turns
it into a head. Features are centred by their mean before clustering (``centre``, on by default:
ACC 0.672 -> 0.726 on Fashion-MNIST, see :mod:`imgcluster.kmeans`); the mean is a buffer of the
head, so a checkpoint centres new images the same way.

Predictions are ``p(k | z) = softmax_k(z'^T c_k / T)`` with ``z'`` the centred, normalised feature.
The temperature ``T`` is calibrated on the training features against the other restarts that
reached an equally good optimum (mean similarity ``J / N`` within ``calibration_tolerance``,
relative, of the kept one): it minimises the cross-entropy of ``p`` against their labels (matched
to the kept clusters by the Hungarian method). Such restarts are partitions the objective cannot
tell apart, so an image's confidence estimates how likely an equally good k-means puts it in the
same cluster; restarts stuck in a clearly worse optimum (a merged pair of clusters) say nothing
about the images and are left out. When the equally good restarts agree everywhere the fit runs to
the grid's floor, ``T_MIN``; when no restart is equally good, all restarts are used (a softer,
conservative ``T``); with ``nredo = 1`` ``FALLBACK_TEMPERATURE`` is used. ``temperature`` set
explicitly overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from imgcluster.kmeans import project, spherical_kmeans
from imgcluster.matching import relabel
from imgcluster.objectives.base import COUNT, FRACTION, CheckedParams, Choices, Objective, Range

T_MIN, T_MAX = 0.005, 1.0  # calibration grid for the temperature (cosine similarities lie in [-1, 1])
FALLBACK_TEMPERATURE = 0.05  # without restarts to calibrate against; close to the calibrated values on real features
CALIBRATION_POINTS = 50_000  # rows used to calibrate T (a fixed, seeded subsample on large folders)


@dataclass
class KMeansParams(CheckedParams):
    nredo: int = 5  # restarts, best objective kept; the others calibrate the temperature
    niter: int = 50  # at most this many Lloyd iterations per restart (they stop once no label changes)
    # Each restart clusters its own seeded sample of at most this many points per centroid, then
    # labels every image, which keeps a million-image folder at CPU-minutes. The samples also make
    # equally good restarts differ where an image's cluster is uncertain, which is what calibrates
    # T: on the 10,000 Fashion-MNIST features (K = 10, seeds 0-2) 512 gave ACC 0.727-0.729 and ECE
    # 0.06-0.15, while 2048 (every image in every restart) gave the same ACC, restarts that agreed
    # almost everywhere, T at its floor and ECE 0.27 on two seeds of three.
    max_points_per_centroid: int = 512
    centre: bool = True  # subtract the features' mean before clustering (kept in the head for prediction)
    temperature: float | None = None  # None: calibrate against the restarts (see the module docstring)
    # Restarts whose mean similarity is within this fraction of the best one's calibrate T. Equally
    # good restarts differed by < 0.5 % on Fashion-MNIST and digits features, failed ones by > 4 %.
    calibration_tolerance: float = 0.01

    ranges: ClassVar[dict[str, Range | Choices]] = {
        "nredo": COUNT,
        "niter": COUNT,
        "max_points_per_centroid": COUNT,
        "temperature": Range(0, low_open=True, optional=True),  # None: calibrated
        "calibration_tolerance": FRACTION,  # relative to the best restart's mean similarity
    }


def calibrate_temperature(sims: np.ndarray, targets: list[np.ndarray]) -> float:
    """The ``T`` on a log grid in ``[T_MIN, T_MAX]`` minimising ``mean CE(softmax(sims / T), target)``.

    ``sims`` is ``[N, K]``, each target ``[N]`` (cluster ids of ``sims``' columns). The grid keeps
    this deterministic and free of optimiser settings; 121 points give 2 % steps in ``T``.
    """
    grid = np.geomspace(T_MIN, T_MAX, 121)
    s = sims.astype(np.float64)
    rows = np.arange(s.shape[0])
    picked = np.stack([s[rows, t] for t in targets])  # [R, N]
    best_t, best_ce = float(grid[0]), np.inf
    for t in grid:
        scaled = s / t
        top = scaled.max(1)
        lse = top + np.log(np.exp(scaled - top[:, None]).sum(1))  # [N]
        ce = float((lse[None, :] - picked / t).mean())
        if ce < best_ce - 1e-12:
            best_t, best_ce = float(t), ce
    return best_t


class KMeans(Objective):
    """Spherical k-means (Lloyd 1982; Dhillon & Modha 2001): maximises ``sum_i max_k z_i'^T c_k``.

    Closed-form (``trainable = False``): :meth:`fit` runs :func:`imgcluster.kmeans.spherical_kmeans`,
    and the unit centroids ``[K, d]``, the features' mean ``[d]`` and the temperature are
    persistent buffers, so a checkpoint predicts exactly as the fit did.
    """

    name = "kmeans"
    trainable = False
    Params = KMeansParams
    centroids: torch.Tensor
    mean: torch.Tensor
    temperature: torch.Tensor

    def __init__(self, in_dim: int, n_clusters: int, params: KMeansParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        self.register_buffer("centroids", torch.zeros(n_clusters, in_dim))
        self.register_buffer("mean", torch.zeros(in_dim))  # zeros: no centring
        self.register_buffer(
            "temperature",
            torch.tensor(FALLBACK_TEMPERATURE if params.temperature is None else float(params.temperature)),
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Heads saved before centring have no mean: a zero mean predicts exactly as they did."""
        if prefix + "centroids" in state_dict and prefix + "mean" not in state_dict:
            state_dict[prefix + "mean"] = torch.zeros(self.in_dim)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fit(self, features: np.ndarray, seed: int) -> None:
        """Run ``nredo`` seeded restarts, keep the best by ``J``, calibrate the temperature.

        Every draw comes from one generator seeded by ``seed``, so the same seed gives the same
        centroids.
        """
        p = self.params
        k = self.n_clusters
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        generator = torch.Generator().manual_seed(seed)
        result = spherical_kmeans(
            x, k, generator, restarts=p.nredo, iters=p.niter, max_points=p.max_points_per_centroid * k, centre=p.centre
        )
        best = result.best
        self.centroids.copy_(best.centroids)
        self.mean.copy_(result.mean)
        if p.temperature is not None:
            self.temperature.fill_(float(p.temperature))
            return
        floor = best.score - p.calibration_tolerance * abs(best.score)
        others = [run for run in result.restarts if run is not best]
        # Without an equally good restart, all of them: a conservative (softer) temperature.
        peers = [run for run in others if run.score >= floor] or others
        if not peers:
            self.temperature.fill_(FALLBACK_TEMPERATURE)
            return
        n = x.shape[0]
        rows = torch.randperm(n, generator=generator)[:CALIBRATION_POINTS].sort().values
        sims = (result.project(x[rows]) @ best.centroids.T).numpy()
        labels = best.labels[rows].numpy()
        targets = [relabel(labels, run.labels[rows].numpy(), k) for run in peers]
        self.temperature.fill_(calibrate_temperature(sims, targets))

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarities ``[N, K]`` of the centred features to the centroids."""
        return project(z, self.mean) @ self.centroids.to(z.device).T

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        """``softmax(z'^T c_k / T)`` as ``[1, N, K]``: the single head."""
        return (self.similarities(z) / self.temperature).softmax(-1).unsqueeze(0).to(z.dtype)

    @torch.no_grad()
    def explain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cosine similarity (of the centred features) to the assigned centroid and to the runner-up: the whole decision."""
        top = self.similarities(z).topk(2, dim=-1).values.to(z.dtype)
        return {"centroid_similarity": top[:, 0], "runner_up_similarity": top[:, 1]}
