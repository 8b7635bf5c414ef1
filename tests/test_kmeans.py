"""The one spherical k-means: seeding, Lloyd iterations, restarts, centring, determinism."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from objectives.toys import blobs

from imgcluster.kmeans import kmeans_plus_plus, lloyd, project, spherical_kmeans
from imgcluster.scoring import hungarian_accuracy


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_finds_separated_blobs_and_labels_by_the_nearest_centroid() -> None:
    x, y = blobs(k=5, n=40)
    fit = spherical_kmeans(torch.from_numpy(x), 5, generator(), restarts=3)
    best = fit.best
    assert len(fit.restarts) == 3 and best.score == max(r.score for r in fit.restarts)
    assert hungarian_accuracy(y, best.labels.numpy()) == 1.0
    assert torch.allclose(best.centroids.norm(dim=1), torch.ones(5), atol=1e-5)
    sims = fit.project(torch.from_numpy(x)) @ best.centroids.T
    assert torch.equal(best.labels, sims.argmax(1))
    assert best.score == pytest.approx(float(sims.max(1).values.mean()), abs=1e-6)


def test_same_generator_state_same_result_other_seed_other_draws() -> None:
    x, _ = blobs(k=5, noise=2.0)
    z = torch.from_numpy(x)
    a, b = spherical_kmeans(z, 5, generator(3), restarts=2), spherical_kmeans(z, 5, generator(3), restarts=2)
    assert all(torch.equal(r.centroids, s.centroids) and torch.equal(r.labels, s.labels) for r, s in zip(a.restarts, b.restarts))
    # Restarts draw different seeds from the one generator, and so does another seed.
    seeds = [kmeans_plus_plus(F.normalize(z, dim=1), 5, g) for g in (generator(1), generator(2))]
    assert not torch.equal(seeds[0], seeds[1])


def test_greedy_seeding_puts_one_seed_in_each_blob() -> None:
    x, y = blobs(k=8, n=30, noise=0.5)
    z = torch.from_numpy(x)
    for seed in range(5):
        picks = kmeans_plus_plus(z, 8, generator(seed))
        assert sorted(y[picks.numpy()].tolist()) == list(range(8)), seed
    # iters=0 returns those seeds: rows of the (normalised) input.
    fit = spherical_kmeans(z, 8, generator(0), iters=0, centre=False)
    assert torch.equal(fit.best.centroids, F.normalize(z, dim=1)[kmeans_plus_plus(z, 8, generator(0))])


def test_lloyd_moves_bad_centroids_and_refills_empty_clusters() -> None:
    x, y = blobs(k=3, n=30, noise=0.5)
    z = torch.from_numpy(x)
    # Two starting centroids in one blob and one pointing away from all data: a cluster starts empty.
    start = torch.stack([z[0], z[1], -F.normalize(z.mean(0), dim=0)])
    centroids = lloyd(z, start, iters=20)
    labels = (z @ centroids.T).argmax(1).numpy()
    assert np.unique(labels).size == 3
    assert hungarian_accuracy(y, labels) == 1.0


def test_centring_subtracts_the_mean_and_keeps_it_for_new_data() -> None:
    rng = np.random.default_rng(0)
    x, y = blobs(k=4, n=30, d=16)
    shifted = x + 3.0  # a large shared direction, like post-ReLU CNN features
    fit = spherical_kmeans(torch.from_numpy(shifted), 4, generator(), restarts=2)
    z = F.normalize(torch.from_numpy(shifted), dim=1)
    assert torch.allclose(fit.mean, z.mean(0), atol=1e-6)
    assert torch.allclose(fit.project(torch.from_numpy(shifted)), F.normalize(z - z.mean(0), dim=1), atol=1e-6)
    assert hungarian_accuracy(y, fit.best.labels.numpy()) == 1.0
    # New images are compared with the centroids after the same centring: a blob member's noisy copy
    # lands in its blob's cluster.
    copy = shifted[:1] + 0.01 * rng.normal(size=(1, 16)).astype(np.float32)
    assert int((fit.project(torch.from_numpy(copy)) @ fit.best.centroids.T).argmax()) == int(fit.best.labels[0])
    plain = spherical_kmeans(torch.from_numpy(shifted), 4, generator(), centre=False)
    assert torch.equal(plain.mean, torch.zeros(16)) and torch.equal(project(torch.from_numpy(shifted), None), z)


def test_a_sample_per_restart_still_labels_every_point() -> None:
    x, y = blobs(k=4, n=100)
    fit = spherical_kmeans(torch.from_numpy(x), 4, generator(), restarts=2, max_points=40)
    assert fit.best.labels.shape == (400,)
    assert hungarian_accuracy(y, fit.best.labels.numpy()) == 1.0


def test_more_clusters_than_points_is_refused() -> None:
    with pytest.raises(ValueError, match="k=5"):
        spherical_kmeans(torch.randn(3, 4), 5, generator())
