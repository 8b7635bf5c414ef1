"""Neural mixture-model EM: a network's last layer as K cluster densities, trained by batch-wise EM.

Tissera et al., "Neural Mixture Models with Expectation-Maximization for End-to-end Deep
Clustering", arXiv 2107.02453 (Neurocomputing 505, 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from imgcluster.heads import MultiHead
from imgcluster.objectives.base import (
    HEADS,
    POSITIVE,
    SPHERE,
    WEIGHT,
    WIDTH,
    Batch,
    CheckedParams,
    Choices,
    Objective,
    Range,
    StepOutput,
)
from imgcluster.objectives.centres import unit_centres

EPS = 1e-8


@dataclass
class MixtureEMParams(CheckedParams):
    # Independent networks trained side by side; the one with the lowest loss is kept. The paper
    # trains one network; several cost little here and guard against a bad initialisation.
    n_heads: int = 4
    hidden: int = 256  # MLP width on the cached features (the paper trains a CNN end to end instead)
    # Width of the whitened embedding the vMF densities live on. Whitening spreads the data over
    # every dimension, so extra dimensions are within-cluster spread: about K works best
    # (F-MNIST features, K = 10: ACC 0.69 with 16, 0.60 with 32 and hidden 128; digits: 16 and 32 alike).
    dim: int = 16
    kappa: float = 10.0  # vMF concentration shared by all clusters (a cosine temperature of 0.1)
    consistency_weight: float = 1.0  # weight of the kNN consistency term (the paper fuses EM with a consistency loss)
    balance: float = 1.0  # weight of the uniform-prior term KL(u || mean_B q); 0 switches the safeguard off

    ranges: ClassVar[dict[str, Range | Choices]] = {
        "n_heads": HEADS,
        "hidden": WIDTH,
        "dim": SPHERE,
        "kappa": POSITIVE,  # at 0 every density is flat and all images share one posterior
        "consistency_weight": WEIGHT,
        "balance": WEIGHT,  # 0: plain neural EM (--balance 0)
    }


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


class Whitening(nn.Module):
    """Batch whitening of ``[H, N, d]`` embeddings per head: zero mean, identity covariance.

    ``w = (e - mean) L^-T`` with ``L L^T`` the covariance (Cholesky), differentiable. Like
    BatchNorm it uses batch statistics in training and running estimates (saved buffers) in eval.
    """

    running_mean: torch.Tensor
    running_cov: torch.Tensor

    def __init__(self, n_heads: int, dim: int, momentum: float = 0.1, eps: float = 1e-4) -> None:
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(n_heads, 1, dim))
        self.register_buffer("running_cov", torch.eye(dim).repeat(n_heads, 1, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(e.shape[-1], device=e.device, dtype=e.dtype)
        if self.training:
            mean = e.mean(1, keepdim=True)
            centred = e - mean
            cov = centred.transpose(1, 2) @ centred / max(1, e.shape[1] - 1)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_cov.lerp_(cov, self.momentum)
        else:
            centred = e - self.running_mean
            cov = self.running_cov
        # The ridge is relative to the mean variance, so shrinking the embedding cannot escape the whitening.
        ridge = self.eps * cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[:, None, None]
        chol = torch.linalg.cholesky(cov + ridge * eye)
        return torch.linalg.solve_triangular(chol, centred.transpose(1, 2), upper=False).transpose(1, 2)


class MixtureEM(Objective):
    """Neural mixture-model EM (Tissera et al., arXiv 2107.02453) with von Mises-Fisher cluster densities.

    Each head is an MLP whose output ``e(x)`` is whitened over the data (zero mean, identity
    covariance) and L2-normalised; its last layer is ``K`` unit centres ``mu_k`` (a weight-normed
    linear layer without bias), and the normalising transform turns the ``K`` outputs into vMF
    log-densities ``log f_k(x) = kappa * mu_k^T e(x) + log C(kappa)``, the constant being the same
    for every cluster (shared ``kappa``) and so dropped. With learnable mixing weights
    ``pi = softmax(theta)``, each step on anchors ``a`` and kNN neighbours ``n``::

        E-step (forward, no gradient):  gamma_ik = pi_k f_k(x_i) / sum_j pi_j f_j(x_i)
        M-step (back-propagation):      L_EM   = -mean_i sum_k gamma_ik [log pi_k + log f_k(x_i)]
        consistency:                    L_cons = -mean_i sum_k [gamma_k(n_i) log q_k(a_i) + gamma_k(a_i) log q_k(n_i)] / 2
        balance:                        L_bal  = -mean_k log qbar_k - log K = KL(uniform || qbar)
        L = L_EM + consistency_weight * L_cons + balance * L_bal

    where ``q`` is the posterior computed like ``gamma`` but with gradient and ``qbar`` its batch mean.

    Why vMF on a whitened embedding: the network shapes the space the densities live in, so it
    can raise every likelihood at once by shrinking that space (the change-of-variables
    log-determinant the densities ignore). Whitening fixes the embedding's volume: the data must
    fill every direction with unit variance, and the only way left to raise the likelihood is to
    gather it into tight, separate groups around the centres. What was tried and fails: a vMF
    density on a plain unit embedding (every image mapped onto one point, every centre on top,
    posteriors uniform); per-dimension BatchNorm instead of whitening (the embedding loses rank
    and clusters merge after ~100 steps, accuracy falling with training); the paper's transform,
    a sigmoid of each neuron standardised over the batch (its densities are bounded: even a
    perfect partition gives posteriors of at most ~0.2 for K = 10, and they stayed near uniform);
    a softmax of each neuron over the batch (flat, identical neurons are its maximum-likelihood
    solution). The vMF density is also per image: the whitening's running statistics are saved,
    so a prediction does not depend on the batch.

    Why the balance term: the EM objective does not mind how large clusters are, and a cluster
    can shrink to nothing while ``pi`` follows it (everything in one cluster with ``pi`` on it is a
    lower ``L_EM`` than a balanced split). The uniform-prior term, the cross-entropy of a uniform
    prior against the batch's mean posterior, keeps every cluster in use, its penalty growing
    without bound as a cluster empties; ``balance = 0`` gives plain neural EM.

    Predictions are the posterior ``gamma`` (the E-step) of the kept head.
    """

    name = "mixture-em"
    Params = MixtureEMParams
    balance_options = ("balance",)

    def __init__(self, in_dim: int, n_clusters: int, params: MixtureEMParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        self.net = MultiHead(in_dim, params.dim, params.n_heads, params.hidden)
        # Whitens the embedding; its running statistics are saved and used at inference.
        self.whiten = Whitening(params.n_heads, params.dim)
        self.centres = nn.Parameter(unit_centres(params.n_heads, params.dim, n_clusters))
        self.mixing_logits = nn.Parameter(torch.zeros(params.n_heads, n_clusters))  # pi = softmax(theta), uniform start

    @property
    def n_heads(self) -> int:
        return self.params.n_heads

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, object]]:
        """No weight decay on the mixing weights (it would pull ``pi`` to uniform) nor on the centres (only their direction counts)."""
        return [
            {"params": list(self.net.parameters()), "lr": lr, "weight_decay": weight_decay},
            {"params": [self.centres, self.mixing_logits], "lr": lr, "weight_decay": 0.0},
        ]

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``[H, N, dim]``: MLP, whitened, L2-normalised."""
        return F.normalize(self.whiten(self.net(z)), dim=-1)

    def log_densities(self, z: torch.Tensor) -> torch.Tensor:
        """``log f_k(z) - log C_dim(kappa)`` for every head, ``[H, N, K]``: kappa times a cosine."""
        return self.params.kappa * torch.bmm(self.embed(z), F.normalize(self.centres, dim=1))

    def step(self, batch: Batch) -> StepOutput:
        b = batch.anchors.shape[0]
        log_f = self.log_densities(batch.stacked())
        log_pi = self.mixing_logits.log_softmax(-1)
        per_head, parts = mixture_em_loss(
            log_pi, log_f[:, :b], log_f[:, b:], self.params.consistency_weight, self.params.balance
        )
        logs: dict[str, float | torch.Tensor] = {key: value.detach().mean() for key, value in parts.items()}
        logs["pi_max"] = log_pi.detach().exp().max()
        assignments = (log_pi.detach().unsqueeze(-2) + log_f[:, :b].detach()).argmax(-1)  # the posterior's argmax, as predict
        return StepOutput(loss=per_head.sum(), head_losses=per_head.detach(), logs=logs, assignments=assignments)

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        return (self.mixing_logits.log_softmax(-1).unsqueeze(-2) + self.log_densities(z)).softmax(-1)
