"""SCAN's loss (imgcluster/objectives/scan.py) on hand-made cases.

Training on blobs and the self-labelling stage are tested in tests/test_train.py.
"""

import math

import torch
import torch.nn.functional as F
from toys import random_batch

from imgcluster.objectives import create_objective
from imgcluster.objectives.base import Batch
from imgcluster.objectives.scan import consistency_entropy_loss


def test_balanced_assignment_scores_lower_than_collapsed() -> None:
    """Confident, agreeing neighbours: consistency 0 both ways; only the entropy term tells them apart."""
    k, lam = 4, 5.0
    balanced = F.one_hot(torch.arange(8) % k, k).float()[None]  # [H=1, B=8, K]
    collapsed = F.one_hot(torch.zeros(8, dtype=torch.long), k).float()[None]
    loss_b, cons_b, ent_b = consistency_entropy_loss(balanced, balanced, lam)
    loss_c, cons_c, ent_c = consistency_entropy_loss(collapsed, collapsed, lam)
    assert torch.allclose(cons_b, torch.zeros(1), atol=1e-6) and torch.allclose(cons_c, torch.zeros(1), atol=1e-6)
    assert torch.allclose(ent_b, torch.tensor([math.log(k)])) and torch.allclose(ent_c, torch.zeros(1), atol=1e-6)
    assert torch.allclose(loss_b, torch.tensor([-lam * math.log(k)])) and loss_b < loss_c


def test_consistency_is_minus_log_of_the_agreement() -> None:
    p_a = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])
    p_n = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])  # the second pair disagrees completely
    _, consistency, _ = consistency_entropy_loss(p_a, p_n, 0.0)
    expected = -(math.log(0.5) + math.log(1e-8)) / 2  # the agreement is floored at EPS, so the loss stays finite
    assert torch.allclose(consistency, torch.tensor([expected]), rtol=1e-5)


def test_finite_loss_and_gradients_for_every_head() -> None:
    torch.manual_seed(0)
    objective = create_objective("scan", 16, 5, {"n_heads": 3, "hidden": 32})
    out = objective.step(random_batch())
    assert out.head_losses.shape == (3,) and torch.isfinite(out.loss) and torch.isfinite(out.head_losses).all()
    out.loss.backward()
    grads = [p.grad for p in objective.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_self_label_step_is_class_balanced_cross_entropy_on_confident_anchors() -> None:
    torch.manual_seed(0)
    objective = create_objective("scan", 16, 3, {"n_heads": 1, "hidden": 32, "self_label_threshold": 0.0})
    objective.self_labelling = True
    batch = random_batch()
    out = objective.step(batch)
    with torch.no_grad():
        target = objective.heads(batch.anchors)[0].argmax(-1)
    counts = torch.bincount(target, minlength=3).float()
    weight = torch.where(counts > 0, counts.sum() / (counts.clamp_min(1) * 3), torch.zeros_like(counts))
    expected = F.cross_entropy(objective.heads(batch.neighbours)[0], target, weight=weight)
    assert torch.allclose(out.loss, expected) and out.logs["confident"] == 1.0
    none_confident = create_objective("scan", 16, 3, {"n_heads": 1, "self_label_threshold": 1.0})
    none_confident.self_labelling = True
    quiet = none_confident.step(Batch(batch.anchors, batch.neighbours, batch.index, batch.neighbour_index))
    assert float(quiet.loss.detach()) == 0.0
