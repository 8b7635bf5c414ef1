"""Neural mixture-model EM: a network's last layer as K cluster densities, trained by batch-wise EM.

Tissera et al., "Neural Mixture Models with Expectation-Maximization for End-to-end Deep
Clustering", arXiv 2107.02453 (Neurocomputing 505, 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imgcluster.objectives.base import Batch, Objective, StepOutput

EPS = 1e-8


@dataclass
class MixtureEMParams:
    # Independent networks trained side by side; the one with the lowest loss is kept. The paper
    # trains one network; several cost little here and guard against a bad initialisation.
    n_heads: int = 4
    hidden: int = 256  # MLP width on the cached features (the paper fine-tunes a CNN end to end instead)
    dim: int = 128  # dimension of the unit embedding the von Mises-Fisher densities live on
    kappa: float = 10.0  # vMF concentration shared by all clusters (1 / temperature 0.1)
    consistency_weight: float = 1.0  # weight of the kNN consistency term (the paper fuses EM with consistency, weight 1)
    balance: float = 1.0  # weight of the uniform-prior term KL(u || mean_B q); 0 switches the safeguard off


def em_terms(log_pi: torch.Tensor, log_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E-step and M-step objective for stacked heads.

    ``log_pi`` is ``[..., K]`` (log mixing weights), ``log_f`` ``[..., B, K]`` (log densities).
    Returns ``(L_EM [...], gamma [..., B, K], log_q [..., B, K])`` where ``gamma`` are the E-step
    responsibilities (no gradient), ``L_EM = -mean_i sum_k gamma_ik [log pi_k + log f_k(x_i)]``
    the M-step objective, and ``log_q`` the same posterior *with* gradient for the other terms.
    """
    log_joint = log_pi.unsqueeze(-2) + log_f
    log_q = log_joint.log_softmax(-1)
    gamma = log_q.detach().exp()
    return -(gamma * log_joint).sum(-1).mean(-1), gamma, log_q


