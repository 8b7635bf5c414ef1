"""Neural mixture-model EM: E/M-step maths on hand-made cases, whitening, training on blobs, checkpoints."""

import math
from functools import partial

import numpy as np
import pytest
import torch
from toys import random_batch, train_toy

from imgcluster.objectives import create_objective
from imgcluster.objectives.mixture_em import Whitening, em_terms, mixture_em_loss
from imgcluster.scoring import hungarian_accuracy


def cosine_log_densities(labels: list[int], k: int, kappa: float = 10.0) -> torch.Tensor:
    """``kappa * cos`` for embeddings sitting exactly on their cluster's centre (orthogonal centres)."""
    return kappa * torch.nn.functional.one_hot(torch.tensor(labels), k).float()


# --- the loss maths -------------------------------------------------------------------------------


def test_e_step_is_bayes_rule_and_m_step_objective_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    log_pi = torch.randn(4, generator=g).log_softmax(-1)
    log_f = torch.randn(6, 4, generator=g)
    em, gamma, log_q = em_terms(log_pi, log_f)
    joint = log_pi.exp() * log_f.exp()
    assert torch.allclose(gamma, joint / joint.sum(-1, keepdim=True), atol=1e-6)
    assert not gamma.requires_grad
    assert torch.allclose(log_q.exp(), gamma, atol=1e-6)
    expected = -(gamma * (log_pi + log_f)).sum(-1).mean()
    assert float(em) == pytest.approx(float(expected), rel=1e-6)


def test_m_step_gradient_on_pi_points_to_the_mean_responsibility() -> None:
    """d L_EM / d theta = pi - mean_i gamma_i: its fixed point is the closed-form M-step pi = mean gamma."""
    log_f = cosine_log_densities([0, 0, 0, 1, 2, 2], 3, kappa=4.0)
    theta = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    em, gamma, _ = em_terms(theta.log_softmax(-1), log_f)
    em.backward()
    assert torch.allclose(theta.grad, theta.detach().softmax(-1) - gamma.mean(0), atol=1e-6)


def test_balanced_assignment_scores_lower_than_collapsed() -> None:
    k = 4
    labels = [0, 1, 2, 3] * 6
    log_pi_uniform = torch.full((k,), 1.0 / k).log()
    balanced = cosine_log_densities(labels, k)
    collapsed = cosine_log_densities([0] * len(labels), k)
    log_pi_collapsed = torch.tensor([1.0 - 3e-3, 1e-3, 1e-3, 1e-3]).log()

    def total(log_pi: torch.Tensor, log_f: torch.Tensor, balance: float) -> float:
        return float(mixture_em_loss(log_pi, log_f, log_f, 1.0, balance)[0])

    # Every image confidently in its own, equally sized cluster: EM = -(log 1/4 + kappa), no balance penalty.
    assert total(log_pi_uniform, balanced, 1.0) == pytest.approx(math.log(k) - 10.0, abs=0.01)
    # EM alone prefers putting everything in one cluster (log pi_0 ~ 0): the known degenerate optimum ...
    assert total(log_pi_collapsed, collapsed, 0.0) < total(log_pi_uniform, balanced, 0.0)
    # ... which the uniform-prior term rules out.
    assert total(log_pi_collapsed, collapsed, 1.0) > total(log_pi_uniform, balanced, 1.0) + 1.0
    _, parts = mixture_em_loss(log_pi_collapsed, collapsed, collapsed, 1.0, 1.0)
    assert float(parts["balance"]) > 3.0


def test_consistency_penalises_neighbours_in_different_clusters() -> None:
    k = 4
    log_pi = torch.full((k,), 1.0 / k).log()
    anchors = cosine_log_densities([0, 1, 2, 3], k)
    _, agree = mixture_em_loss(log_pi, anchors, anchors, 1.0, 1.0)
    _, disagree = mixture_em_loss(log_pi, anchors, cosine_log_densities([1, 2, 3, 0], k), 1.0, 1.0)
    assert float(agree["consistency"]) < 0.01
    assert float(disagree["consistency"]) > 5.0


