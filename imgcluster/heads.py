"""Small MLP cluster heads shared by the kNN-consistency objectives."""

from __future__ import annotations

import torch
from torch import nn


class MultiHead(nn.Module):
    """``H`` independent heads ``Linear(d, hidden) -> BN -> ReLU -> Linear(hidden, K)``.

    Several heads trained at once let the training keep the one with the lowest loss, a
    label-free way to survive a bad initialisation (SCAN, TEMI). The heads are evaluated as one
    batched matrix product so that 10 heads cost about as much as one.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int, hidden: int = 512) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.w1 = nn.Parameter(torch.empty(n_heads, in_dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_heads, 1, hidden))
        self.norm = nn.BatchNorm1d(n_heads * hidden)
        self.w2 = nn.Parameter(torch.empty(n_heads, hidden, n_clusters))
        self.b2 = nn.Parameter(torch.zeros(n_heads, 1, n_clusters))
        for w in (self.w1, self.w2):
            for h in range(n_heads):
                nn.init.kaiming_uniform_(w.data[h].T, a=5**0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[H, N, K]`` for features ``z`` of shape ``[N, d]``."""
        n = z.shape[0]
        h = torch.baddbmm(self.b1, z.unsqueeze(0).expand(self.n_heads, -1, -1), self.w1)  # [H, N, hidden]
        h = self.norm(h.permute(1, 0, 2).reshape(n, -1)).reshape(n, self.n_heads, -1).permute(1, 0, 2)
        return torch.baddbmm(self.b2, torch.relu(h), self.w2)
