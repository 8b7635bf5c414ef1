"""Train a clustering objective on cached features: one loop for every gradient-based method."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from imgcluster.adamw import AdamW
from imgcluster.config import TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.neighbours import l2_normalise
from imgcluster.objectives import Batch, Objective, create_objective
from imgcluster.objectives.base import HEAD_CHOICE
from imgcluster.preflight import check_clusters_fit


@dataclass
class EpochLog:
    stage: str
    epoch: int
    loss: float
    seconds: float
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    objective: Objective
    history: list[EpochLog]
    seconds: float
    empty_clusters: int
    schedule: dict[str, int] = field(default_factory=dict)  # batch, epochs and k actually used
    stopped_early: bool = False  # a stage ended before its epochs: its clusters had settled (TrainConfig.stable_fraction)
    # Each head's summed loss in the last epoch of the last stage that chose a head: what ``choose_head`` compared
    head_losses: list[float] = field(default_factory=list)


# (optimiser steps done, total steps, the log of the epoch that just ended or None): called with 0
# steps before training starts, after the first step, then at most every ``STEP_EVERY`` seconds
# and at the end of every epoch, so a display can move (and estimate a rate) from the first step.
ProgressFn = Callable[[int, int, "EpochLog | None"], None]
STEP_EVERY = 0.5  # seconds between progress calls inside an epoch


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def train_objective(
    features: np.ndarray,
    neighbours: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Fit ``config.objective`` on L2-normalised ``features`` [N, d] with kNN table [N, k]."""
    n, dim = features.shape
    if config.clusters < 2:
        raise ParameterError(f"{{n_clusters}} must be at least 2, got {config.clusters}")
    check_clusters_fit(config.clusters, n)
    check_stopping(config)
    features = l2_normalise(features)  # every objective works on unit vectors
    generator = seed_everything(config.seed)
    objective = create_objective(config.objective, dim, config.clusters, config.objective_options).to(device)
    start = time.perf_counter()
    history: list[EpochLog] = []
    head_losses: list[float] = []
    batch_size, epochs = effective_schedule(n, config)
    knn = effective_knn(n, config)
    if not objective.trainable:
        objective.fit(features, config.seed)
    else:
        history, head_losses = _gradient_training(
            objective, features, neighbours[:, :knn], batch_size, epochs, config, device, generator, progress
        )
    seconds = time.perf_counter() - start
    objective.eval()
    z = torch.from_numpy(features).to(device)
    labels = predict_labels(objective, z)
    empty = int(config.clusters - np.unique(labels).size)
    planned = sum(s.epochs if s.epochs is not None else epochs for s in objective.stages()) if objective.trainable else 0
    schedule = {"batch_size": batch_size, "epochs": epochs, "knn": knn, "epochs_trained": len(history)} if objective.trainable else {}
    return TrainResult(
        objective=objective, history=history, seconds=seconds, empty_clusters=empty, schedule=schedule,
        stopped_early=len(history) < planned, head_losses=head_losses,
    )  # fmt: skip


