"""What the centre-based objectives (SeCu, DSC2I) share: an MLP encoder onto the unit sphere,
learnable unit centres per head, and centre seeding on the encoded images."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcluster.objectives.base import Objective


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


@torch.no_grad()
def kmeans_pp_seeds(z: torch.Tensor, k: int, generator: torch.Generator, max_points: int = 20_000) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur and Vassilvitskii, 2007) of ``k`` unit centres ``[d, k]``.

    Spread-out starting centres give each dense region its own centre; random ones often start
    two centres in one group and none in another, which the losses repair only slowly. Each
    step draws ``2 + log k`` candidates by squared distance and keeps the one that lowers the
    potential most (as scikit-learn does). Seeds from at most ``max_points`` random rows of ``z``.
    """
    n = z.shape[0]
    if n > max_points:
        z = z[torch.randperm(n, generator=generator)[:max_points].to(z.device)]
        n = max_points
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (2.0 - 2.0 * z @ z[chosen[0]]).clamp_min(0.0)
    for _ in range(1, k):
        weights = d2.double().cpu()
        if float(weights.sum()) <= 0:  # fewer distinct points than centres
            chosen.append(int(torch.randint(n, (1,), generator=generator)))
            continue
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator).to(z.device)
        new_d2 = torch.minimum(d2.unsqueeze(0), (2.0 - 2.0 * z[candidates] @ z.T).clamp_min(0.0))  # [trials, n]
        best = int(new_d2.sum(1).argmin())
        chosen.append(int(candidates[best]))
        d2 = new_d2[best]
    return z[chosen].T.contiguous()


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
        self.centres = nn.Parameter(F.normalize(torch.randn(params.n_heads, params.dim, n_clusters), dim=1))

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
        """k-means++ seeds of the encoded ``features`` for every head (a different draw each); returns ``z``."""
        z = encode_with_batch_statistics(self.encoder, features)
        self.centres.copy_(torch.stack([kmeans_pp_seeds(z, self.n_clusters, generator) for _ in range(self.n_heads)]))
        return z
