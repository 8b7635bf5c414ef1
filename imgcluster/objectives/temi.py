"""TEMI: teacher-student clustering with a PMI-weighted kNN pair loss.

Adaloglou et al., "Exploring the Limits of Deep Image Clustering using Pretrained Models", BMVC 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from imgcluster.kmeans import spherical_kmeans
from imgcluster.objectives.base import (
    HEADS,
    MOMENTUM,
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

KMEANS_SAMPLE = 4096  # images embedded to seed the prototypes: plenty for K centres, cheap for any N
KMEANS_ITERS = 10  # Lloyd iterations for the prototypes: a start for training, not a final clustering


@dataclass
class TEMIParams(CheckedParams):
    # The paper trains 16 heads. Every head costs a full MLP forward for the student and the teacher,
    # so 16 heads take about 8 minutes for 10,000 images x 1280-d on 2 CPU cores; 4 heads keep the
    # same lowest-loss selection against bad initialisations at a quarter of the time.
    n_heads: int = 4
    hidden: int = 512  # first Linear(d, 512) -> GELU (paper)
    bottleneck: int = 256  # Linear(512, 256) -> L2-normalise (paper)
    # EMA momentum of the teacher per step (paper, as DINO). Held constant: the released code raises
    # it to 1.0 on a cosine schedule over ~100x more steps than a CPU run takes here.
    momentum: float = 0.996
    student_temp: float = 0.1  # temperature of the student softmax (paper)
    teacher_temp: float = 0.1  # temperature of the teacher softmax and of predictions (paper)
    prior_momentum: float = 0.9  # EMA momentum of the cluster prior p~ (paper)
    beta: float = 0.6  # exponent of the joint probability in the PMI (paper)
    prior_weight: float = 1.0  # exponent of the prior in the PMI denominator (paper: 1); --balance scales it
    # "kmeans": the last layer's directions start at spherical k-means centres of the initial
    # embeddings, so the teacher's first targets follow the data; "random": DINO's initialisation.
    # The paper trains ~100x more steps than the CPU budget here, enough to escape a random start.
    prototype_init: str = "kmeans"
    learn_gain: bool = True  # weight norm's gain g trainable, TEMI's default (norm_last_layer False); False fixes g = 1
    # Two deliberate differences from the released code: the pair weight w is each head's own (the
    # paper's formula; the code averages w over heads), and the last layer is not frozen for the
    # first epoch (the code's freeze_last_layer=1 guards a random start; the default here starts
    # the prototypes at k-means centres).
    standardise: bool = True  # feed (z - mean) / std of the training features (TEMI's --embed_norm option)

    ranges: ClassVar[dict[str, Range | Choices]] = {
        "n_heads": HEADS,
        "hidden": WIDTH,
        "bottleneck": SPHERE,
        "momentum": MOMENTUM,  # 1 would freeze the teacher, which makes the predictions, at its random start
        "student_temp": POSITIVE,
        "teacher_temp": POSITIVE,
        "prior_momentum": MOMENTUM,
        # (s t')^beta: beta = 1 is the plain PMI, smaller values damp confident pairs; at 0 the student has no gradient
        "beta": Range(0, 1, low_open=True),
        "prior_weight": WEIGHT,  # 0 drops the prior (--balance 0)
        "prototype_init": Choices(("kmeans", "random")),
    }


def temi_pair_loss(
    log_s: torch.Tensor,
    log_t_other: torch.Tensor,
    weight: torch.Tensor,
    prior: torch.Tensor,
    beta: float,
    prior_weight: float = 1.0,
) -> torch.Tensor:
    """``-mean_i w_i log sum_k (s_ik t'_ik)^beta / prior_k^gamma`` for stacked heads (gamma = ``prior_weight``, 1 in the paper).

    ``log_s``, ``log_t_other`` are log-probabilities ``[..., B, K]`` (student of one view, teacher of
    the other), ``weight`` is ``[..., B]`` and ``prior`` ``[..., K]``. Working in logs keeps the
    gradient of ``x^beta`` finite where a probability underflows to zero. Returns ``[...]``.
    """
    log_terms = beta * (log_s + log_t_other) - prior_weight * torch.log(prior).unsqueeze(-2)
    pmi = torch.logsumexp(log_terms, dim=-1)  # [..., B]
    return -(weight * pmi).mean(-1)


def temi_loss(
    log_s_a: torch.Tensor,
    log_s_n: torch.Tensor,
    log_t_a: torch.Tensor,
    log_t_n: torch.Tensor,
    prior: torch.Tensor,
    beta: float,
    prior_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TEMI's symmetrised loss over the pairs (anchor, neighbour) and (neighbour, anchor).

    ``w = sum_k t_k(a) t_k(n)`` comes from the teacher only and carries no gradient: a pair the
    teacher already splits between clusters is probably a false neighbour and counts less.
    Returns the per-head loss ``[...]`` and the mean weight ``[...]`` (a log of how many pairs agree).
    """
    with torch.no_grad():
        weight = (log_t_a.exp() * log_t_n.exp()).sum(-1)  # [..., B]
    loss = 0.5 * (
        temi_pair_loss(log_s_a, log_t_n, weight, prior, beta, prior_weight)
        + temi_pair_loss(log_s_n, log_t_a, weight, prior, beta, prior_weight)
    )
    return loss, weight.mean(-1)


def kmeans_prototypes(embedded: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Each head's last-layer directions ``[H, bottleneck, k]``: spherical k-means centres of its embeddings ``[H, S, bottleneck]``.

    Uncentred: the logits compare the raw bottleneck embedding with the directions.
    """
    # One greedy k-means++ run per head. Plain k-means++ draws (the start before c507f6f) and the best
    # of 3 runs trained to ACC within the spread that the start's random draws alone cause
    # (benchmarks/results_temi_start.md); this one splits the test's blobs for every head.
    fits = [spherical_kmeans(z, k, generator, iters=KMEANS_ITERS, centre=False) for z in embedded]
    return torch.stack([fit.best.centroids.T for fit in fits])


def _init_batched_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """DINO's and TEMI's head initialisation: truncated normal weights (std 0.02), zero biases."""
    nn.init.trunc_normal_(weight.data, std=0.02, a=-0.04, b=0.04)
    if bias is not None:
        nn.init.zeros_(bias.data)


class TEMIHeads(nn.Module):
    """``H`` heads ``Linear(d, hidden) -> GELU -> Linear(hidden, bottleneck) -> L2 -> WeightNorm Linear(bottleneck, K)``.

    The heads run as batched matrix products: one Python-level call for all of them. The last
    layer has no bias and is weight-normalised, ``W_k = g_k v_k / ||v_k||``, as in DINO's head that
    TEMI uses: its logits are ``g_k`` times a cosine, so the temperature and the gain (fixed at 1
    when ``learn_gain`` is False) alone set how peaked the assignments can be.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int, hidden: int, bottleneck: int, learn_gain: bool) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_heads, in_dim, hidden))
        self.b1 = nn.Parameter(torch.empty(n_heads, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(n_heads, hidden, bottleneck))
        self.b2 = nn.Parameter(torch.empty(n_heads, 1, bottleneck))
        self.direction = nn.Parameter(torch.empty(n_heads, bottleneck, n_clusters))  # v, one column per cluster
        self.gain = nn.Parameter(torch.ones(n_heads, 1, n_clusters), requires_grad=learn_gain)  # g
        _init_batched_linear(self.w1, self.b1)
        _init_batched_linear(self.w2, self.b2)
        _init_batched_linear(self.direction, None)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Unit bottleneck embeddings ``[H, N, bottleneck]``."""
        x = z.unsqueeze(0).expand(self.w1.shape[0], -1, -1)
        h = F.gelu(torch.baddbmm(self.b1, x, self.w1))
        return F.normalize(torch.baddbmm(self.b2, h, self.w2), dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``[H, N, K]`` for features ``z`` ``[N, d]``."""
        return torch.bmm(self.embed(z), F.normalize(self.direction, dim=1)) * self.gain


class TEMI(Objective):
    """TEMI (Adaloglou et al., BMVC 2023): an EMA teacher, a student, and a PMI-weighted pair loss.

    For an anchor ``a`` and a random kNN neighbour ``n``, with student probabilities
    ``s = softmax(head_s(z) / 0.1)``, teacher probabilities ``t = softmax(head_t(z) / 0.1)`` and a
    cluster prior ``p~`` (an EMA, momentum 0.9, of the teacher's batch mean)::

        L(a, n) = -w * log sum_k (s_k(a) * t_k(n))^beta / p~_k,   w = sum_k t_k(a) t_k(n)  (no gradient)
        L       = mean_B [L(a, n) + L(n, a)] / 2,                   beta = 0.6

    Dividing by the prior rewards assignments to rare clusters, which keeps every cluster in use
    without an explicit entropy term (``prior_weight`` raises the prior to a power, 1 in the paper, so
    ``--balance`` can weaken or strengthen that pull); ``beta < 1`` lets a confident student raise the score only
    sub-linearly, and ``w`` down-weights pairs the teacher places in different clusters.

    The teacher is an EMA (momentum 0.996 per step) of the student and is never touched by the
    optimiser. Predictions use the teacher (at the teacher temperature): it is an average of the
    student over the last few hundred steps, so its assignments are smoother and change less from
    one step to the next, and it is the network the training targets came from; TEMI's released
    evaluation does the same. Each head has its own student, teacher and prior; the head with the
    lowest loss over the last epoch is kept.
    """

    name = "temi"
    Params = TEMIParams
    prior: torch.Tensor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    balance_options = ("prior_weight",)

    def __init__(self, in_dim: int, n_clusters: int, params: TEMIParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        heads = (in_dim, n_clusters, params.n_heads, params.hidden, params.bottleneck, params.learn_gain)
        self.student = TEMIHeads(*heads)
        self.teacher = TEMIHeads(*heads)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        # The prior only shapes the training loss, never a prediction: not saved with the head.
        self.register_buffer("prior", torch.full((params.n_heads, n_clusters), 1.0 / n_clusters), persistent=False)
        # Per-dimension statistics of the training features, fixed in setup and saved: inference needs them.
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))

    @property
    def n_heads(self) -> int:
        return self.params.n_heads

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, object]]:
        """Only the student is optimised; the teacher follows it by EMA in :meth:`after_step`."""
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        return [{"params": trainable, "lr": lr, "weight_decay": weight_decay}]

    def setup(self, features: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator) -> None:
        """Fix the feature statistics; restart from a uniform prior and a teacher equal to the student."""
        if self.params.standardise:
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).clamp_min(1e-6))
        # The start draws from its own generator, seeded by one draw: the batch order that follows is
        # then the same whatever the start takes (another k-means reshuffled every batch before).
        start = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        if self.params.prototype_init == "kmeans":
            sample = torch.randperm(features.shape[0], generator=start)[:KMEANS_SAMPLE].to(features.device)
            with torch.no_grad():
                embedded = self.student.embed(self._standardised(features[sample]))  # [H, S, bottleneck]
                self.student.direction.copy_(kmeans_prototypes(embedded, self.n_clusters, start))
        self.prior.fill_(1.0 / self.n_clusters)
        self.teacher.load_state_dict(self.student.state_dict())

    def _standardised(self, z: torch.Tensor) -> torch.Tensor:
        """Centre and scale the features: cached embeddings share a large mean direction (post-ReLU
        CNN features are all positive), which would otherwise dominate every head's first layer."""
        return (z - self.feature_mean) / self.feature_std

    def step(self, batch: Batch) -> StepOutput:
        b = batch.anchors.shape[0]
        both = self._standardised(batch.stacked())
        log_s = (self.student(both) / self.params.student_temp).log_softmax(-1)  # [H, 2B, K]
        p = self.params
        with torch.no_grad():
            log_t = (self.teacher(both) / p.teacher_temp).log_softmax(-1)
            # The prior takes in this batch before the loss uses it, as TEMI's released code does
            # (it updates p~ inside the loss); it carries no gradient.
            self.prior.mul_(p.prior_momentum).add_(log_t.exp().mean(1), alpha=1.0 - p.prior_momentum)
        per_head, weight = temi_loss(log_s[:, :b], log_s[:, b:], log_t[:, :b], log_t[:, b:], self.prior, p.beta, p.prior_weight)
        used = (log_t.argmax(-1)[0].bincount(minlength=self.n_clusters) > 0).sum()
        return StepOutput(
            loss=per_head.sum(),
            head_losses=per_head.detach(),
            logs={"pair_weight": weight.mean(), "clusters_used": used.float()},
            assignments=log_t[:, :b].argmax(-1),  # the teacher predicts
        )

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput) -> None:
        """The teacher's EMA step towards the student, once the optimiser has moved the student."""
        m = self.params.momentum
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(m).add_(s.detach(), alpha=1.0 - m)

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        return (self.teacher(self._standardised(z)) / self.params.teacher_temp).softmax(-1)
