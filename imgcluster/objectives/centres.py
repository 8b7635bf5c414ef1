"""What the centre-based objectives (SeCu, DSC2I) share: an MLP encoder onto the unit sphere,
learnable unit centres per head, and centre seeding on the encoded images."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcluster.kmeans import spherical_kmeans
from imgcluster.objectives.base import Objective

SEED_POINTS = 20_000  # rows the seeds are drawn from (a random sample on larger folders)


def unit_centres(n_heads: int, dim: int, n_clusters: int) -> torch.Tensor:
    """Random unit columns ``[n_heads, dim, n_clusters]``, the centres' start before seeding.

    On the ``meta`` device (a checkpoint's shapes are checked on it) only the shape is made:
    torch's meta ``randn`` and ``normalize`` import its compiler stack, seconds of a run that
    only loads a head.
    """
    if torch.empty(0).is_meta:
        return torch.empty(n_heads, dim, n_clusters)
    return F.normalize(torch.randn(n_heads, dim, n_clusters), dim=1)


@torch.no_grad()
def encode_with_batch_statistics(encoder: nn.Module, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Unit-norm ``encoder(x)`` as training sees it (BatchNorm on batch statistics), state untouched.

    A fresh encoder's running statistics (mean 0, variance 1) do not describe the data, so
    centres seeded from eval-mode outputs would sit in a different space from the first
    training batches. The running statistics are restored afterwards.
    """
    saved = {k: v.clone() for k, v in encoder.state_dict().items() if "running_" in k or "num_batches" in k}
    was_training = encoder.training
    encoder.train()
    pieces = torch.tensor_split(x, max(1, -(-x.shape[0] // chunk)))
    z = torch.cat([F.normalize(encoder(piece), dim=-1) for piece in pieces])
    encoder.train(was_training)
    encoder.load_state_dict(saved, strict=False)
    return z


class CentreObjective(Objective):
    """An encoder ``Linear-BN-ReLU-Linear`` shared by the heads, and ``[H, dim, K]`` centres.

    ``params`` needs ``hidden``, ``dim`` and ``n_heads``. Subclasses add their losses; predictions
    compare the unit representation ``z`` with the unit centres.
    """

    def __init__(self, in_dim: int, n_clusters: int, params: Any) -> None:
        super().__init__(in_dim, n_clusters, params)
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, params.hidden),
            nn.BatchNorm1d(params.hidden),
            nn.ReLU(),
            nn.Linear(params.hidden, params.dim),
        )
        self.centres = nn.Parameter(unit_centres(params.n_heads, params.dim, n_clusters))

    @property
    def n_heads(self) -> int:
        return self.params.n_heads

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm representation ``z`` of L2-normalised features ``x``."""
        return F.normalize(self.encoder(x), dim=-1)

    def unit_centres(self) -> torch.Tensor:
        """Centres with unit columns, ``[H, dim, K]``, so that ``||z - c||^2 = 2 - 2 c^T z``."""
        return F.normalize(self.centres, dim=1)

    @torch.no_grad()
    def seed_centres(self, features: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Greedy k-means++ seeds of the encoded ``features`` for every head (a different draw each); returns ``z``.

        Spread-out starting centres give each dense region its own centre; random ones often start
        two centres in one group and none in another, which the losses repair only slowly.
        """
        z = encode_with_batch_statistics(self.encoder, features)
        for head in range(self.n_heads):
            # Seeds only (no Lloyd steps), uncentred: the losses compare the raw z with the centres.
            seeds = spherical_kmeans(z, self.n_clusters, generator, iters=0, max_points=SEED_POINTS, centre=False)
            self.centres[head].copy_(seeds.best.centroids.T)
        return z
