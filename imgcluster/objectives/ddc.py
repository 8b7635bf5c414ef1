"""DDC: deep divergence-based clustering, optionally with unsupervised companion objectives.

Kampffmeyer, Løkse, Bianchi, Livi, Salberg, Jenssen, "Deep divergence-based approach to
clustering", Neural Networks 113, 2019; companion objectives from Trosten, Strauman, Kampffmeyer,
Jenssen, "Recurrent deep divergence-based clustering for simultaneous feature learning and
clustering of variable length time series", ICASSP 2019 (DDC-UCO).

Each head is ``Linear(d, hidden) -> ReLU -> BatchNorm -> Linear(hidden, K) -> softmax``. For a
batch of ``n`` anchors, ``A`` is the ``[n, K]`` soft assignment, ``h`` the ``[n, hidden]`` output of
the BatchNorm and ``K_h`` the Gaussian kernel on it::

    K_ij   = exp(-||h_i - h_j||^2 / (2 sigma^2)),  sigma^2 = rel_sigma * median_{i<j} ||h_i - h_j||^2
             (the median of the squared pairwise distances, detached as in the authors' code; they
             take the median over the full n x n matrix, zero diagonal included, which at n = 512
             gives a sigma^2 0.03 % smaller)
    d_cs(A, K) = 2/(K(K-1)) * sum_{p<q} a_p^T K a_q / sqrt(a_p^T K a_p * a_q^T K a_q)
    M_iq   = exp(-||A_i - e_q||^2)
    L_DDC  = d_cs(A, K_h) + 2/(n(n-1)) * sum_{i<j} (A A^T)_ij + d_cs(M, K_h)

``d_cs`` is the mean cosine, in the kernel's feature space, between the cluster densities: 0 when
the clusters are separated (and compact, through ``K_h``), 1 when they coincide. The second term is
the mean over the ``n(n-1)/2`` pairs of the rows' inner products (the paper writes ``triu(A A^T)``
and divides by the number of pairs too); it is small when rows are near the simplex corners and
spread over the clusters. The third term pulls the cluster densities towards the corners.

With ``uco`` the companion objectives add ``uco_weight * sum_l d_cs(A, K^(l))`` over the layers in
``uco_layers``: ``input`` (the cached, L2-normalised features the head sees: on frozen features
this is the "encoder" output) and ``relu`` (the head's hidden layer after ReLU, before the
BatchNorm). Each uses the vector Gaussian kernel with the same median rule.

An optional kNN consistency term, ``neighbour_weight * -mean_i log <p(a_i), p(n_i)>`` (SCAN's
first term), is off by default (weight 0) so the objective stays the paper's.

The head with the lowest summed loss is kept (several heads survive a bad initialisation).

Batch size: the kernels make a step O(n^2) in the batch, but at n <= 1024 the head's first layer
still dominates the cost. The paper trains with n = 120 (Adam, lr 1e-3, gradient clip 10); on cached
Fashion-MNIST features the lowest-loss head of 5 reached ACC 0.70-0.76 at n = 256 or 512 and
0.65 at n = 120, where the noisier loss no longer ranks the heads. The default batch (512) suits it.
The paper's gradient clip (10) is not applied: on those features the gradient norm of all five
heads together stayed below 4 through training (median 0.36, seed 0), so the clip would never act.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from imgcluster.objectives.base import HEADS, POSITIVE, WEIGHT, WIDTH, Batch, CheckedParams, Choices, Objective, Range, StepOutput

EPS = 1e-9  # the authors' floor: an empty cluster gives a_p^T K a_q = 0 -> ratio eps/eps = 1, the worst score
UCO_LAYERS = ("input", "relu")


@dataclass
class DDCParams(CheckedParams):
    # Heads trained side by side; the lowest-loss one is kept. DDC's result depends strongly on the
    # initialisation and its loss ranks heads well: on Fashion-MNIST features (batch 256-512) one head
    # averaged ACC 0.67, the lowest-loss of 5 0.70-0.76. CPU time grows about linearly with the heads.
    n_heads: int = 5
    hidden: int = 100  # width of h, the layer the kernel is computed on (paper: 100)
    rel_sigma: float = 0.15  # sigma^2 = rel_sigma * median squared distance in the batch (paper: 0.15)
    uco: bool = False  # add the unsupervised companion objectives (CLI: --uco)
    uco_weight: float = 0.01  # lambda of the companion objectives (paper: 0.01)
    uco_layers: str = "input,relu"  # comma-separated subset of "input", "relu" (see the module docstring)
    neighbour_weight: float = 0.0  # weight of the kNN consistency term; 0 keeps the paper's objective

    ranges: ClassVar[dict[str, Range | Choices]] = {
        "n_heads": HEADS,
        "hidden": WIDTH,
        "rel_sigma": POSITIVE,  # a kernel bandwidth
        "uco_weight": WEIGHT,
        "neighbour_weight": WEIGHT,
        "uco_layers": Choices(UCO_LAYERS, separator=","),
    }


# --- the divergence maths, as pure functions -------------------------------------------------------


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``[..., n, n]`` of the rows of ``x`` ``[..., n, m]``.

    Uses the inner-product expansion (``torch.cdist`` has no usable gradient at zero distance).
    """
    sq = (x * x).sum(-1)
    return (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * x @ x.transpose(-1, -2)).clamp_min(0.0)


