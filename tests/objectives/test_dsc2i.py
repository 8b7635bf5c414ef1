"""DSC2I: loss terms on hand-made cases and distance explanations.

Gradients, determinism, round trips and training (both inter-cluster terms) are in test_contract.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toys import blob_config, random_knn_batch, toy_neighbours

from imgcluster.config import TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.objectives import create_objective
from imgcluster.objectives.dsc2i import (
    DSC2I,
    DSC2IParams,
    dsc2i_loss,
    inter_cluster,
    mutual_information,
    soft_assign,
    squared_distances,
)
from imgcluster.scoring import hungarian_accuracy
from imgcluster.train import train_objective

FAST = {"hidden": 128, "n_heads": 3}  # keeps the toy runs short; the method is unchanged


@pytest.fixture(scope="module")
def toy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return toy_neighbours()


def toy_config(**options: object) -> TrainConfig:
    return blob_config("dsc2i", {**FAST, **options}, epochs=10, min_steps=120, seed=1)


@pytest.fixture(scope="module")
def trained(toy: tuple[np.ndarray, np.ndarray, np.ndarray]) -> DSC2I:
    """A few steps are enough: the explanations must match the distances whatever the clustering."""
    x, _, nn = toy
    config = toy_config()
    config.epochs, config.min_steps = 2, 0
    objective = train_objective(x, nn, config, torch.device("cpu")).objective
    assert isinstance(objective, DSC2I)
    return objective


def test_logs_every_loss_term() -> None:
    x, knn, batch = random_knn_batch()
    objective = create_objective("dsc2i", 16, 4, {"hidden": 32, "dim": 8})
    objective.setup(x, knn, torch.Generator().manual_seed(0))
    assert set(objective.train().step(batch).logs) == {"intra", "inter", "mi", "knn"}


def test_alternate_updates_one_block_per_step() -> None:
    x, knn, batch = random_knn_batch()
    objective = create_objective("dsc2i", 16, 4, {"alternate": True, "hidden": 32, "dim": 8})
    objective.setup(x, knn, torch.Generator().manual_seed(0))
    objective.train()
    for turn in ("encoder", "centres"):
        objective.zero_grad(set_to_none=True)
        objective.step(batch).loss.backward()
        encoder_moves = objective.encoder[0].weight.grad is not None
        centres_move = objective.centres.grad is not None and bool(objective.centres.grad.abs().sum() > 0)
        assert (encoder_moves, centres_move) == ((True, False) if turn == "encoder" else (False, True))


def test_squared_distances_match_cdist() -> None:
    z = F.normalize(torch.randn(7, 5), dim=1)
    c = F.normalize(torch.randn(2, 5, 3), dim=1)
    for h in range(2):
        torch.testing.assert_close(squared_distances(z, c)[h], torch.cdist(z, c[h].T) ** 2, atol=1e-5, rtol=1e-5)


def test_balanced_assignment_scores_lower_than_collapsed() -> None:
    k, b = 4, 8
    params = DSC2IParams()
    centres = torch.eye(8)[:, :k].unsqueeze(0)  # orthonormal unit centres [1, d, K]
    balanced = centres[0].T[torch.arange(b).remainder(k)]  # every image on its own centre, all centres used
    collapsed = centres[0].T[torch.zeros(b, dtype=torch.long)]  # every image on centre 0

    def loss(z: torch.Tensor, c: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
        d2 = squared_distances(z, c)
        p = soft_assign(d2, params.temperature)
        total, terms = dsc2i_loss(p, p, d2, d2, c, params)
        return float(total), terms

    bal, t_bal = loss(balanced, centres)
    col, t_col = loss(collapsed, centres)
    assert bal < col
    assert math.isclose(float(t_bal["mi"]), math.log(k), rel_tol=1e-4)  # uniform marginal, confident images
    assert abs(float(t_col["mi"])) < 1e-4  # one cluster: no information
    assert float(t_bal["intra"]) < 1e-6 and float(t_bal["knn"]) < 1e-6
    # Centres that coincide pay for it.
    merged = torch.eye(8)[:, [0, 0, 1, 1]].unsqueeze(0)
    assert float(loss(balanced, merged)[0]) > bal


def test_inter_cluster_terms() -> None:
    orthogonal = torch.eye(6)[:, :3].unsqueeze(0)
    same = torch.eye(6)[:, [0, 0, 0]].unsqueeze(0)
    torch.testing.assert_close(inter_cluster(orthogonal, "mean", 2.0), torch.tensor([-2.0]))
    torch.testing.assert_close(inter_cluster(same, "mean", 2.0), torch.tensor([0.0]))
    torch.testing.assert_close(inter_cluster(orthogonal, "margin", 2.0), torch.tensor([0.0]))
    torch.testing.assert_close(inter_cluster(same, "margin", 2.0), torch.tensor([2.0]))


def test_mutual_information_bounds() -> None:
    uniform = torch.full((1, 5, 4), 0.25)
    torch.testing.assert_close(mutual_information(uniform), torch.tensor([0.0]), atol=1e-6, rtol=0)
    onehot = F.one_hot(torch.arange(8) % 4, 4).float().unsqueeze(0)
    torch.testing.assert_close(mutual_information(onehot), torch.tensor([math.log(4)]), atol=1e-5, rtol=0)


def test_explain_is_consistent_with_distances(trained: DSC2I, toy: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    z = torch.from_numpy(toy[0])
    info = trained.explain(z)
    assert set(info) == {"distance", "runner_up", "runner_up_distance"}
    cluster = trained.predict(z).argmax(1)
    centres = trained.unit_centres()[int(trained.best_head)]  # [d, K]
    dist = torch.cdist(trained.encode(z).detach(), centres.T.detach())  # [N, K] Euclidean
    rows = torch.arange(z.shape[0])
    torch.testing.assert_close(info["distance"], dist[rows, cluster], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(info["runner_up_distance"], dist[rows, info["runner_up"]], atol=1e-4, rtol=1e-4)
    assert (info["runner_up"] != cluster).all()
    assert info["runner_up"].dtype == torch.long
    assert (info["runner_up_distance"] >= info["distance"]).all()
    second = dist.sort(dim=1).values[:, 1]
    torch.testing.assert_close(info["runner_up_distance"], second, atol=1e-4, rtol=1e-4)


def test_unknown_inter_is_rejected() -> None:
    with pytest.raises(ImgclusterError, match="inter must be one of 'margin', 'mean', got 'nope'") as err:
        create_objective("dsc2i", 8, 3, {"inter": "nope"})
    assert isinstance(err.value, ParameterError)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_gpu(toy: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, y, nn = toy
    result = train_objective(x, nn, toy_config(), torch.device("cuda"))
    z = torch.from_numpy(x).cuda()
    labels = result.objective.predict(z).argmax(1).cpu().numpy()
    assert result.empty_clusters <= 1
    assert hungarian_accuracy(y, labels) >= 0.9
    assert set(result.objective.explain(z)) == {"distance", "runner_up", "runner_up_distance"}
