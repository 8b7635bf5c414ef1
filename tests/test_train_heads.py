"""Which head training keeps (``train.choose_head``): SeCu's default, the tightest clusters in the input
features among the heads near the lowest loss; or the lowest loss; or the tightest of all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgcluster.config import TrainConfig
from imgcluster.neighbours import knn_search, l2_normalise
from imgcluster.objectives import Batch, Objective, StepOutput, create_objective
from imgcluster.train import LOSS_BAND, _gradient_training, choose_head, head_tightness, train_objective


class Heads(Objective):
    """Three heads on :func:`two_groups`: head 0 splits the images by a noise coordinate (both groups in
    both clusters), head 1 follows the two groups, head 2 cuts them as head 0 does but along the other
    sign, whatever ``same``. ``losses`` are what each head reports per step. ``same``: heads 0 and 1 follow the groups
    (under other cluster numbers)."""

    name = "heads"

    def __init__(self, choice: str, losses: tuple[float, ...], same: bool = False) -> None:
        super().__init__(3, 2, None)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.choice, self.losses, self.same = choice, torch.tensor(losses), same

    @property
    def head_choice(self) -> str:
        return self.choice

    @property
    def n_heads(self) -> int:
        return 3

    def step(self, batch: Batch) -> StepOutput:
        return StepOutput(loss=self.weight * 0 + 1, head_losses=self.losses)

    def head_probs(self, z: torch.Tensor) -> torch.Tensor:
        groups, noise = (z[:, 1] > z[:, 0]).long(), (z[:, 2] > 0).long()
        first = 1 - groups if self.same else noise
        return torch.stack([F.one_hot(first, 2), F.one_hot(groups, 2), F.one_hot(1 - noise, 2)]).float()


def two_groups(n: int = 40) -> np.ndarray:
    """Half the rows near e0, half near e1, each with a small +- third coordinate."""
    rows = np.zeros((n, 3), dtype=np.float32)
    rows[: n // 2, 0] = rows[n // 2 :, 1] = 1.0
    rows[:, 2] = np.where(np.arange(n) % 2 == 0, 0.1, -0.1)
    return l2_normalise(rows)


def kept(choice: str, losses: tuple[float, ...], same: bool = False) -> int:
    """The head training keeps after two epochs in which every step reports ``losses``."""
    objective = Heads(choice, losses, same)
    x = two_groups()
    config = TrainConfig(stable_fraction=None, min_steps=0)
    knn = np.zeros((40, 1), dtype=np.int64)
    _gradient_training(objective, x, knn, 8, 2, config, torch.device("cpu"), torch.Generator().manual_seed(0), None)
    return int(objective.best_head)


NEAR = (1.0, 1.0 + LOSS_BAND / 2, 1.2)  # head 1 (the groups) within the band of head 0's lowest loss


def test_the_default_keeps_the_head_that_follows_the_groups_over_a_lower_loss_that_mixes_them() -> None:
    # SeCu's heads end within their loss noise of each other, and the lowest loss may mix two groups
    assert kept("tightest-low-loss", NEAR) == 1
    assert kept("loss", NEAR) == 0  # the paper's choice, and every other objective's


def test_a_tight_head_far_above_the_lowest_loss_is_not_kept() -> None:
    # Head 1 is the tightest but its loss is 1.5 bands above the lowest: a head stuck in another partition
    far = (1.0, 1.0 + 1.5 * LOSS_BAND, 1.2)
    assert kept("tightest-low-loss", far) == 0
    assert kept("tightest", far) == 1  # the option that ignores the loss keeps it


def test_among_heads_as_tight_as_the_tightest_the_lowest_loss_is_kept() -> None:
    # Heads 0 and 1 are the same partition under other cluster numbers: the loss decides between them
    assert kept("tightest-low-loss", (1.0, 1.0 + LOSS_BAND / 2, 1.2), same=True) == 0
    assert kept("tightest-low-loss", (1.0 + LOSS_BAND / 2, 1.0, 1.2), same=True) == 1
    z = torch.from_numpy(two_groups())
    assert choose_head(Heads("tightest", (0, 0, 0), same=True), z, torch.tensor([2.0, 1.0, 0.5])) == 1


def test_a_choice_passed_overrides_the_objectives() -> None:
    z = torch.from_numpy(two_groups())
    objective = Heads("loss", NEAR)
    assert choose_head(objective, z, objective.losses) == 0
    assert choose_head(objective, z, objective.losses, "tightest-low-loss") == 1


def test_an_unknown_choice_is_refused_not_taken_for_the_tightest() -> None:
    with pytest.raises(ValueError, match="head_choice must be one of 'tightest-low-loss', 'loss', 'tightest', got 'tight'"):
        choose_head(Heads("loss", NEAR), torch.from_numpy(two_groups()), torch.tensor(NEAR), "tight")


def test_secu_keeps_the_tightest_low_loss_head_by_default_and_the_others_on_request() -> None:
    assert create_objective("secu", 8, 3, {}).head_choice == "tightest-low-loss"
    assert create_objective("secu", 8, 3, {"head_choice": "loss"}).head_choice == "loss"
    assert create_objective("scan", 8, 3, {}).head_choice == "loss"  # the other objectives keep the lowest loss


@pytest.mark.parametrize("choice", ["tightest-low-loss", "tightest"])
def test_secu_keeps_the_head_its_choice_names_and_choosing_changes_nothing_else(choice: str) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 2
    x = (centres[np.repeat(np.arange(4), 50)] + rng.normal(size=(200, 16))).astype(np.float32)
    config = TrainConfig(
        clusters=4, epochs=3, batch_size=32, knn=5, min_steps=0, stable_fraction=None, seed=4, objective_options={"head_choice": choice}
    )
    result = train_objective(x, knn_search(x, 5)[0], config, torch.device("cpu"))
    objective = result.objective
    z = torch.from_numpy(l2_normalise(x))
    with torch.no_grad():
        labels = objective.head_probs(z).argmax(-1).numpy()
    unit = l2_normalise(x)
    tightness = np.array([sum(np.linalg.norm(unit[labels[h] == k].sum(0)) for k in range(4)) for h in range(objective.n_heads)])
    assert tightness.min() < tightness.max() * (1 - 1e-3)  # some head is looser, so the choice is a real one
    np.testing.assert_allclose(head_tightness(objective, z, batch_size=64).numpy(), tightness, rtol=1e-5)  # in pieces: the same sums
    losses = np.array(result.head_losses)
    assert losses.shape == (objective.n_heads,)
    eligible = losses <= losses.min() * (1 + LOSS_BAND) if choice == "tightest-low-loss" else np.ones_like(losses, dtype=bool)
    best = tightness[eligible].max()
    assert eligible[int(objective.best_head)] and tightness[int(objective.best_head)] >= best * (1 - 1e-4)
    objective.train()
    state = {key: value.clone() for key, value in objective.state_dict().items()}
    choose_head(objective, z, torch.from_numpy(losses))
    assert objective.training  # left in the mode it was found in, BatchNorm's statistics untouched
    assert all(torch.equal(state[key], value) for key, value in objective.state_dict().items())
