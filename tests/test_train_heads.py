"""Which head training keeps: the lowest loss, or (SeCu's ``head_choice="tightest"``) the tightest clusters in the input features."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from imgcluster.config import TrainConfig
from imgcluster.neighbours import knn_search, l2_normalise
from imgcluster.objectives import Batch, Objective, StepOutput
from imgcluster.train import _gradient_training, tightest_head, train_objective


class TwoHeads(Objective):
    """Head 0 splits the images by a noise coordinate (both groups in both clusters) and reports the
    lower loss; head 1 follows the two groups and reports the higher loss. ``same``: both heads
    follow the groups (under other cluster numbers)."""

    name = "two-heads"

    def __init__(self, keeps_tightest: bool, same: bool = False) -> None:
        super().__init__(3, 2, None)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.tightest, self.same = keeps_tightest, same

    @property
    def keeps_tightest_head(self) -> bool:
        return self.tightest

    @property
    def n_heads(self) -> int:
        return 2

    def step(self, batch: Batch) -> StepOutput:
        return StepOutput(loss=self.weight * 0 + 1, head_losses=torch.tensor([1.0, 2.0]))

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        mixed = (z[:, 1] <= z[:, 0]).long() if self.same else (z[:, 2] > 0).long()
        groups = (z[:, 1] > z[:, 0]).long()
        return torch.stack([F.one_hot(mixed, 2), F.one_hot(groups, 2)]).float()


def two_groups(n: int = 40) -> np.ndarray:
    """Half the rows near e0, half near e1, each with a small +- third coordinate."""
    rows = np.zeros((n, 3), dtype=np.float32)
    rows[: n // 2, 0] = rows[n // 2 :, 1] = 1.0
    rows[:, 2] = np.where(np.arange(n) % 2 == 0, 0.1, -0.1)
    return l2_normalise(rows)


def kept(keeps_tightest: bool, same: bool = False) -> int:
    objective = TwoHeads(keeps_tightest, same)
    x = two_groups()
    config = TrainConfig(stable_fraction=None, min_steps=0)
    knn = np.zeros((40, 1), dtype=np.int64)
    _gradient_training(objective, x, knn, 8, 2, config, torch.device("cpu"), torch.Generator().manual_seed(0), None)
    return int(objective.best_head)


def test_the_tightest_head_is_kept_over_a_lower_loss_that_mixes_the_groups() -> None:
    assert kept(keeps_tightest=True) == 1
    assert kept(keeps_tightest=False) == 0  # the other objectives keep the lowest loss


def test_among_heads_as_tight_as_the_tightest_the_lowest_loss_is_kept() -> None:
    assert kept(keeps_tightest=True, same=True) == 0  # the same partition, numbered otherwise: the loss decides
    z = torch.from_numpy(two_groups())
    assert tightest_head(TwoHeads(True, same=True), z, torch.tensor([2.0, 1.0])) == 1
    assert tightest_head(TwoHeads(True), z, torch.tensor([1.0, 2.0])) == 1


def test_secu_keeps_the_lowest_loss_unless_told_to_keep_the_tightest() -> None:
    from imgcluster.objectives import create_objective

    assert not create_objective("secu", 8, 3, {}).keeps_tightest_head  # the paper's choice stays the default
    assert create_objective("secu", 8, 3, {"head_choice": "tightest"}).keeps_tightest_head


def test_secu_keeps_the_head_whose_clusters_are_tightest_and_choosing_changes_nothing_else() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 2
    x = (centres[np.repeat(np.arange(4), 50)] + rng.normal(size=(200, 16))).astype(np.float32)
    config = TrainConfig(
        clusters=4, epochs=3, batch_size=32, knn=5, min_steps=0, stable_fraction=None, seed=4, objective_options={"head_choice": "tightest"}
    )
    result = train_objective(x, knn_search(x, 5)[0], config, torch.device("cpu"))
    objective = result.objective
    z = torch.from_numpy(l2_normalise(x))
    with torch.no_grad():
        labels = objective.head_probs(z).argmax(-1).numpy()
    unit = l2_normalise(x)
    tightness = np.array([sum(np.linalg.norm(unit[labels[h] == k].sum(0)) for k in range(4)) for h in range(objective.n_heads)])
    assert tightness.min() < tightness.max() * (1 - 1e-3)  # some head is looser, so the choice is a real one
    assert tightness[int(objective.best_head)] >= tightness.max() * (1 - 1e-4)
    looser = int(np.argmin(tightness))
    objective.train()
    state = {key: value.clone() for key, value in objective.state_dict().items()}
    losses = torch.ones(objective.n_heads)
    losses[looser] = 0.0  # the lowest loss does not keep a looser head
    kept = tightest_head(objective, z, losses, batch_size=64)  # in pieces: the same sums
    assert tightness[kept] >= tightness.max() * (1 - 1e-4) and kept != looser
    assert objective.training  # left in the mode it was found in, BatchNorm's statistics untouched
    assert all(torch.equal(state[key], value) for key, value in objective.state_dict().items())
