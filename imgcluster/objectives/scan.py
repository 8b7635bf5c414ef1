"""SCAN: kNN consistency with a cluster-balance entropy term.

Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", ECCV 2020.

For an anchor ``a`` and a random neighbour ``n`` from its k nearest neighbours, with
``p = softmax(head(z))``::

    L = -mean_i log <p(a_i), p(n_i)>  -  lambda * H(mean_B p)

The first term asks neighbours to agree (and to be confident), the second keeps the batch's
mean assignment spread over all K clusters so the head cannot collapse. ``lambda`` is
``entropy_weight`` (5 in the paper). Each of the ``n_heads`` heads gets this loss; the head
with the lowest running loss is kept.

The optional self-labelling stage (``self_label_epochs > 0``) then fine-tunes the kept head on
its own confident predictions (``p_max > self_label_threshold``, 0.99 in the paper) with
cross-entropy weighted by inverse class frequency, as SCAN's second stage does (the paper
adds strong augmentations; on cached features the neighbour serves as the second view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from imgcluster.heads import MultiHead
from imgcluster.objectives.base import (
    FRACTION,
    HEADS,
    WEIGHT,
    WIDTH,
    Batch,
    CheckedParams,
    Choices,
    Objective,
    Range,
    Stage,
    StepOutput,
)

EPS = 1e-8


@dataclass
class SCANParams(CheckedParams):
    # SCAN trains 10 linear heads on a fine-tuned backbone. On frozen features an MLP head helps,
    # and 5 heads of width 128 matched 10 of width 512 on Fashion-MNIST features (ACC 0.749 vs
    # 0.737, efficientnet-lite0) at about a tenth of the CPU time.
    n_heads: int = 5
    hidden: int = 128
    entropy_weight: float = 5.0
    self_label_epochs: int = 0
    self_label_threshold: float = 0.99

    ranges: ClassVar[dict[str, Range | Choices]] = {
        "n_heads": HEADS,
        "hidden": WIDTH,
        "entropy_weight": WEIGHT,  # 0 drops the balance term (--balance 0)
        "self_label_epochs": Range(0),  # 0: no self-labelling stage
        # compared with p_max, a probability; at 1 no image is confident and the stage changes nothing
        "self_label_threshold": FRACTION,
    }


def consistency_entropy_loss(
    p_a: torch.Tensor, p_n: torch.Tensor, entropy_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN's loss for stacked heads: ``p_a``, ``p_n`` are ``[H, B, K]``; returns per-head losses."""
    consistency = -torch.log((p_a * p_n).sum(-1).clamp_min(EPS)).mean(-1)  # [H]
    mean_p = p_a.mean(1)  # [H, K]
    entropy = -(mean_p * torch.log(mean_p.clamp_min(EPS))).sum(-1)  # [H]
    return consistency - entropy_weight * entropy, consistency, entropy


class SCAN(Objective):
    name = "scan"
    Params = SCANParams
    stops_when_settled = True  # same ACC at 16 of 30 epochs on 10,000 images (results_training.md)
    balance_options = ("entropy_weight",)

    def __init__(self, in_dim: int, n_clusters: int, params: SCANParams) -> None:
        super().__init__(in_dim, n_clusters, params)
        self.heads = MultiHead(in_dim, n_clusters, params.n_heads, params.hidden)
        self.self_labelling = False

    @property
    def n_heads(self) -> int:
        return self.params.n_heads

    def stages(self) -> list[Stage]:
        stages = [Stage("cluster")]
        if self.params.self_label_epochs > 0:
            stages.append(Stage("self-label", self.params.self_label_epochs, select_head=False))
        return stages

    def begin_stage(self, stage: Stage) -> None:
        self.self_labelling = stage.name == "self-label"

    def step(self, batch: Batch) -> StepOutput:
        if self.self_labelling:
            return self._self_label_step(batch)
        both = batch.stacked()
        logits = self.heads(both)
        p = logits.softmax(-1)
        b = batch.anchors.shape[0]
        per_head, consistency, entropy = consistency_entropy_loss(p[:, :b], p[:, b:], self.params.entropy_weight)
        return StepOutput(
            loss=per_head.sum(),
            head_losses=per_head.detach(),
            logs={"consistency": consistency.detach().mean(), "entropy": entropy.detach().mean()},
            assignments=p[:, :b].detach().argmax(-1),
        )

    def _self_label_step(self, batch: Batch) -> StepOutput:
        """Class-balanced cross-entropy on confident anchors, targets from the neighbour view."""
        h = int(self.best_head)
        with torch.no_grad():
            p_target = self.heads(batch.anchors)[h].softmax(-1)
        conf, target = p_target.max(-1)
        mask = conf > self.params.self_label_threshold
        logits = self.heads(batch.neighbours)[h]
        if not bool(mask.any()):
            zero = logits.sum() * 0.0
            return StepOutput(loss=zero, head_losses=torch.zeros(self.n_heads, device=logits.device))
        counts = torch.bincount(target[mask], minlength=self.n_clusters).float()
        weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * self.n_clusters), torch.zeros_like(counts))
        loss = F.cross_entropy(logits[mask], target[mask], weight=weight)
        head_losses = torch.zeros(self.n_heads, device=logits.device)
        return StepOutput(loss=loss, head_losses=head_losses, logs={"confident": mask.float().mean()})

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads(z).softmax(-1)
