"""The training sample of a feature store: seeded, uniform, independent of how the rows were written."""

from __future__ import annotations

import numpy as np

from imgcluster.scale.sample import sample_rows


def _batches(paths: list[str], features: np.ndarray, size: int) -> list[tuple[list[str], np.ndarray]]:
    return [(paths[i : i + size], features[i : i + size]) for i in range(0, len(paths), size)]


def _rows(n: int) -> tuple[list[str], np.ndarray]:
    paths = [f"class-{i % 7}/{i:06d}.png" for i in range(n)]
    return paths, np.arange(n, dtype=np.float32)[:, None].repeat(3, 1)  # exact integers (float16 stops at 2048)


def test_the_sample_does_not_depend_on_the_order_or_the_batching_of_the_rows() -> None:
    paths, features = _rows(5000)
    first = sample_rows(_batches(paths, features, 300), 700, seed=4)
    perm = np.random.default_rng(0).permutation(5000)
    second = sample_rows(_batches([paths[i] for i in perm], features[perm], 999), 700, seed=4)
    assert first[0] == second[0] and np.array_equal(first[1], second[1]) and first[2] == second[2] == 5000
    assert first[0] == sorted(first[0]) and len(set(first[0])) == 700
    assert [int(f[0]) for f in first[1]] == [int(p.split("/")[1][:6]) for p in first[0]]  # each row keeps its own feature
    other = sample_rows(_batches(paths, features, 300), 700, seed=5)
    assert len(set(other[0]) & set(first[0])) < 200  # another seed, another sample (98 expected in common)


def test_the_sample_is_uniform() -> None:
    paths, features = _rows(20_000)
    chosen, _, _ = sample_rows(_batches(paths, features, 4096), 4000, seed=0)
    index = np.array([int(p.split("/")[1][:6]) for p in chosen])
    counts = np.bincount(index // 2000, minlength=10)  # 400 expected in each tenth, sd about 18
    assert counts.min() > 320 and counts.max() < 480


def test_a_store_no_larger_than_the_sample_is_taken_whole_in_path_order() -> None:
    paths, features = _rows(50)
    chosen, x, seen = sample_rows(_batches(paths[::-1], features[::-1], 8), 50, seed=0)
    assert chosen == sorted(paths) and seen == 50 and x.dtype == np.float32
    assert np.array_equal(x[:, 0], np.array([float(p.split("/")[1][:6]) for p in chosen], np.float32))
