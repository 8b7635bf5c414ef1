"""The training sample of a feature store: seeded, uniform, independent of how the rows were written."""

from __future__ import annotations

import importlib.util
import posixpath
from pathlib import Path

import numpy as np
import pytest
from storefixtures import numbered_store

from imgcluster.featurestore import iter_batches, select_bucket_rows
from imgcluster.scale.sample import sample_rows, store_sample


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


# ---- the store's sample: only the rows below a cut-off are read, the same rows come out ---------
needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="the feature store needs pyarrow (the 'ray' extra)")


def _reference(uri: str, size: int, seed: int) -> tuple[list[str], np.ndarray, int]:
    return sample_rows(iter_batches(uri, batch_rows=500), size, seed)


@needs_pyarrow
def test_the_store_sample_is_the_bottom_k_sample_read_from_only_its_rows(tmp_path: Path) -> None:
    uri = numbered_store(str(tmp_path / "store"))
    events: list[str] = []
    paths, features, rows = store_sample(uri, 400, seed=3, progress=lambda e: events.append(str(e)))
    expected = _reference(uri, 400, 3)
    assert paths == expected[0] and np.array_equal(features, expected[1]) and rows == expected[2] == 3000
    assert features.dtype == np.float32 and len(paths) == 400
    assert not any("again" in e for e in events), events  # the margin was enough: one pass
    whole = store_sample(uri, 5000, seed=3)  # larger than the store: every row, as sample_rows gives it
    assert whole[0] == _reference(uri, 5000, 3)[0] == sorted(whole[0]) and whole[2] == 3000


@needs_pyarrow
def test_too_few_rows_below_the_cut_off_read_again_with_a_higher_one(tmp_path: Path) -> None:
    uri = numbered_store(str(tmp_path / "store"), n=1500, copies=3)  # footers: 4,500 rows for 1,500 paths, a cut-off 3x too low
    events: list[str] = []
    paths, features, rows = store_sample(uri, 300, seed=1, progress=lambda e: events.append(str(e)))
    expected = _reference(uri, 300, 1)
    assert paths == expected[0] and np.array_equal(features, expected[1]) and rows == 1500
    assert features.min() >= 2 * 2048  # the newest copy of each path
    assert sum("reading the paths again with a higher one" in e for e in events) == 1, events
    narrow = store_sample(uri, 300, seed=1, margin=-0.9)  # a margin that leaves far too few: passes until enough
    assert narrow[0] == expected[0] and np.array_equal(narrow[1], expected[1])


@needs_pyarrow
def test_a_bucket_reads_the_features_of_the_row_groups_holding_kept_rows_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgcluster.featurestore import row_schema

    uri = numbered_store(str(tmp_path / "store"), n=10)
    folder = posixpath.join(uri, "part-999")  # a bucket of one file with row groups of 4 rows (the store writes one per file)
    rows = [{"path": f"x/{i}.png", "size": 1, "mtime_ns": 0, "etag": None, "feature": [float(i)] * 8} for i in range(10)]
    Path(folder).mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=row_schema(8)), f"{folder}/a.parquet", row_group_size=4)
    assert pq.read_metadata(f"{folder}/a.parquet").num_row_groups == 3
    read: list[list[int]] = []
    original = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, **kw: read.append(groups) or original(self, groups, **kw))
    distinct, kept, features = select_bucket_rows(uri, folder, 8, lambda p: np.isin(p, ["x/1.png", "x/9.png", "x/2.png"]))
    assert distinct == 10 and kept == ["x/1.png", "x/2.png", "x/9.png"]
    assert features[:, 0].tolist() == [1.0, 2.0, 9.0] and features.dtype == np.float16
    assert read == [[0, 2]]  # rows 1 and 2 are in the first group of 4, row 9 in the third: the second is not read
