"""SeCu: stable cluster discrimination with per-instance labels under a cluster-size constraint.

Qi Qian, "Stable Cluster Discrimination for Deep Clustering", ICCV 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from imgcluster.objectives.base import (
    FRACTION,
    HEAD_CHOICE,
    HEADS,
    POSITIVE,
    SPHERE,
    WEIGHT,
    WIDTH,
    Batch,
    CheckedParams,
    Choices,
    Range,
    StepOutput,
)
from imgcluster.objectives.centres import CentreObjective, encode_with_batch_statistics

EPS = 1e-12


@dataclass
class SeCuParams(CheckedParams):
    n_heads: int = 5  # heads with independent centres on one shared encoder; the paper uses 10 heads (K = 10..100)
    hidden: int = 256  # encoder width (Linear-BN-ReLU-Linear like the paper's projection MLP); 256 keeps CPU runs short
    dim: int = 128  # d', the dimension of z and of the centres (paper: 128)
    tau: float = 0.05  # temperature of the representation loss and of predictions (paper: tx = 0.05)
    tau_w: float = 0.05  # temperature of the centre loss (paper: tw = 0.05)
    label_weight: float = 0.2  # weight of onehot(y_prev) in the soft target q (paper: 0.2)
    constraint: str = "size"  # "size" (dual variables, the paper's main variant) or "entropy"
    dual_lr: float = 0.1  # eta, step size of the dual variables rho (paper: 0.1)
    lower_bound: float = 0.9  # lambda: every cluster keeps at least lambda * N / K members (paper: 0.9)
    alpha: float = 0.12  # entropy weight per image: the paper's 6000 on CIFAR-10's 50,000 images, times N at run time
    centre_lr_scale: float = 3.0  # centre lr / encoder lr; paper: 6 (SGD 1.2 vs 0.2), 3 was steadier with AdamW
    centre_init: str = "kmeans++"  # "kmeans++" on encoded images; "data": random images; "random": Gaussian (paper)
    # The head kept (train.choose_head): "tightest-low-loss", the tightest clusters in the input features among the heads
    # within 3 % of the lowest loss; "loss", the lowest (the paper), which kept heads mixing two classes (ACC 0.67 against
    # 0.74) on int8 Fashion-MNIST seeds; "tightest", over all heads, which keeps k-means-like heads on non-convex groups
    head_choice: str = "tightest-low-loss"

    ranges: ClassVar[dict[str, Range | Choices]] = {
        "n_heads": HEADS,
        "hidden": WIDTH,
        "dim": SPHERE,
        "tau": POSITIVE,
        "tau_w": POSITIVE,
        "label_weight": FRACTION,  # q mixes a softmax and a one-hot: weights outside [0, 1] are no distribution
        "dual_lr": POSITIVE,
        # A fraction of N / K: above 1 the size constraint is infeasible (--balance clamps it to 1), 0 lifts it (--balance 0)
        "lower_bound": FRACTION,
        "alpha": WEIGHT,  # 0 lifts the entropy constraint (--balance 0)
        "centre_lr_scale": POSITIVE,
        "constraint": Choices(("size", "entropy")),
        "centre_init": Choices(("kmeans++", "data", "random")),
        "head_choice": HEAD_CHOICE,
    }


def hardness_aware_centre_loss(sims: torch.Tensor, labels: torch.Tensor, tau_w: float) -> torch.Tensor:
    """Cross-entropy of ``sims / tau_w`` against ``labels`` where only the assigned logit has gradient.

    ``sims`` is ``[..., B, K]`` (``z^T C``, with ``z`` detached by the caller), ``labels`` ``[..., B]``.
    The other logits are constants, so the gradient on ``c_y`` is ``-(1 - p_y) z / tau_w`` and a
    centre is moved only by the instances assigned to it, harder ones (small ``p_y``) more: the
    paper's remedy for the instability of plain cluster discrimination. Returns ``[...]``.
    """
    onehot = F.one_hot(labels, sims.shape[-1]).to(sims.dtype)
    logits = (sims.detach() + onehot * (sims - sims.detach())) / tau_w
    return -(logits.log_softmax(-1) * onehot).sum(-1).mean(-1)


def soft_targets(logits_other: torch.Tensor, prev_labels: torch.Tensor, label_weight: float) -> torch.Tensor:
    """``q = (1 - w) softmax(logits of the other view) + w onehot(y_prev)``, without gradient."""
    onehot = F.one_hot(prev_labels, logits_other.shape[-1]).to(logits_other.dtype)
    return ((1.0 - label_weight) * logits_other.detach().softmax(-1) + label_weight * onehot).detach()


def representation_loss(
    logits1: torch.Tensor, logits2: torch.Tensor, prev_labels: torch.Tensor, label_weight: float
) -> torch.Tensor:
    """Symmetric soft cross-entropy of two views against the frozen centres, ``[..., B, K]`` -> ``[...]``.

    Each view predicts the other's softened assignment mixed with the instance's stored label, so
    the encoder learns to agree with the previous epoch's clustering without chasing centres that
    move within the epoch.
    """
    q1 = soft_targets(logits2, prev_labels, label_weight)
    q2 = soft_targets(logits1, prev_labels, label_weight)
    l1 = -(q1 * logits1.log_softmax(-1)).sum(-1).mean(-1)
    l2 = -(q2 * logits2.log_softmax(-1)).sum(-1).mean(-1)
    return 0.5 * (l1 + l2)


def assign_size(cost: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``y = argmin_k (cost_k - rho_k)`` with ``cost = -z^T c``: ``[H, B, K]``, ``[H, K]`` -> ``[H, B]``."""
    return (cost - rho.unsqueeze(-2)).argmin(-1)


