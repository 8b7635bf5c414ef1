"""DDC: the Cauchy-Schwarz maths on hand-made cases, gradients, training on blobs, checkpoints."""

from functools import partial

import numpy as np
import pytest
import torch
from toys import blobs, random_batch, train_toy

from imgcluster.errors import ImgclusterError
from imgcluster.objectives import create_objective
from imgcluster.objectives.ddc import (
    cs_divergence,
    ddc_terms,
    gaussian_kernel,
    orthogonality,
    simplex_memberships,
    squared_distances,
)
from imgcluster.scoring import hungarian_accuracy


def onehot(labels: list[int], k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), k).float()


# --- pure functions -------------------------------------------------------------------------------


def test_squared_distances_match_cdist() -> None:
    x = torch.randn(2, 7, 5)
    assert torch.allclose(squared_distances(x), torch.cdist(x, x) ** 2, atol=1e-4)


def test_kernel_bandwidth_is_relative_to_the_median() -> None:
    x = torch.randn(30, 4)
    k = gaussian_kernel(x, 0.15)
    dist = torch.cdist(x, x) ** 2
    median = dist[torch.triu_indices(30, 30, 1).unbind()].median()
    assert torch.allclose(k, torch.exp(-dist / (2 * 0.15 * median)), atol=1e-5)
    assert torch.allclose(torch.diagonal(k), torch.ones(30), atol=1e-5)
    # Scaling the data does not change the kernel: the bandwidth follows it.
    assert torch.allclose(gaussian_kernel(10 * x, 0.15), k, atol=1e-5)


def test_cs_divergence_of_orthogonal_indicators_is_zero_and_of_identical_ones_is_one() -> None:
    separated = onehot([0, 0, 1, 1, 2, 2], 3)
    # A block kernel: similarity 1 inside a cluster, 0 across, as for well-separated groups.
    kernel = separated @ separated.T
    assert float(cs_divergence(separated, kernel)) == pytest.approx(0.0, abs=1e-6)
    identical = torch.full((6, 3), 1 / 3)
    assert float(cs_divergence(identical, kernel)) == pytest.approx(1.0, abs=1e-6)
    # Empty clusters score the worst value, so collapsing cannot help.
    collapsed = onehot([0] * 6, 3)
    assert float(cs_divergence(collapsed, kernel)) == pytest.approx(1.0, abs=1e-6)
    # And a half-way case lies in between; the result is symmetric in the clusters' order.
    mixed = 0.5 * separated + 0.5 * identical
    assert 0.0 < float(cs_divergence(mixed, kernel)) < 1.0
    assert torch.allclose(cs_divergence(separated[:, [2, 0, 1]], kernel), cs_divergence(separated, kernel))


def test_cs_divergence_matches_the_formula_term_by_term() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(9, 4, generator=g)
    kernel = gaussian_kernel(torch.randn(9, 3, generator=g), 0.15)
    total = 0.0
    for p in range(4):
        for q in range(p + 1, 4):
            num = a[:, p] @ kernel @ a[:, q]
            total += num / torch.sqrt((a[:, p] @ kernel @ a[:, p]) * (a[:, q] @ kernel @ a[:, q]))
    assert float(cs_divergence(a, kernel)) == pytest.approx(float(total) * 2 / (4 * 3), rel=1e-5)


def test_orthogonality_is_the_mean_over_pairs() -> None:
    a = torch.rand(7, 3)
    gram = a @ a.T
    expected = gram.triu(1).sum() * 2 / (7 * 6)
    assert float(orthogonality(a)) == pytest.approx(float(expected), rel=1e-5)
    assert float(orthogonality(onehot([0, 1, 2, 0, 1, 2], 3))) == pytest.approx(3 / 15)  # 3 same-cluster pairs of 15
    assert float(orthogonality(onehot([0] * 6, 3))) == pytest.approx(1.0)


def test_simplex_memberships_peak_at_the_corners() -> None:
    m = simplex_memberships(onehot([1], 3))
    assert torch.allclose(m, torch.tensor([[np.exp(-2.0), 1.0, np.exp(-2.0)]], dtype=torch.float32))


