"""The contract every clustering objective fulfils.

An objective owns both its parameters (heads, centres, teachers) and its loss, because the
methods differ in both: SeCu keeps centres and dual variables, TEMI an EMA teacher, DDC its own
hidden layer. The training loop in :mod:`imgcluster.train` only knows this interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Range:
    """The values a numeric option may take: ``low``/``high`` bounds, each closed unless marked open.

    ``optional`` admits ``None`` (an option whose default ``None`` means "work it out").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """The range in words, as an error message ends: "at least 1", "greater than 0", "in [0, 1)"."""
        if self.high is None:
            if self.low is None:
                return "a number"
            if self.low_open:
                return f"greater than {self.low:g}"
            return f"at least {self.low:g}" if self.low != 0 else "0 or more"
        if self.low is None:
            return f"less than {self.high:g}" if self.high_open else f"at most {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, name: str, value: Any) -> None:
        """Raise ``ValueError`` naming ``name``, ``value`` and the range unless ``value`` lies in it."""
        if value is None and self.optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number {self.describe()}, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number {self.describe()}, got {value!r}")
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if below or above:
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class Choices:
    """The words a text option may be; ``separator`` admits a list of them (``"input,relu"``)."""

    words: tuple[str, ...]
    separator: str | None = None

    def describe(self) -> str:
        words = ", ".join(repr(w) for w in self.words)
        return f"a comma-separated list of {words}" if self.separator else f"one of {words}"

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        given = [s.strip() for s in value.split(self.separator)] if self.separator else [value]
        if not all(g in self.words for g in given if g) or not any(given):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")


COUNT = Range(1)  # iterations and the like: a whole number, at least 1
# Sizes of the head itself have upper bounds too: a typo such as n_heads=100000000 would otherwise
# be caught only by the memory allocator, after the embedding.
HEADS = Range(1, 64)
WIDTH = Range(1, 16384)  # hidden layers
SPHERE = Range(2, 16384)  # unit-vector embeddings: in 1-d they are +-1, two clusters at most
POSITIVE = Range(0, low_open=True)  # temperatures, concentrations, step sizes, learning-rate scales
WEIGHT = Range(0)  # weights of loss terms: 0 switches the term off
MOMENTUM = Range(0, 1, high_open=True)  # EMA momenta: 1 would never move
FRACTION = Range(0, 1)  # mixing weights and fractions
# How training picks the head kept (train.choose_head); the lowest loss is every objective's but SeCu's
HEAD_CHOICE = Choices(("tightest-low-loss", "loss", "tightest"))


class CheckedParams:
    """Base of every objective's ``Params`` dataclass: its options checked against ``ranges``.

    ``ranges`` (one entry per numeric or text option, the only place an objective states its
    valid values) is checked when the dataclass is built, so ``--option`` values fail on the
    command line, before any embedding, with a message naming the option, the value and the range.
    """

    ranges: ClassVar[dict[str, Range | Choices]] = {}

    def __post_init__(self) -> None:
        for name, allowed in self.ranges.items():
            allowed.check(name, getattr(self, name))


@dataclass
class Batch:
    """One training step's input: anchors, one mined neighbour each, and their row indices."""

    anchors: torch.Tensor  # [B, d] L2-normalised features
    neighbours: torch.Tensor  # [B, d] L2-normalised features of a random kNN partner
    index: torch.Tensor  # [B] rows of the anchors in the full feature matrix
    neighbour_index: torch.Tensor  # [B] rows of the neighbours
    # anchors then neighbours, [2B, d], when the loop gathered them as one block (anchors and
    # neighbours are then its halves): most objectives encode both views in one pass
    pair: torch.Tensor | None = None

    def stacked(self) -> torch.Tensor:
        """Anchors then neighbours, ``[2B, d]``: the gathered block without a copy when there is one."""
        return self.pair if self.pair is not None else torch.cat([self.anchors, self.neighbours])