def update_duals(rho: torch.Tensor, labels: torch.Tensor, dual_lr: float, lower_bound: float) -> torch.Tensor:
    """One projected dual-ascent step: ``rho_k <- max(0, rho_k - eta n_k / B + eta lambda / K)``.

    A cluster that got fewer than ``lambda B / K`` of the batch gains ``rho_k`` and so attracts more
    instances in the next batches; an over-full one decays towards zero (never below: the bound
    is one-sided). ``rho`` is ``[H, K]``, ``labels`` ``[H, B]``.
    """
    k = rho.shape[1]
    counts = torch.zeros_like(rho).scatter_add_(1, labels, torch.ones_like(labels, dtype=rho.dtype))
    return (rho - dual_lr * counts / labels.shape[1] + dual_lr * lower_bound / k).clamp_min(0.0)


def _plogp(p: torch.Tensor) -> torch.Tensor:
    return p * torch.log(p.clamp_min(EPS))


def entropy_gain(counts: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``delta_H_k``: change of the cluster-size entropy if an instance moves from ``current`` to ``k``.

    ``counts`` ``[H, K]`` are the global sizes (stored labels), ``current`` ``[H, B]`` each instance's
    stored label; returns ``[H, B, K]`` with zeros at ``k = current``. Only the two sizes that
    change enter, so the cost is O(B K).
    """
    total = counts.sum(-1, keepdim=True).clamp_min(1.0)  # [H, 1]
    p = counts / total
    gain_in = -(_plogp(p + 1.0 / total) - _plogp(p))  # [H, K]: one more member in k
    p_cur = p.gather(1, current)  # [H, B]
    gain_out = -(_plogp((p_cur - 1.0 / total).clamp_min(0.0)) - _plogp(p_cur))  # one member fewer in current
    delta = gain_in.unsqueeze(1) + gain_out.unsqueeze(-1)
    return delta.scatter(-1, current.unsqueeze(-1), 0.0)


def assign_entropy(cost: torch.Tensor, counts: torch.Tensor, current: torch.Tensor, alpha: float) -> torch.Tensor:
    """``y = argmin_k (cost_k - alpha * delta_H_k)``: prefer moves that spread the cluster sizes."""
    return (cost - alpha * entropy_gain(counts, current)).argmin(-1)


class SeCu(CentreObjective):
    """SeCu (Qian, ICCV 2023) on cached features.

    An MLP encoder maps a feature to ``z`` (unit norm); each of ``H`` heads owns unit centres
    ``C`` (``d' x K``). For an anchor ``a`` and its kNN neighbour ``n`` (the two views), per head:

    * assignment, no gradient, one stored label per image::

        y = argmin_k ( -(z_a + z_n)^T c_k / 2 - rho_k )            (constraint "size")
        y = argmin_k ( -(z_a + z_n)^T c_k / 2 - alpha N delta_H_k ) (constraint "entropy")

      with ``rho_k <- max(0, rho_k - eta n_k / B + eta lambda / K)`` after every batch;
    * centre loss (``z`` detached, only ``c_y``'s logit has gradient)::

        L_c = CE(z^T C / tau_w, y)    summed over both views, halved

    * representation loss against ``C'``, the centres frozen at the start of the epoch::

        L_x = -1/2 sum_views sum_k q_k log softmax(z_v^T C' / tau)_k,
        q = 0.8 softmax(z_other^T C' / tau) + 0.2 onehot(y_prev)

    ``L = mean_heads (L_c + L_x)``. Of the heads whose summed loss is within 3 % of the lowest,
    the one whose clusters are tightest in the input features is kept (:func:`imgcluster.train.choose_head`;
    ``head_choice="loss"``: the lowest loss, as the paper; ``"tightest"``: the tightest of all), and
    its prediction is ``softmax(z^T C / tau)``. The heads' losses differ by less than their noise
    once they have settled, and on Fashion-MNIST the lowest kept heads that mixed two classes; on
    groups that are not convex the tightest partition cuts across them, and heads that found one
    ended 8 % or more above the lowest loss, outside the band (benchmarks/results_training.md).

    Choices the paper leaves to the setting: on cached features the second view is a kNN
    neighbour, not an augmentation; centres start from k-means++ seeds of the encoded images
    (the paper starts from random ones and trains for 400 epochs), and every image gets a first
    label from those seeds in :meth:`setup`, so ``y_prev`` and the entropy variant's cluster
    sizes are defined from the first batch on. ``alpha`` is given per image (scaled by N).
    """

    name = "secu"
    Params = SeCuParams
    stops_when_settled = True  # same ACC at 16 of 30 epochs on 10,000 images (results_training.md)
    labels: torch.Tensor
    rho: torch.Tensor
    counts: torch.Tensor
    prev_centres: torch.Tensor
    balance_options = ("lower_bound", "alpha")

    @classmethod
    def balanced_options(cls, weight: float) -> dict[str, Any]:
        """Both variants' balance weights; the size bound stays a fraction of N / K, at most 1."""
        options = super().balanced_options(weight)
        options["lower_bound"] = min(1.0, options["lower_bound"])
        return options

    def __init__(self, in_dim: int, n_clusters: int, params: SeCuParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        # Training-only state: not needed to predict, so kept out of checkpoints.
        self.register_buffer("labels", torch.zeros(params.n_heads, 0, dtype=torch.long), persistent=False)
        self.register_buffer("rho", torch.zeros(params.n_heads, n_clusters), persistent=False)
        self.register_buffer("counts", torch.zeros(params.n_heads, n_clusters), persistent=False)
        self.register_buffer("prev_centres", self.centres.detach().clone(), persistent=False)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def head_choice(self) -> str:
        return str(self.params.head_choice)

    # --- training -------------------------------------------------------------------------
    @torch.no_grad()
    def setup(self, features: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator) -> None:
        """Initialise centres and give every image a first label, so ``y_prev`` exists in epoch 1."""
        n = features.shape[0]
        h, k = self.n_heads, self.n_clusters
        if self.params.centre_init == "kmeans++":
            z = self.seed_centres(features, generator)
        else:
            z = encode_with_batch_statistics(self.encoder, features)
        if self.params.centre_init == "data":
            picks = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(h)]).to(features.device)
            self.centres.copy_(z[picks].transpose(1, 2))
        elif self.params.centre_init == "random":
            gauss = torch.randn(h, self.params.dim, k, generator=generator).to(features.device)
            self.centres.copy_(F.normalize(gauss, dim=1))
        self.labels = torch.einsum("nd,hdk->hnk", z, self.unit_centres()).argmax(-1)
        self.counts = torch.zeros(h, k, device=features.device).scatter_add_(
            1, self.labels, torch.ones_like(self.labels, dtype=torch.float32)
        )
        self.rho = torch.zeros(h, k, device=features.device)
        self.prev_centres = self.unit_centres().detach().clone()

    def on_epoch_start(self, epoch: int) -> None:
        """Freeze this epoch's targets: the representation loss aims at last epoch's centres."""
        self.prev_centres = self.unit_centres().detach().clone()

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Centres get a larger lr (as in the paper) and no weight decay (they are re-normalised anyway)."""
        encoder = [p for p in self.encoder.parameters() if p.requires_grad]
        return [
            {"params": encoder, "lr": lr, "weight_decay": weight_decay},
            {"params": [self.centres], "lr": lr * self.params.centre_lr_scale, "weight_decay": 0.0},
        ]

    def step(self, batch: Batch) -> StepOutput:
        p = self.params
        b = batch.anchors.shape[0]
        z = self.encode(batch.stacked())  # [2B, d']
        centres = self.unit_centres()
        sims = torch.einsum("nd,hdk->hnk", z.detach(), centres)  # [H, 2B, K], gradient to centres only
        with torch.no_grad():
            cost = -0.5 * (sims[:, :b] + sims[:, b:])
            prev_labels = self.labels[:, batch.index]  # [H, B]
            if p.constraint == "size":
                labels = assign_size(cost, self.rho)
            else:
                labels = assign_entropy(cost, self.counts, prev_labels, p.alpha * self.labels.shape[1])
        self._pending = (batch.index, labels)
        both_labels = torch.cat([labels, labels], dim=1)
        loss_c = hardness_aware_centre_loss(sims, both_labels, p.tau_w)  # [H]
        logits = torch.einsum("nd,hdk->hnk", z, self.prev_centres) / p.tau  # [H, 2B, K]
        loss_x = representation_loss(logits[:, :b], logits[:, b:], prev_labels, p.label_weight)  # [H]
        per_head = loss_c + loss_x
        with torch.no_grad():
            sizes = F.one_hot(labels, self.n_clusters).sum(1).float()  # [H, K]
            changed = (labels != prev_labels).float().mean()
        return StepOutput(
            loss=per_head.mean(),
            head_losses=per_head.detach(),
            logs={
                "centre": loss_c.detach().mean(),
                "repr": loss_x.detach().mean(),
                "min_size": sizes.min(-1).values.float().mean() * self.n_clusters / b,  # 1.0 = perfectly balanced
                "changed": changed,
            },
            assignments=sims[:, :b].detach().argmax(-1),  # what predict's softmax(z^T C / tau) picks
        )

    @torch.no_grad()
    def after_step(self, batch: Batch, out: StepOutput) -> None:
        """Store the batch's labels, then update the dual variables (size) or global counts (entropy)."""
        if self._pending is None:
            return
        index, labels = self._pending
        self._pending = None
        old = self.labels[:, index]
        self.labels[:, index] = labels
        ones = torch.ones_like(labels, dtype=self.counts.dtype)
        self.counts.scatter_add_(1, labels, ones).scatter_add_(1, old, -ones)
        if self.params.constraint == "size":
            self.rho = update_duals(self.rho, labels, self.params.dual_lr, self.params.lower_bound)

    # --- inference ------------------------------------------------------------------------
    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        """``softmax(z'^T C / tau)`` per head, ``[H, N, K]``."""
        return (torch.einsum("nd,hdk->hnk", self.encode(z), self.unit_centres()) / self.params.tau).softmax(-1)
