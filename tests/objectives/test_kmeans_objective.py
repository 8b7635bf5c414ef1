"""Spherical k-means: exact recovery of blobs, determinism, calibrated confidences, checkpoints."""

import numpy as np
import pytest
import torch
from toys import blobs, toy_neighbours

from imgcluster.config import TrainConfig
from imgcluster.neighbours import l2_normalise
from imgcluster.objectives import create_objective
from imgcluster.objectives.kmeans import FALLBACK_TEMPERATURE, T_MIN, calibrate_temperature
from imgcluster.scoring import hungarian_accuracy
from imgcluster.train import train_objective


def fitted(x: np.ndarray, k: int, seed: int = 0, **options):
    objective = create_objective("kmeans", x.shape[1], k, options)
    objective.fit(x, seed)
    return objective.eval()


def test_finds_the_blobs_exactly_through_the_training_loop() -> None:
    x, y, neighbours = toy_neighbours(k=5)
    result = train_objective(x, neighbours, TrainConfig(objective="kmeans", clusters=5, seed=0), torch.device("cpu"))
    labels = result.objective.predict(torch.from_numpy(x)).argmax(1).numpy()
    assert hungarian_accuracy(y, labels) == 1.0
    assert result.empty_clusters == 0 and result.history == []
    centroids = result.objective.centroids
    assert torch.allclose(centroids.norm(dim=1), torch.ones(5), atol=1e-5)


def test_probabilities_are_a_softmax_over_cosine_similarity() -> None:
    x, _ = blobs(k=3, n=30)
    objective = fitted(x, 3, temperature=0.5)  # soft enough that every probability counts
    z = torch.from_numpy(x)
    probs = objective.head_probs(z)
    assert probs.shape == (1, 90, 3)
    centred = torch.nn.functional.normalize(z - objective.mean, dim=1)  # the features as the fit saw them
    expected = ((centred @ objective.centroids.T) / 0.5).softmax(-1)
    assert torch.allclose(probs[0], expected, atol=1e-6)
    assert not torch.allclose(probs[0], ((z @ objective.centroids.T) / 0.5).softmax(-1), atol=1e-2)
    assert torch.equal(objective.predict(z).argmax(1), (centred @ objective.centroids.T).argmax(1))
    explained = objective.explain(z)
    assert torch.all(explained["centroid_similarity"] >= explained["runner_up_similarity"])


def test_same_seed_same_centroids_other_seed_same_partition() -> None:
    x, _ = blobs(k=5, noise=2.0)
    a, b = fitted(x, 5, seed=3), fitted(x, 5, seed=3)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.temperature, b.temperature)
    z = torch.from_numpy(x)
    other = fitted(x, 5, seed=4).predict(z).argmax(1).numpy()
    assert hungarian_accuracy(a.predict(z).argmax(1).numpy(), other) > 0.95


def test_state_dict_and_safetensors_round_trip(tmp_path) -> None:
    from imgcluster.checkpoint import load_checkpoint, save_checkpoint

    x, _ = blobs(k=5, noise=2.0)
    objective = fitted(x, 5, seed=1)
    z = torch.from_numpy(x)
    fresh = create_objective("kmeans", 32, 5, {})
    fresh.load_state_dict(objective.state_dict(), strict=True)
    assert torch.equal(fresh.eval().predict(z), objective.predict(z))
    save_checkpoint(tmp_path / "km.safetensors", objective, {})
    loaded, meta = load_checkpoint(tmp_path / "km.safetensors")
    assert meta["objective"] == "kmeans"
    assert torch.equal(loaded.predict(z), objective.predict(z))
    # The features' mean is part of the head: new images are centred as the training ones were.
    assert float(objective.mean.norm()) > 0.1 and torch.equal(loaded.mean, objective.mean)


def test_centring_is_kept_for_prediction_and_can_be_switched_off() -> None:
    x, _ = blobs(k=5, noise=2.0)
    z = torch.from_numpy(x)
    centred, plain = fitted(x, 5), fitted(x, 5, centre=False)
    assert torch.allclose(centred.mean, torch.nn.functional.normalize(z, dim=1).mean(0), atol=1e-6)
    assert torch.equal(plain.mean, torch.zeros(32))
    centred_z = torch.nn.functional.normalize(z - centred.mean, dim=1)
    assert torch.equal(centred.predict(z).argmax(1), (centred_z @ centred.centroids.T).argmax(1))
    assert torch.equal(plain.predict(z).argmax(1), (z @ plain.centroids.T).argmax(1))


def test_a_head_saved_before_centring_predicts_as_it_did() -> None:
    """Heads written before the mean was stored have no ``mean``: they load with a zero mean, uncentred."""
    x, _ = blobs(k=5, noise=2.0)
    z = torch.from_numpy(x)
    old = fitted(x, 5, centre=False)
    state = {k: v for k, v in old.state_dict().items() if k != "mean"}
    fresh = create_objective("kmeans", 32, 5, {})
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.mean, torch.zeros(32))
    assert torch.equal(fresh.eval().predict(z), old.predict(z))


def test_confidence_reflects_how_clear_the_clusters_are() -> None:
    clear, _ = blobs(k=5, noise=1.0)
    vague = l2_normalise(np.random.default_rng(0).normal(size=(500, 32)))  # no cluster structure at all
    sharp, soft = fitted(clear, 5), fitted(vague, 5)
    assert float(sharp.temperature) == pytest.approx(T_MIN)  # equally good restarts agree everywhere
    assert float(soft.temperature) > 10 * T_MIN  # ... and disagree on structureless data
    assert float(sharp.predict(torch.from_numpy(clear)).max(1).values.mean()) > 0.99
    assert float(soft.predict(torch.from_numpy(vague)).max(1).values.mean()) < 0.7
    # On the boundary between two clusters the model is undecided: bisect the path between two images.
    z = torch.from_numpy(clear)
    labels = sharp.predict(z).argmax(1)
    a, b = z[labels == 0][0], z[labels == 1][0]
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        point = torch.nn.functional.normalize((1 - mid) * a + mid * b, dim=0)[None]
        low, high = (mid, high) if int(sharp.predict(point).argmax()) == 0 else (low, mid)
    assert float(sharp.predict(point).max()) < 0.6


def test_temperature_calibration() -> None:
    sims = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.45, 0.55]])
    # Targets that always agree with the argmax: the sharpest temperature on the grid.
    assert calibrate_temperature(sims, [sims.argmax(1)]) == pytest.approx(T_MIN)
    # Disagreement on the ambiguous rows: a softer, interior temperature.
    t = calibrate_temperature(sims, [sims.argmax(1), np.array([0, 1, 1, 0])])
    assert T_MIN < t < 1.0
    # Fixed or single-restart temperatures are used as given.
    x, _ = blobs(k=3, n=30)
    assert float(fitted(x, 3, temperature=0.2).temperature) == pytest.approx(0.2)
    assert float(fitted(x, 3, nredo=1).temperature) == pytest.approx(FALLBACK_TEMPERATURE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predicts_on_gpu() -> None:
    x, _ = blobs(k=5)
    objective = fitted(x, 5)
    z = torch.from_numpy(x)
    cpu = objective.predict(z)
    gpu = objective.to("cuda").predict(z.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)