def check_stopping(config: TrainConfig) -> None:
    """The stopping rule's settings: a fraction of the images (or None) and a whole number of epochs."""
    fraction, epochs = config.stable_fraction, config.stable_epochs
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1):
        raise ParameterError(f"stable_fraction must be a fraction from 0 to 1, or None to train every epoch; got {fraction!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ParameterError(f"stable_epochs must be a whole number of at least 1, got {epochs!r}")


@torch.no_grad()
def predict_labels(objective: Objective, z: torch.Tensor, batch_size: int = 65536) -> np.ndarray:
    out = [objective.predict(z[i : i + batch_size]).argmax(-1).cpu() for i in range(0, z.shape[0], batch_size)]
    return torch.cat(out).numpy()


def effective_schedule(n: int, config: TrainConfig) -> tuple[int, int]:
    """Batch size and epochs for ``n`` images.

    Small folders get smaller batches (at least four per epoch) and more epochs, so that every
    run takes at least ``config.min_steps`` optimiser steps: 30 epochs of one batch would not
    train anything.
    """
    batch_size = max(2, min(config.batch_size, max(16, n // 4), n))
    steps_per_epoch = max(1, n // batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / steps_per_epoch))
    return batch_size, epochs


def effective_knn(n: int, config: TrainConfig) -> int:
    """Neighbours per image, at most half the expected cluster size.

    With 24 images in 3 groups, 20 neighbours would pair nearly every image with every other.
    """
    return max(1, min(config.knn, n // (2 * config.clusters)))


class Settling:
    """How many images each head moved to another cluster since it last saw them: the evidence
    for stopping once the clusters have settled (``TrainConfig.stable_fraction``)."""

    def __init__(self, n_heads: int, n: int, device: torch.device) -> None:
        self.last = torch.full((n_heads, n), -1, dtype=torch.int32, device=device)  # -1: not seen yet
        self.changed = torch.zeros(n_heads, dtype=torch.long, device=device)
        self.seen = 0

    def update(self, index: torch.Tensor, assignments: torch.Tensor) -> None:
        self.changed += (self.last[:, index] != assignments).sum(-1)
        self.last[:, index] = assignments.to(self.last.dtype)
        self.seen += index.shape[0]

    def fraction(self, head: int) -> float:
        """Share of the images seen since the last call that ``head`` put in another cluster; starts afresh."""
        value = float(self.changed[head]) / max(1, self.seen)
        self.changed.zero_()
        self.seen = 0
        return value


def _gradient_training(
    objective: Objective,
    features: np.ndarray,
    neighbours: np.ndarray,
    batch_size: int,
    epochs_main: int,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    progress: ProgressFn | None,
) -> tuple[list[EpochLog], list[float]]:
    """The epochs' logs, and each head's summed loss in the last epoch that chose a head (empty if none did)."""
    n = features.shape[0]
    steps_per_epoch = max(1, n // batch_size)  # drop the ragged tail: BatchNorm and entropy need a full batch
    stages = objective.stages()
    total_epochs = sum(s.epochs if s.epochs is not None else epochs_main for s in stages)
    total_steps = total_epochs * steps_per_epoch
    if progress is not None:  # before the setup, which may take a while (k-means starts)
        progress(0, total_steps, None)
    z = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(device)
    knn = torch.from_numpy(np.ascontiguousarray(neighbours, dtype=np.int64)).to(device)
    objective.setup(z, knn, generator)
    history: list[EpochLog] = []
    head_losses: list[float] = []
    epoch_counter = 0
    steps_done = 0
    last_call = -math.inf
    for stage in stages:
        objective.begin_stage(stage)
        optimiser = AdamW(objective.param_groups(config.lr, config.weight_decay))
        epochs = stage.epochs if stage.epochs is not None else epochs_main
        head_loss_sum = torch.zeros(objective.n_heads, device=device)
        settling = Settling(objective.n_heads, n, device)
        calm = 0  # epochs in a row in which at most stable_fraction of the images changed cluster
        for epoch in range(epochs):
            objective.train()
            objective.on_epoch_start(epoch_counter)
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=generator)[: steps_per_epoch * batch_size].to(device)
            pick = torch.randint(knn.shape[1], (order.shape[0],), generator=generator).to(device)
            head_loss_sum.zero_()
            loss_sum = torch.zeros((), device=device)  # summed on the device: no host sync per step
            extras: dict[str, float | torch.Tensor] = {}
            reported = True  # every step reported its anchors' clusters
            for s in range(steps_per_epoch):
                idx = order[s * batch_size : (s + 1) * batch_size]
                nidx = knn[idx, pick[s * batch_size : (s + 1) * batch_size]]
                # One gather of both views, the rows of z[idx] and z[nidx] (index_select: 4.6x faster than
                # advanced indexing alone, though memory traffic bounds it inside training).
                pair = z.index_select(0, torch.cat([idx, nidx]))
                batch = Batch(anchors=pair[:batch_size], neighbours=pair[batch_size:], index=idx, neighbour_index=nidx, pair=pair)
                out = objective.step(batch)
                optimiser.zero_grad()
                out.loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(objective.parameters(), config.grad_clip)
                optimiser.step()
                objective.after_step(batch, out)
                head_loss_sum += out.head_losses
                loss_sum += out.loss.detach()
                if out.assignments is None:
                    reported = False
                else:
                    settling.update(idx, out.assignments)
                for key, value in out.logs.items():
                    extras[key] = extras.get(key, 0.0) + value / steps_per_epoch
                steps_done += 1
                if progress is not None and s + 1 < steps_per_epoch and time.perf_counter() - last_call >= STEP_EVERY:
                    progress(steps_done, total_steps, None)
                    last_call = time.perf_counter()
            mean_loss = float(loss_sum) / steps_per_epoch
            if not math.isfinite(mean_loss):
                raise ImgclusterError(f"training diverged (loss {mean_loss}) in epoch {epoch + 1}; try a smaller {{lr}}")
            epoch_counter += 1
            logged = {key: float(value) for key, value in extras.items()}
            stop = False
            if reported:
                # The head watched: this epoch's lowest loss (cheap; the heads share an encoder and settle together).
                head = int(head_loss_sum.argmin()) if stage.select_head and objective.n_heads > 1 else int(objective.best_head)
                logged["changed_clusters"] = settling.fraction(head)
                fraction = config.stable_fraction if objective.stops_when_settled else None
                calm = calm + 1 if fraction is not None and logged["changed_clusters"] <= fraction else 0
                stop = calm >= config.stable_epochs and (epoch + 1) * steps_per_epoch >= config.min_steps and epoch + 1 < epochs
            if stop:  # the steps this stage will not take leave the total, so a display ends full
                total_steps -= (epochs - epoch - 1) * steps_per_epoch
            log = EpochLog(stage.name, epoch_counter, mean_loss, time.perf_counter() - t0, logged)
            history.append(log)
            if progress is not None:
                progress(steps_done, total_steps, log)
                last_call = time.perf_counter()
            if stop:
                break
        if stage.select_head and objective.n_heads > 1:
            objective.best_head.fill_(choose_head(objective, z, head_loss_sum))
            head_losses = head_loss_sum.tolist()
    return history, head_losses


# Heads whose tightness is within this share of the tightest count as tied (the same partition,
# up to rounding or a few images); among them the lowest loss is kept.
TIGHTNESS_TIES = 1e-4
# "tightest-low-loss" measures only the heads whose loss is within this share of the lowest. On
# Fashion-MNIST the heads of one training that ended in equally good or in class-mixing partitions
# were within 1.6 % of the lowest loss; on the strips of the objectives' contract test the tightness
# alone kept a worse head in 30 of 40 trainings, each 8 % or more above the lowest loss
# (benchmarks/results_training.md). Heads stuck in a poor start may fall inside the band (3.8 % in
# one Fashion-MNIST training), and their loose clusters keep them from being chosen.
LOSS_BAND = 0.03
HEAD_CHOICES = HEAD_CHOICE.words


@torch.no_grad()
def choose_head(objective: Objective, z: torch.Tensor, losses: torch.Tensor, choice: str | None = None) -> int:
    """The head to keep, by ``choice`` (default: the objective's ``head_choice``), given the features
    ``z`` [N, d] (unit rows) and each head's summed loss of the last epoch ``losses`` [H]. Never by labels.

    - ``"loss"``: the lowest loss.
    - ``"tightest"``: the head whose clusters lie closest around their mean directions in ``z``
      (:func:`head_tightness`); among heads tied with it, the lowest loss.
    - ``"tightest-low-loss"``: the same, among the heads within ``LOSS_BAND`` of the lowest loss.

    Why not the lowest loss alone: SeCu's heads end within their epoch-to-epoch loss noise of each
    other, and on Fashion-MNIST the loss kept heads that had split two classes across two mixed
    clusters (ACC 0.67 where the tightest had 0.74); why not the tightest alone: on groups that no
    nearest-centre partition finds it keeps the more k-means-like head, whose loss is far above
    the best head's (benchmarks/results_training.md).
    """
    choice = choice or objective.head_choice
    HEAD_CHOICE.check("head_choice", choice)
    losses = losses.detach().double().cpu()
    if choice == "loss":
        return int(losses.argmin())
    tightness = head_tightness(objective, z)
    if choice == "tightest-low-loss":
        eligible = losses <= losses.min() + LOSS_BAND * losses.min().abs()
        tightness = torch.where(eligible, tightness, -torch.inf)
    tied = tightness >= tightness.max() - TIGHTNESS_TIES * tightness.max().abs()
    return int(torch.where(tied, losses, torch.inf).argmin())


@torch.no_grad()
def head_tightness(objective: Objective, z: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """How tightly each head's clusters lie around their mean directions in ``z`` [N, d] (unit rows):
    the sum over clusters of the length of their summed features, spherical k-means' objective
    (as k-means keeps the best of its restarts), as a float64 tensor [H].

    Measured in the predictions the kept head will give (eval mode); BatchNorm's statistics and the
    objective's mode are left as they were.
    """
    was_training = objective.training
    objective.eval()
    sums = torch.zeros(objective.n_heads, objective.n_clusters, z.shape[1], device=z.device)
    for start in range(0, z.shape[0], batch_size):
        rows = z[start : start + batch_size]
        labels = objective.head_probs(rows).argmax(-1)  # [H, b]
        for head in range(objective.n_heads):
            sums[head].index_add_(0, labels[head], rows)
    objective.train(was_training)
    return sums.norm(dim=-1).sum(-1).double().cpu()