@dataclass(frozen=True)
class Stage:
    """A training phase. ``epochs=None`` means the command's ``--epochs``."""

    name: str
    epochs: int | None = None
    select_head: bool = True  # pick the head kept at the end of this stage (train.choose_head)


@dataclass
class StepOutput:
    """What one step returns: the loss to minimise and one loss per head for head selection."""

    loss: torch.Tensor
    head_losses: torch.Tensor  # [H], detached; the lowest running mean picks the head kept
    # Diagnostics averaged per epoch; 0-d tensors are fine and cheaper: train.py reads them once an
    # epoch, so a step never waits for the GPU to report a number.
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    # [H, B]: the cluster each head gives each anchor now (the argmax its prediction would take),
    # without gradient; the loop counts how many change between epochs to stop once they settle.
    # None: the objective offers none, and its training runs every epoch.
    assignments: torch.Tensor | None = None


class Objective(nn.Module):
    """A clustering objective trained on cached, L2-normalised features.

    Subclasses set ``name`` and ``Params`` (a :class:`CheckedParams` dataclass of hyper-parameters
    with the paper's defaults and their valid ranges), and implement :meth:`step` and
    :meth:`head_probs`. ``trainable = False`` marks objectives fitted in closed form (k-means),
    which implement :meth:`fit` instead.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = True
    # Whether training may stop once the clusters settle (TrainConfig.stable_fraction): only for the
    # objectives whose ACC the early stop was measured to keep (benchmarks/results_training.md).
    # The others report their assignments too, for the log, and train every epoch.
    stops_when_settled: ClassVar[bool] = False
    Params: ClassVar[type]
    # Hyper-parameters that weight the objective's pull towards equal cluster sizes (its uniform
    # prior). ``--balance W`` multiplies their defaults by W; empty when the method has no such term.
    balance_options: ClassVar[tuple[str, ...]] = ()
    best_head: torch.Tensor

    def __init__(self, in_dim: int, n_clusters: int, params: Any) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.n_clusters = n_clusters
        self.params = params
        # Index of the head kept after training, chosen by its own loss or its clusters' tightness (never by labels).
        self.register_buffer("best_head", torch.zeros((), dtype=torch.long))

    @classmethod
    def balanced_options(cls, weight: float) -> dict[str, Any]:
        """The ``balance_options`` at W times their defaults: what ``--balance W`` sets."""
        defaults = cls.Params()
        return {name: getattr(defaults, name) * weight for name in cls.balance_options}

    @property
    def n_heads(self) -> int:
        return 1

    @property
    def head_choice(self) -> str:
        """How training picks the head kept among ``n_heads`` (``train.choose_head``): the lowest
        loss here; SeCu's option ``head_choice`` says otherwise (results_training.md)."""
        return "loss"

    # --- training hooks -------------------------------------------------------------------
    def setup(self, features: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator) -> None:
        """Called once before training with all features and the kNN table (both on device)."""

    def step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_step(self, batch: Batch, out: StepOutput) -> None:
        """Updates outside autograd (EMA teachers, dual variables), after the optimiser step."""

    def stages(self) -> list[Stage]:
        """The training phases in order; most objectives have one."""
        return [Stage("train")]

    def begin_stage(self, stage: Stage) -> None:
        """Switch behaviour between phases (SCAN's self-labelling)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch state (SeCu freezes the previous epoch's centres here)."""

    def fit(self, features: np.ndarray, seed: int) -> None:
        """Closed-form fitting for objectives with ``trainable = False``."""
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups; objectives with centres may want no weight decay on them."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]

    # --- inference ------------------------------------------------------------------------
    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignments of every head, ``[H, N, K]``, for L2-normalised features ``z``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignment ``[N, K]`` of the kept head."""
        return self.head_probs(z)[int(self.best_head)]

    @torch.no_grad()
    def explain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra per-image columns for ``assign --explain``; empty unless the method has them."""
        return {}