def mixture_em_loss(
    log_pi: torch.Tensor,
    log_f_a: torch.Tensor,
    log_f_n: torch.Tensor,
    consistency_weight: float,
    balance: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_EM + consistency_weight * L_cons + balance * L_bal`` per head for anchors and neighbours.

    * ``L_EM``: the M-step objective averaged over anchors and neighbours.
    * ``L_cons = -mean_i sum_k [gamma_k(n_i) log q_k(a_i) + gamma_k(a_i) log q_k(n_i)] / 2``: each
      image's posterior is fitted to its neighbour's E-step responsibilities, as if the pair shared
      its latent cluster.
    * ``L_bal = KL(u || qbar) = -mean_k log qbar_k - log K`` with ``qbar`` the batch mean of the
      posteriors: zero for balanced clusters and unbounded as a cluster empties.

    Shapes: ``log_pi`` ``[..., K]``, ``log_f_*`` ``[..., B, K]``; returns ``[...]`` and the parts.
    """
    em_a, gamma_a, log_q_a = em_terms(log_pi, log_f_a)
    em_n, gamma_n, log_q_n = em_terms(log_pi, log_f_n)
    em = 0.5 * (em_a + em_n)
    consistency = -0.5 * ((gamma_n * log_q_a).sum(-1) + (gamma_a * log_q_n).sum(-1)).mean(-1)
    q_bar = 0.5 * (log_q_a.exp().mean(-2) + log_q_n.exp().mean(-2))  # [..., K]
    k = log_pi.shape[-1]
    balance_term = -torch.log(q_bar.clamp_min(EPS)).mean(-1) - math.log(k)
    total = em + consistency_weight * consistency + balance * balance_term
    return total, {"em": em, "consistency": consistency, "balance": balance_term}


class VMFHeads(nn.Module):
    """``H`` networks ``Linear(d, hidden) -> GELU -> Linear(hidden, dim) -> L2`` and ``K`` unit centres each.

    The last layer is a weight-normalised linear layer without bias, so its ``K`` outputs are
    cosines ``mu_k^T e`` between the unit embedding ``e`` and unit centres ``mu_k``. Times ``kappa``
    they are von Mises-Fisher log-densities up to the normalising constant, which is the same for
    every cluster (shared ``kappa``) and so cancels in the E-step and adds only a constant to the loss.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_heads, in_dim, hidden))
        self.b1 = nn.Parameter(torch.empty(n_heads, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(n_heads, hidden, dim))
        self.b2 = nn.Parameter(torch.empty(n_heads, 1, dim))
        self.centres = nn.Parameter(torch.empty(n_heads, dim, n_clusters))  # columns are mu_k before normalising
        for w, b in ((self.w1, self.b1), (self.w2, self.b2), (self.centres, None)):
            for h in range(n_heads):
                nn.init.kaiming_uniform_(w.data[h].T, a=math.sqrt(5))  # nn.Linear's default, per head
            if b is not None:
                nn.init.uniform_(b.data, -1.0 / math.sqrt(w.shape[1]), 1.0 / math.sqrt(w.shape[1]))

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``[H, N, dim]``."""
        x = z.unsqueeze(0).expand(self.w1.shape[0], -1, -1)
        h = F.gelu(torch.baddbmm(self.b1, x, self.w1))
        return F.normalize(torch.baddbmm(self.b2, h, self.w2), dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Cosines ``[H, N, K]`` between each embedding and each unit centre."""
        return torch.bmm(self.embed(z), F.normalize(self.centres, dim=1))


class MixtureEM(Objective):
    """Neural mixture-model EM (Tissera et al., arXiv 2107.02453) with vMF cluster densities.

    The network's last layer gives ``K`` log-densities ``log f_k(x) = kappa * mu_k^T e(x)`` (a von
    Mises-Fisher density on the unit sphere, normaliser dropped as it is equal for all k), and
    ``pi = softmax(theta)`` are learnable mixing weights. Each step on anchors ``a`` and kNN
    neighbours ``n``::

        E-step (forward, no gradient):  gamma_ik = pi_k f_k(x_i) / sum_j pi_j f_j(x_i)
        M-step (back-propagation):      L_EM   = -mean_i sum_k gamma_ik [log pi_k + log f_k(x_i)]
        consistency:                    L_cons = -mean_i sum_k [gamma_k(n_i) log q_k(a_i) + gamma_k(a_i) log q_k(n_i)] / 2
        balance:                        L_bal  = -mean_k log qbar_k - log K = KL(uniform || qbar)
        L = L_EM + consistency_weight * L_cons + balance * L_bal

    where ``q`` is the posterior computed like ``gamma`` but with gradient and ``qbar`` its batch mean.

    Why vMF and not the paper's transform: the paper makes each neuron's outputs a distribution by
    normalising them over the batch, so a prediction depends on which other images share the
    batch. The vMF density is normalised per image, so ``head_probs`` of one image is the same in
    any batch, which ``assign`` on a new folder needs, and it is the natural density for the
    L2-normalised features every objective here works on.

    Why the balance term: maximising the EM objective over the network as well as the mixture has a
    trivial optimum, every image at one centre with ``pi`` on that cluster (``L_EM`` then reaches
    ``-kappa``). The paper prevents it through its batch normalisation of the densities; with
    per-image vMF densities the uniform-prior term does that job, its penalty growing without
    bound as a cluster empties. ``balance = 0`` gives plain neural EM.

    Predictions are the posterior ``gamma`` (the E-step) of the kept head.
    """

    name = "mixture-em"
    Params = MixtureEMParams

    def __init__(self, in_dim: int, n_clusters: int, params: MixtureEMParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        self.heads = VMFHeads(in_dim, n_clusters, params.n_heads, params.hidden, params.dim)
        self.mixing_logits = nn.Parameter(torch.zeros(params.n_heads, n_clusters))  # pi = softmax(theta), uniform start

    @property
    def n_heads(self) -> int:
        return self.params.n_heads

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, object]]:
        """No weight decay on the mixing weights: decay would pull ``pi`` to uniform, biasing the M-step."""
        return [
            {"params": list(self.heads.parameters()), "lr": lr, "weight_decay": weight_decay},
            {"params": [self.mixing_logits], "lr": lr, "weight_decay": 0.0},
        ]

    def log_densities(self, z: torch.Tensor) -> torch.Tensor:
        """``log f_k(z)`` up to a constant, ``[H, N, K]``."""
        return self.params.kappa * self.heads(z)

    def step(self, batch: Batch) -> StepOutput:
        b = batch.anchors.shape[0]
        log_f = self.log_densities(torch.cat([batch.anchors, batch.neighbours]))
        log_pi = self.mixing_logits.log_softmax(-1)
        per_head, parts = mixture_em_loss(
            log_pi, log_f[:, :b], log_f[:, b:], self.params.consistency_weight, self.params.balance
        )
        logs = {key: float(value.detach().mean()) for key, value in parts.items()}
        logs["pi_max"] = float(log_pi.detach().exp().max())
        return StepOutput(loss=per_head.sum(), head_losses=per_head.detach(), logs=logs)

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        return (self.mixing_logits.log_softmax(-1).unsqueeze(-2) + self.log_densities(z)).softmax(-1)
