"""The stopping rule: training ends once the clusters settle, and not before."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from imgcluster.config import TrainConfig
from imgcluster.errors import ParameterError
from imgcluster.neighbours import knn_search, l2_normalise
from imgcluster.objectives import Batch, Objective, StepOutput
from imgcluster.train import _gradient_training, train_objective


class Scripted(Objective):
    """Assigns image i to cluster (i + epoch) % 2 until ``settle_at``, then (i + settle_at) % 2 for good."""

    name = "scripted"
    stops_when_settled = True

    def __init__(self, settle_at: int, report: bool = True) -> None:
        super().__init__(4, 2, None)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.settle_at, self.report, self.epoch = settle_at, report, 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def step(self, batch: Batch) -> StepOutput:
        shift = min(self.epoch, self.settle_at)
        assignments = ((batch.index + shift) % 2).unsqueeze(0)
        return StepOutput(
            loss=self.weight * 0 + 1, head_losses=torch.ones(1), assignments=assignments if self.report else None
        )


def epochs_run(settle_at: int, config: TrainConfig, report: bool = True) -> int:
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    knn = np.zeros((40, 1), dtype=np.int64)
    objective = Scripted(settle_at, report)
    history, _ = _gradient_training(objective, x, knn, 8, 20, config, torch.device("cpu"), torch.Generator().manual_seed(0), None)
    return len(history)


def test_stops_once_nothing_changes_for_the_given_epochs_and_not_before() -> None:
    # Epoch 0 sees every image for the first time; epochs 1..3 move every image; from epoch 4 on nothing moves.
    config = TrainConfig(stable_fraction=0.0, stable_epochs=2, min_steps=0)
    assert epochs_run(3, config) == 6  # epochs 4 and 5 unchanged
    assert epochs_run(3, dataclasses.replace(config, stable_epochs=3)) == 7
    assert epochs_run(10, config) == 13
    # 5 steps an epoch: with 45 steps before the rule may act (min_steps), the settled run goes on to epoch 9
    assert epochs_run(3, dataclasses.replace(config, min_steps=45)) == 9
    assert epochs_run(3, dataclasses.replace(config, min_steps=30)) == 6


def test_trains_every_epoch_without_a_rule_or_without_assignments() -> None:
    assert epochs_run(3, TrainConfig(stable_fraction=None)) == 20
    Scripted.stops_when_settled = False  # an objective the rule was not measured on
    try:
        assert epochs_run(3, TrainConfig(stable_fraction=0.0, min_steps=0)) == 20
    finally:
        Scripted.stops_when_settled = True
    assert epochs_run(3, TrainConfig(stable_fraction=0.0, min_steps=0), report=False) == 20
    assert epochs_run(30, TrainConfig(stable_fraction=0.0, min_steps=0)) == 20  # never settles within the 20 epochs


def test_a_stop_gives_the_model_of_a_run_asked_for_that_many_epochs() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    x = (centres[np.repeat(np.arange(3), 60)] + rng.normal(size=(180, 16))).astype(np.float32)
    neighbours = knn_search(x, 8)[0]
    config = TrainConfig(clusters=3, epochs=40, batch_size=32, knn=8, seed=2, min_steps=0, stable_fraction=0.02)
    stopped = train_objective(x, neighbours, config, torch.device("cpu"))
    trained = len(stopped.history)
    assert stopped.stopped_early and 3 <= trained < 40 and stopped.schedule["epochs_trained"] == trained
    changed = [log.extras["changed_clusters"] for log in stopped.history]
    assert changed[-1] <= 0.02 and changed[-2] <= 0.02 and changed[0] == 1.0
    fixed = train_objective(x, neighbours, dataclasses.replace(config, epochs=trained, stable_fraction=None), torch.device("cpu"))
    assert not fixed.stopped_early
    z = torch.from_numpy(l2_normalise(x))
    with torch.no_grad():
        assert torch.equal(stopped.objective.predict(z), fixed.objective.predict(z))


@pytest.mark.parametrize(
    ("field", "value"),
    [("stable_fraction", -0.1), ("stable_fraction", 1.5), ("stable_fraction", float("nan")), ("stable_epochs", 0), ("stable_epochs", 1.5)],
)
def test_settings_out_of_range_are_refused(field: str, value: float) -> None:
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    with pytest.raises(ParameterError, match=field):
        train_objective(x, np.zeros((40, 1), dtype=np.int64), TrainConfig(clusters=2, **{field: value}), torch.device("cpu"))


def test_settings_are_saved_with_the_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from imgcluster.fitting import fit_head

    x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    config = TrainConfig(clusters=2, epochs=3, batch_size=16, min_steps=0, stable_fraction=0.25, stable_epochs=3)
    fitted = fit_head(x, config, torch.device("cpu"), auto=False, k_min=2, k_max=2, seed=0)
    saved = json.loads(json.dumps(fitted.description))
    assert saved["train"]["stable_fraction"] == 0.25 and saved["train"]["stable_epochs"] == 3
    assert saved["schedule"]["epochs_trained"] == len(fitted.history)


def test_progress_ends_full_when_training_stops_early() -> None:
    calls: list[tuple[int, int]] = []
    x = np.eye(4, dtype=np.float32)[np.arange(40) % 4]
    history, _ = _gradient_training(
        Scripted(3), x, np.zeros((40, 1), dtype=np.int64), 8, 20, TrainConfig(stable_fraction=0.0, min_steps=0), torch.device("cpu"),
        torch.Generator().manual_seed(0), lambda done, total, log: calls.append((done, total)),
    )  # fmt: skip
    assert len(history) == 6 and calls[0] == (0, 100) and calls[-1] == (30, 30)


def test_epochs_given_are_trained_in_full() -> None:
    from imgcluster.head_config import train_config

    common = dict(batch_size=512, lr=1e-3, knn=20, k_min=2, k_max=10, balance=None, self_label=False, uco=False, options={})
    given = train_config("secu", 3, 0, epochs=7, **common)  # type: ignore[arg-type]
    default = train_config("secu", 3, 0, epochs=None, **common)  # type: ignore[arg-type]
    assert given.stable_fraction is None and given.min_steps == 0
    assert default.stable_fraction == TrainConfig.stable_fraction and default.min_steps == TrainConfig.min_steps


def test_a_stopped_run_says_so_and_its_progress_ends_full() -> None:
    from imgcluster.fitting import fit_head

    events = []
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    x = (centres[np.repeat(np.arange(3), 60)] + rng.normal(size=(180, 16))).astype(np.float32)
    config = TrainConfig(clusters=3, epochs=40, batch_size=32, knn=8, seed=2, min_steps=0, stable_fraction=0.02)
    fitted = fit_head(x, config, torch.device("cpu"), auto=False, k_min=2, k_max=3, seed=2, progress=events.append)
    trained = len(fitted.history)
    assert trained < 40
    assert any(e.kind == "info" and e.message.startswith(f"stopped after epoch {trained}: at most 2.0% ") for e in events)
    last = [e for e in events if e.stage == "train" and e.kind == "advance"][-1]
    assert last.done == last.total == trained * (180 // 32)
