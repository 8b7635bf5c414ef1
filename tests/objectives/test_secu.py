"""SeCu: loss math on hand-made cases and the size/entropy constraints.

Gradients, determinism, round trips and training (both constraints) are in test_contract.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toys import blob_config, random_knn_batch, toy_neighbours

from imgcluster.config import TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.objectives import create_objective
from imgcluster.objectives.secu import (
    assign_entropy,
    assign_size,
    entropy_gain,
    hardness_aware_centre_loss,
    representation_loss,
    update_duals,
)
from imgcluster.scoring import hungarian_accuracy
from imgcluster.train import train_objective

FAST = {"hidden": 128, "n_heads": 3}  # keeps the toy runs short; the method is unchanged


@pytest.fixture(scope="module")
def toy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return toy_neighbours()


def toy_config(**options: object) -> TrainConfig:
    return blob_config("secu", {**FAST, **options}, epochs=10, min_steps=120, seed=1)


def test_centre_loss_moves_only_the_assigned_centre_by_one_minus_p() -> None:
    z = F.normalize(torch.randn(6, 5), dim=1)
    centres = F.normalize(torch.randn(1, 5, 3), dim=1).requires_grad_(True)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2]])
    tau_w = 0.05
    hardness_aware_centre_loss(torch.einsum("nd,hdk->hnk", z, centres), labels, tau_w).sum().backward()
    p = (z @ centres[0].detach() / tau_w).softmax(-1)
    p_y = p[torch.arange(6), labels[0]]
    expected = torch.zeros(5, 3)
    for i in range(6):  # d/dc_y of CE = -(1 - p_y) z / tau_w, averaged over the batch; nothing on other centres
        expected[:, labels[0, i]] -= (1 - p_y[i]) * z[i] / (tau_w * 6)
    torch.testing.assert_close(centres.grad[0], expected)


def test_balanced_assignment_scores_lower_than_collapsed() -> None:
    k = 4
    centres = torch.eye(8)[:, :k].unsqueeze(0)  # orthonormal unit centres [1, d, K]
    labels = torch.arange(8).remainder(k).unsqueeze(0)  # the size constraint spreads the labels
    balanced = centres[0].T[labels[0]]  # every image sits on its own centre
    collapsed = centres[0].T[torch.zeros(8, dtype=torch.long)]  # every image sits on centre 0

    def losses(z: torch.Tensor) -> tuple[float, float]:
        sims = torch.einsum("nd,hdk->hnk", z, centres)
        c = hardness_aware_centre_loss(sims, labels, 0.05)
        x = representation_loss(sims / 0.05, sims / 0.05, labels, 0.2)
        return float(c), float(x)

    (c_bal, x_bal), (c_col, x_col) = losses(balanced), losses(collapsed)
    assert c_bal < 1e-6 and c_col > 10  # 3/4 of the images are 20 logits away from their label
    assert x_bal < x_col
    # For the balanced case the target is 0.8 * onehot(y) + 0.2 * onehot(y): a near-zero cross-entropy.
    assert x_bal < 1e-6


def test_dual_variables_keep_every_cluster_non_empty_on_a_skewed_batch() -> None:
    k, b = 4, 64
    centres = torch.eye(16)[:, :k]
    g = torch.Generator().manual_seed(0)
    z = F.normalize(centres[:, 0] + 0.1 * torch.randn(b, 16, generator=g), dim=1)  # all near centre 0
    cost = -(z @ centres).unsqueeze(0)  # [1, B, K]
    rho = torch.zeros(1, k)
    assert torch.bincount(assign_size(cost, rho)[0], minlength=k).tolist()[1:] == [0, 0, 0]
    history = []
    for _ in range(300):
        labels = assign_size(cost, rho)
        history.append(torch.bincount(labels[0], minlength=k))
        rho = update_duals(rho, labels, dual_lr=0.1, lower_bound=0.9)
        assert (rho >= 0).all()
    late = torch.stack(history[-100:])
    assert (late > 0).all(), "a cluster went empty after the duals had converged"
    # On average every cluster gets at least about lambda * B / K members.
    assert (late.float().mean(0) >= 0.9 * b / k - 2).all()


def test_dual_update_formula() -> None:
    rho = torch.tensor([[0.0, 0.5, 0.01]])
    labels = torch.tensor([[1, 1, 1, 0]])  # n = [1, 3, 0], B = 4
    new = update_duals(rho, labels, dual_lr=0.1, lower_bound=0.9)
    expected = (rho - 0.1 * torch.tensor([[1, 3, 0]]) / 4 + 0.1 * 0.9 / 3).clamp_min(0)
    torch.testing.assert_close(new, expected)


def test_entropy_gain_matches_brute_force() -> None:
    counts = torch.tensor([[50.0, 30.0, 15.0, 5.0]])
    current = torch.tensor([[0, 2, 3]])

    def entropy(c: torch.Tensor) -> float:
        p = c / c.sum()
        return float(-(p[p > 0] * p[p > 0].log()).sum())

    gain = entropy_gain(counts, current)
    for i, a in enumerate(current[0].tolist()):
        for k in range(4):
            moved = counts[0].clone()
            moved[a] -= 1
            moved[k] += 1
            assert math.isclose(float(gain[0, i, k]), entropy(moved) - entropy(counts[0]), abs_tol=1e-6)
    # Leaving the largest cluster for the smallest raises the entropy the most.
    assert int(gain[0, 0].argmax()) == 3


def test_entropy_constraint_spreads_a_skewed_batch() -> None:
    counts = torch.tensor([[97.0, 1.0, 1.0, 1.0]])
    current = torch.zeros(1, 8, dtype=torch.long)
    cost = torch.zeros(1, 8, 4)
    cost[..., 0] = -0.02  # centre 0 slightly closer for everyone
    assert (assign_entropy(cost, counts, current, alpha=0.0) == 0).all()
    assert (assign_entropy(cost, counts, current, alpha=100 * 0.12) != 0).all()


def test_training_state_stays_out_of_checkpoints() -> None:
    x, knn, _ = random_knn_batch()
    objective = create_objective("secu", 16, 4, {"hidden": 32, "dim": 8})
    objective.setup(x, knn, torch.Generator().manual_seed(0))
    assert objective.labels.shape == (objective.n_heads, 64)  # every image has a first label
    state = objective.state_dict()
    assert not {"labels", "rho", "counts", "prev_centres"} & set(state), "training-only state leaked into checkpoints"
    assert {"centres", "best_head"} <= set(state)


def test_unknown_constraint_is_rejected() -> None:
    with pytest.raises(ImgclusterError, match="constraint must be one of 'size', 'entropy', got 'nope'") as err:
        create_objective("secu", 8, 3, {"constraint": "nope"})
    assert isinstance(err.value, ParameterError)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("constraint", ["size", "entropy"])
def test_trains_on_gpu(constraint: str, toy: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, y, nn = toy
    result = train_objective(x, nn, toy_config(constraint=constraint), torch.device("cuda"))
    z = torch.from_numpy(x).cuda()
    labels = result.objective.predict(z).argmax(1).cpu().numpy()
    assert result.empty_clusters <= 1
    assert hungarian_accuracy(y, labels) >= 0.9
