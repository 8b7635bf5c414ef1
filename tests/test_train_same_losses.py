"""The training loop's cheaper bookkeeping changes no number: losses and predictions as the plain loop gives.

``reference_training`` is the loop as it was before the speed work (torch.optim.AdamW, anchors and
neighbours gathered apart), kept here as the yardstick for every trainable objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcluster.config import TrainConfig
from imgcluster.neighbours import knn_search, l2_normalise
from imgcluster.objectives import Batch, create_objective, list_objectives, objective_class
from imgcluster.train import effective_knn, effective_schedule, seed_everything, train_objective

TRAINABLE = [name for name in list_objectives() if objective_class(name).trainable]


def reference_training(x: np.ndarray, neighbours: np.ndarray, config: TrainConfig) -> tuple[list[float], torch.Tensor]:
    n = x.shape[0]
    z = torch.from_numpy(l2_normalise(x))
    generator = seed_everything(config.seed)
    objective = create_objective(config.objective, x.shape[1], config.clusters, config.objective_options)
    batch_size, epochs_main = effective_schedule(n, config)
    knn = torch.from_numpy(neighbours[:, : effective_knn(n, config)].astype(np.int64))
    steps = max(1, n // batch_size)
    objective.setup(z, knn, generator)
    losses: list[float] = []
    for stage in objective.stages():
        objective.begin_stage(stage)
        optimiser = torch.optim.AdamW(objective.param_groups(config.lr, config.weight_decay))
        head_sum = torch.zeros(objective.n_heads)
        epoch_counter = len(losses)
        for epoch in range(stage.epochs if stage.epochs is not None else epochs_main):
            objective.train()
            objective.on_epoch_start(epoch_counter + epoch)
            order = torch.randperm(n, generator=generator)[: steps * batch_size]
            pick = torch.randint(knn.shape[1], (order.shape[0],), generator=generator)
            total = torch.zeros(())
            head_sum.zero_()  # the last epoch's head losses choose the head
            for s in range(steps):
                idx = order[s * batch_size : (s + 1) * batch_size]
                nidx = knn[idx, pick[s * batch_size : (s + 1) * batch_size]]
                batch = Batch(anchors=z[idx], neighbours=z[nidx], index=idx, neighbour_index=nidx)
                out = objective.step(batch)
                optimiser.zero_grad(set_to_none=True)
                out.loss.backward()
                optimiser.step()
                objective.after_step(batch, out)
                head_sum += out.head_losses
                total += out.loss.detach()
            losses.append(float(total) / steps)
        if stage.select_head and objective.n_heads > 1:
            objective.best_head.fill_(int(head_sum.argmin()))
    objective.eval()
    with torch.no_grad():
        return losses, objective.predict(z)


@pytest.mark.parametrize("name", TRAINABLE)
def test_losses_and_predictions_equal_the_plain_loop(name: str) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    x = (centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 16))).astype(np.float32)
    neighbours = knn_search(x, 8)[0]
    options = {"self_label_epochs": 2} if name == "scan" else {}
    config = TrainConfig(
        objective=name, clusters=3, epochs=3, batch_size=32, knn=8, seed=4, min_steps=0, stable_fraction=None, objective_options=options
    )
    losses, probs = reference_training(x, neighbours, config)
    result = train_objective(x, neighbours, config, torch.device("cpu"))
    assert [log.loss for log in result.history] == losses
    with torch.no_grad():
        assert torch.equal(result.objective.predict(torch.from_numpy(l2_normalise(x))), probs)