def test_balanced_assignment_scores_lower_than_collapsed() -> None:
    x, y = blobs(k=3, n=20, d=8)
    hidden = torch.from_numpy(x)
    balanced = onehot(y.tolist(), 3)
    collapsed = onehot([0] * len(y), 3)
    uniform = torch.full((len(y), 3), 1 / 3)
    loss = {name: sum(ddc_terms(a, hidden, 0.15)) for name, a in [("balanced", balanced), ("collapsed", collapsed), ("uniform", uniform)]}
    assert float(loss["balanced"]) < float(loss["uniform"]) < float(loss["collapsed"]) + 1e-6
    assert float(loss["balanced"]) < 0.5 * float(loss["collapsed"])


# --- the objective --------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"uco": True}, {"uco": True, "uco_layers": "input"}, {"neighbour_weight": 1.0}])
def test_finite_loss_and_gradients(options: dict) -> None:
    torch.manual_seed(0)
    objective = create_objective("ddc", 16, 5, options)
    out = objective.step(random_batch())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.head_losses.shape == (objective.n_heads,) and not out.head_losses.requires_grad
    assert out.loss.item() == pytest.approx(out.head_losses.sum().item(), rel=1e-5)
    out.loss.backward()
    grads = [p.grad for p in objective.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    if options.get("uco"):
        assert "companion" in out.logs
    probs = objective.eval().head_probs(random_batch().anchors)
    assert probs.shape == (objective.n_heads, 24, 5)
    assert torch.allclose(probs.sum(-1), torch.ones(objective.n_heads, 24), atol=1e-5)


def test_companion_objectives_change_the_loss() -> None:
    batch = random_batch()
    torch.manual_seed(0)
    plain = create_objective("ddc", 16, 5, {}).step(batch)
    torch.manual_seed(0)
    uco = create_objective("ddc", 16, 5, {"uco": True}).step(batch)
    assert torch.all(uco.head_losses > plain.head_losses)


def test_unknown_companion_layer_is_a_clear_error() -> None:
    with pytest.raises(ImgclusterError, match="uco_layers"):
        create_objective("ddc", 16, 5, {"uco": True, "uco_layers": "input,conv3"})


_train = partial(train_toy, "ddc", epochs=8, min_steps=100)


@pytest.mark.parametrize("options", [{}, {"uco": True}])
def test_recovers_blobs_without_collapse(options: dict) -> None:
    result, x, y = _train(options)
    labels = result.objective.predict(torch.from_numpy(x)).argmax(1).numpy()
    assert np.unique(labels).size >= 3
    assert hungarian_accuracy(y, labels) >= 0.9
    assert all(np.isfinite(h.loss) for h in result.history)


def test_same_seed_same_result_and_checkpoint_round_trip() -> None:
    a, x, _ = _train(seed=5)
    b, _, _ = _train(seed=5)
    z = torch.from_numpy(x)
    pa = a.objective.predict(z)
    assert torch.equal(pa, b.objective.predict(z))
    fresh = create_objective("ddc", 32, 4, {})
    fresh.load_state_dict(a.objective.state_dict(), strict=True)
    fresh.eval()
    assert int(fresh.best_head) == int(a.objective.best_head)
    assert torch.equal(fresh.predict(z), pa)


def test_safetensors_round_trip(tmp_path) -> None:
    from imgcluster.checkpoint import load_checkpoint, save_checkpoint

    result, x, _ = _train(options={"uco": True}, seed=1)
    save_checkpoint(tmp_path / "ddc.safetensors", result.objective, {})
    loaded, meta = load_checkpoint(tmp_path / "ddc.safetensors")
    z = torch.from_numpy(x)
    assert meta["objective"] == "ddc" and loaded.params.uco is True
    assert torch.equal(loaded.predict(z), result.objective.predict(z))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_gpu() -> None:
    result, x, y = _train(device="cuda")
    z = torch.from_numpy(x).cuda()
    labels = result.objective.predict(z).argmax(1).cpu().numpy()
    assert hungarian_accuracy(y, labels) >= 0.9
    cpu = create_objective("ddc", 32, 4, {})
    cpu.load_state_dict({k: v.cpu() for k, v in result.objective.state_dict().items()})
    assert torch.allclose(cpu.eval().predict(z.cpu()), result.objective.predict(z).cpu(), atol=1e-4)