def gaussian_kernel(x: torch.Tensor, rel_sigma: float) -> torch.Tensor:
    """Gaussian kernel ``[..., n, n]`` with ``sigma^2 = rel_sigma * median_{i<j} ||x_i - x_j||^2``.

    The bandwidth is detached (as in the authors' code; their median also counts the zero
    diagonal): it follows the data's scale but is not a quantity the network can shrink to fake a
    compact clustering.
    """
    dist = squared_distances(x)
    n = x.shape[-2]
    rows, cols = torch.triu_indices(n, n, offset=1, device=x.device)
    sigma2 = rel_sigma * dist.detach()[..., rows, cols].median(-1).values
    sigma2 = sigma2.clamp_min(EPS)[..., None, None]
    return torch.exp(-dist / (2.0 * sigma2))


def cs_divergence(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``d_cs(A, K) = 2/(K(K-1)) sum_{p<q} a_p^T K a_q / sqrt(a_p^T K a_p a_q^T K a_q)``.

    ``a`` is ``[..., n, K]`` (columns ``a_p`` are cluster membership vectors), ``kernel`` ``[..., n, n]``
    (broadcast over leading dims); returns ``[...]``. Numerator and squared denominator are floored
    at ``EPS`` and ``EPS^2``, so an empty cluster scores 1 against every other, the worst value.
    """
    k = a.shape[-1]
    nom = a.transpose(-1, -2) @ kernel @ a  # [..., K, K]
    diag = torch.diagonal(nom, dim1=-2, dim2=-1)
    denom_sq = diag.unsqueeze(-1) * diag.unsqueeze(-2)
    ratio = nom.clamp_min(EPS) / denom_sq.clamp_min(EPS**2).sqrt()
    return ratio.triu(1).sum((-2, -1)) * (2.0 / (k * (k - 1)))


def orthogonality(a: torch.Tensor) -> torch.Tensor:
    """``2/(n(n-1)) sum_{i<j} (A A^T)_ij`` for ``a`` ``[..., n, K]``, in O(nK) via ``|sum_i a_i|^2``."""
    n = a.shape[-2]
    total = a.sum(-2)
    pair_sum = 0.5 * ((total * total).sum(-1) - (a * a).sum((-2, -1)))
    return pair_sum * (2.0 / (n * (n - 1)))


def simplex_memberships(a: torch.Tensor) -> torch.Tensor:
    """``M_iq = exp(-||A_i - e_q||^2)``: closeness of each row to each corner of the simplex."""
    return torch.exp(-((a * a).sum(-1, keepdim=True) - 2.0 * a + 1.0))


def ddc_terms(
    a: torch.Tensor, hidden: torch.Tensor, rel_sigma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three DDC terms ``(d_cs(A, K_h), orthogonality, d_cs(M, K_h))``, each ``[...]``."""
    kernel = gaussian_kernel(hidden, rel_sigma)
    return cs_divergence(a, kernel), orthogonality(a), cs_divergence(simplex_memberships(a), kernel)


# --- the heads -------------------------------------------------------------------------------------


class DDCHeads(nn.Module):
    """``H`` independent ``Linear -> ReLU -> BatchNorm -> Linear`` heads.

    Differs from :class:`imgcluster.heads.MultiHead` in the order of ReLU and BatchNorm (the
    paper's) and in returning the hidden layers the kernels need. The first layers of all heads
    are one ``Linear(d, H * hidden)`` (each head still has its own weights and BatchNorm
    statistics); the second layers are one batched product.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int, hidden: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.hidden = hidden
        self.first = nn.Linear(in_dim, n_heads * hidden)  # same default initialisation as H Linear(d, hidden)
        self.norm = nn.BatchNorm1d(n_heads * hidden)
        self.w2 = nn.Parameter(torch.empty(n_heads, hidden, n_clusters))
        self.b2 = nn.Parameter(torch.empty(n_heads, 1, n_clusters))
        bound = hidden**-0.5  # nn.Linear's default initialisation, head by head
        for h in range(n_heads):
            nn.init.kaiming_uniform_(self.w2.data[h].T, a=5**0.5)
        nn.init.uniform_(self.b2, -bound, bound)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For ``z`` ``[N, d]``: logits ``[H, N, K]``, hidden ``h`` after BN and after ReLU, ``[H, N, hidden]``."""
        n = z.shape[0]
        relu = torch.relu(self.first(z))  # [N, H * hidden]
        h = self.norm(relu)

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(n, self.n_heads, self.hidden).transpose(0, 1)  # [H, N, hidden]

        h_heads = split(h)
        return torch.baddbmm(self.b2, h_heads, self.w2), h_heads, split(relu)


# --- the objective ---------------------------------------------------------------------------------


class DDC(Objective):
    """Deep divergence-based clustering (Kampffmeyer et al. 2019), optionally with UCO (Trosten et al. 2019).

    Per head, ``L = d_cs(A, K_h) + 2/(n(n-1)) sum_{i<j} (A A^T)_ij + d_cs(M, K_h)``
    ``[+ uco_weight * sum_l d_cs(A, K^(l))] [+ neighbour_weight * -mean log <p(a), p(n)>]``; the
    module docstring defines every symbol. The loss is O(n^2) in the batch size (the kernels).
    """

    name = "ddc"
    Params = DDCParams

    def __init__(self, in_dim: int, n_clusters: int, params: DDCParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        layers = tuple(s.strip() for s in str(params.uco_layers).split(",") if s.strip())
        self.uco_layers = layers if params.uco else ()
        self.heads = DDCHeads(in_dim, n_clusters, params.n_heads, params.hidden)

    @property
    def n_heads(self) -> int:
        return self.params.n_heads

    def step(self, batch: Batch) -> StepOutput:
        p = self.params
        n = batch.anchors.shape[0]
        use_neighbours = p.neighbour_weight > 0
        # With the kNN term the neighbours share the forward pass (and so the BatchNorm statistics);
        # the DDC terms use the anchors only.
        z = batch.stacked() if use_neighbours else batch.anchors
        logits, hidden, relu = self.heads(z)
        probs = logits.softmax(-1)
        a = probs[:, :n]
        d_hidden, ortho, d_simplex = ddc_terms(a, hidden[:, :n], p.rel_sigma)
        per_head = d_hidden + ortho + d_simplex
        logs: dict[str, float | torch.Tensor] = {
            "d_cs_hidden": d_hidden.detach().mean(),
            "orthogonality": ortho.detach().mean(),
            "d_cs_simplex": d_simplex.detach().mean(),
        }
        if self.uco_layers:
            companion = torch.zeros_like(per_head)
            if "input" in self.uco_layers:
                # The input kernel does not depend on the head: one [n, n] matrix, broadcast over heads.
                companion = companion + cs_divergence(a, gaussian_kernel(batch.anchors, p.rel_sigma))
            if "relu" in self.uco_layers:
                companion = companion + cs_divergence(a, gaussian_kernel(relu[:, :n], p.rel_sigma))
            per_head = per_head + p.uco_weight * companion
            logs["companion"] = companion.detach().mean()
        if use_neighbours:
            agreement = (a * probs[:, n:]).sum(-1).clamp_min(EPS)
            consistency = -torch.log(agreement).mean(-1)
            per_head = per_head + p.neighbour_weight * consistency
            logs["consistency"] = consistency.detach().mean()
        return StepOutput(loss=per_head.sum(), head_losses=per_head.detach(), logs=logs, assignments=a.detach().argmax(-1))

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads(z)[0].softmax(-1)