def test_whitening_gives_identity_covariance_and_uses_running_statistics_in_eval() -> None:
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 500, 6, generator=g) @ torch.randn(2, 6, 6, generator=g) + 3.0
    whiten = Whitening(2, 6, momentum=1.0, eps=0.0)
    w = whiten(e)
    cov = (w - w.mean(1, keepdim=True)).transpose(1, 2) @ (w - w.mean(1, keepdim=True)) / 499
    assert torch.allclose(w.mean(1), torch.zeros(2, 6), atol=1e-4)
    assert torch.allclose(cov, torch.eye(6).expand(2, 6, 6), atol=1e-3)
    whiten.eval()  # momentum 1: the running statistics are this batch's, so eval reproduces training
    assert torch.allclose(whiten(e), w, atol=1e-4)
    assert torch.allclose(whiten(e[:, :3]), w[:, :3], atol=1e-4)  # per image, whatever the batch


# --- the objective --------------------------------------------------------------------------------


def test_finite_loss_and_gradients() -> None:
    torch.manual_seed(0)
    objective = create_objective("mixture-em", 16, 5, {"n_heads": 3})
    out = objective.step(random_batch())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.head_losses.shape == (3,) and not out.head_losses.requires_grad
    assert out.loss.item() == pytest.approx(out.head_losses.sum().item(), rel=1e-5)
    assert {"em", "consistency", "balance", "pi_max"} <= set(out.logs)
    out.loss.backward()
    grads = [p.grad for p in objective.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert objective.mixing_logits.grad.abs().sum() > 0 and objective.centres.grad.abs().sum() > 0
    probs = objective.eval().head_probs(random_batch(seed=1).anchors)
    assert probs.shape == (3, 24, 5)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 24), atol=1e-5)


_train = partial(train_toy, "mixture-em", epochs=5, min_steps=150)


def test_recovers_blobs_without_collapse() -> None:
    result, x, y = _train()
    labels = result.objective.predict(torch.from_numpy(x)).argmax(1).numpy()
    assert np.unique(labels).size >= 3
    assert hungarian_accuracy(y, labels) >= 0.9
    assert all(np.isfinite(h.loss) for h in result.history)


def test_same_seed_same_result_and_state_dict_round_trip(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    a, x, _ = _train(seed=5, min_steps=20)
    b, _, _ = _train(seed=5, min_steps=20)
    z = torch.from_numpy(x)
    pa = a.objective.predict(z)
    assert torch.equal(pa, b.objective.predict(z))
    state = {k: v.detach().cpu().contiguous() for k, v in a.objective.state_dict().items()}
    assert {"whiten.running_mean", "whiten.running_cov", "centres", "mixing_logits"} <= set(state)
    save_file(state, tmp_path / "em.safetensors")
    fresh = create_objective("mixture-em", 32, 4, {})
    fresh.load_state_dict(load_file(tmp_path / "em.safetensors"), strict=True)
    fresh.eval()
    assert int(fresh.best_head) == int(a.objective.best_head)
    assert torch.equal(fresh.predict(z), pa)
    # Predictions are per image: the same for a single image as inside the full set.
    assert torch.allclose(fresh.predict(z[:1]), pa[:1], atol=1e-5)


def test_checkpoint_round_trip(tmp_path) -> None:
    from imgcluster.checkpoint import load_checkpoint, save_checkpoint

    result, x, _ = _train(options={"n_heads": 2, "balance": 2.0}, seed=1, min_steps=10)
    save_checkpoint(tmp_path / "em.safetensors", result.objective, {})
    loaded, meta = load_checkpoint(tmp_path / "em.safetensors")
    z = torch.from_numpy(x)
    assert meta["objective"] == "mixture-em" and loaded.params.balance == 2.0
    assert torch.equal(loaded.predict(z), result.objective.predict(z))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda() -> None:
    result, x, y = _train(min_steps=100, device="cuda")
    probs = result.objective.predict(torch.from_numpy(x).cuda())
    assert probs.is_cuda and torch.isfinite(probs).all()
    assert hungarian_accuracy(y, probs.argmax(1).cpu().numpy()) >= 0.9
