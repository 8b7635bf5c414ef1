"""The Ray engine's feature store: layout, resume rows, de-duplication, torn files, samples (no Ray needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the feature store needs pyarrow (the 'ray' extra)")

import pyarrow.parquet as pq

from imgcluster import featurestore as fst
from imgcluster.errors import ImgclusterError

DIM = 8


def meta(key: str = "k1", model: str = "efficientnet-lite0") -> fst.FeatureStoreMeta:
    return fst.FeatureStoreMeta(model=model, key=key, identity={"model": model}, dim=DIM, source="/photos", config={"batch_size": 4})


def rows(n: int, start: int = 0, seed: int = 0) -> tuple[list[str], list[int], list[int | None], list[str | None], np.ndarray]:
    rng = np.random.default_rng(seed)
    paths = [f"cls/{i:04d}.png" for i in range(start, start + n)]
    return paths, [100 + i for i in range(start, start + n)], [1000 + i for i in range(start, start + n)], [None] * n, rng.random((n, DIM))


def test_meta_round_trips_and_is_written_first(tmp_path: Path) -> None:
    store = fst.open_store(str(tmp_path / "feat"), meta())
    on_disk = json.loads((tmp_path / "feat" / fst.META_NAME).read_text())
    assert on_disk["format"] == "imgcluster-features/1" and on_disk["key"] == "k1" and on_disk["dtype"] == "float16"
    assert fst.read_meta(str(tmp_path / "feat")) == store.meta == meta()
    assert fst.FeatureStoreMeta.from_json(meta().to_json()) == meta()


def test_rows_are_bucketed_by_a_hash_of_the_path_with_the_documented_columns(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, etags, features = rows(40)
    written = store.write(paths, sizes, mtimes, etags, features)
    buckets = {fst.bucket_of(p) for p in paths}
    assert len(written) == len(buckets) > 1
    for name in written:
        table = pq.read_table(name)
        bucket = int(Path(name).parent.name.removeprefix("part-"))
        assert Path(name).parent.name == f"part-{bucket:03d}"
        assert {fst.bucket_of(p) for p in table.column("path").to_pylist()} == {bucket}
        assert table.schema.names == ["path", "size", "mtime_ns", "etag", "feature"]
        assert str(table.schema.field("feature").type) == f"fixed_size_list<element: halffloat>[{DIM}]"
        column = pq.ParquetFile(name).metadata.row_group(0).column(4)
        assert column.compression == "ZSTD" and "RLE_DICTIONARY" not in column.encodings
    assert fst.bucket_of("a.png") == fst.bucket_of("a.png")  # stable: sha1's first byte
    assert not list((tmp_path / "feat").rglob(".*.tmp"))


def test_reading_gives_every_row_once_as_written(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, etags, features = rows(30)
    store.write(paths[:20], sizes[:20], mtimes[:20], etags[:20], features[:20])
    store.write(paths[20:], sizes[20:], mtimes[20:], etags[20:], features[20:])
    got_paths, got = fst.read_features(uri)
    assert sorted(got_paths) == paths and got.dtype == np.float32
    order = [paths.index(p) for p in got_paths]
    np.testing.assert_array_equal(got, features[order].astype(np.float16).astype(np.float32))
    assert fst.count_rows(uri) == 30
    assert fst.done_rows(uri)["cls/0003.png"] == (103, 1003, None)
    batches = list(fst.iter_batches(uri, batch_rows=7))
    assert [len(p) for p, _ in batches] == [7, 7, 7, 7, 2]
    assert all(f.dtype == np.float16 and f.shape == (len(p), DIM) for p, f in batches)


def test_a_path_written_twice_is_read_once_and_the_newest_copy_wins(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, etags, features = rows(10)
    store.write(paths, sizes, mtimes, etags, features)  # a batch ...
    store.write(paths[:4], sizes[:4], mtimes[:4], etags[:4], features[:4])  # ... partly retried
    time.sleep(0.01)
    store.write(["cls/0000.png"], [999], [None], ["etag-new"], np.full((1, DIM), 0.5))  # changed since, embedded again
    assert fst.count_rows(uri) == 10
    got_paths, got = fst.read_features(uri)
    assert sorted(got_paths) == paths
    assert fst.done_rows(uri)["cls/0000.png"] == (999, None, "etag-new")
    np.testing.assert_array_equal(got[got_paths.index("cls/0000.png")], np.full(DIM, 0.5, np.float32))


def test_torn_and_temporary_files_are_reported_and_ignored(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, etags, features = rows(12)
    written = store.write(paths, sizes, mtimes, etags, features)
    torn = Path(written[0])
    lost = pq.read_table(torn).column("path").to_pylist()
    torn.write_bytes(torn.read_bytes()[:50])
    (torn.parent / ".leftover.parquet.tmp").write_bytes(b"half a file")
    problems: list[str] = []
    done = fst.done_rows(uri, on_problem=problems.append)
    assert sorted(done) == sorted(set(paths) - set(lost))
    assert len(problems) == 1 and torn.name in problems[0] and "unreadable" in problems[0]
    got_paths, _ = fst.read_features(uri, on_problem=problems.append)
    assert sorted(got_paths) == sorted(done)


def test_a_part_of_another_width_is_not_read_as_features(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    fst.open_store(uri, meta())
    other = fst.FeatureStore(uri, fst.FeatureStoreMeta(model="m", key="k1", identity={}, dim=4))
    other.write(["x.png"], [1], [1], [None], np.zeros((1, 4)))
    problems: list[str] = []
    assert fst.read_features(uri, on_problem=problems.append)[0] == []
    assert problems and "expected fixed_size_list" in problems[0]


def test_skipped_rows_keep_their_reason(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    store.write_skipped(["bad.png", "x/y.jpg"], [3, 4], [5, None], [None, "e1"], ["not an image", "cannot decode: truncated"])
    assert fst.skipped_rows(uri) == {"bad.png": (3, 5, None, "not an image"), "x/y.jpg": (4, None, "e1", "cannot decode: truncated")}
    assert fst.count_rows(uri) == 0 and fst.done_rows(uri) == {}
    assert store.write_skipped([], [], [], [], []) is None


def test_another_model_is_refused_never_mixed(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    fst.open_store(uri, meta("k1", "efficientnet-lite0"))
    with pytest.raises(ImgclusterError, match=r"holds features of efficientnet-lite0 \(key k1\), not of dinov2-small \(key k2\)"):
        fst.open_store(uri, meta("k2", "dinov2-small"))
    on_gpus = dataclasses.replace(meta("k3"), compute="bfloat16")
    with pytest.raises(ImgclusterError, match=r"\(computed in float32; this run computes in bfloat16\)"):
        fst.open_store(uri, on_gpus)
    again = fst.open_store(uri, meta("k1"), create=False)
    assert again.meta.key == "k1"


def test_missing_damaged_and_foreign_locations_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ImgclusterError, match="no imgcluster features at"):
        fst.read_meta(str(tmp_path / "nothing"))
    with pytest.raises(ImgclusterError, match="no imgcluster features"):
        fst.open_store(str(tmp_path / "nothing"), meta(), create=False)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / fst.META_NAME).write_text("{not json")
    with pytest.raises(ImgclusterError, match="damaged"):
        fst.read_meta(str(tmp_path / "bad"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ImgclusterError, match="not empty and holds no imgcluster features"):
        fst.open_store(str(tmp_path / "photos"), meta())
    assert sorted(os.listdir(tmp_path / "photos")) == ["holiday.jpg"]


def test_file_uris_name_the_same_store(tmp_path: Path) -> None:
    fst.open_store(str(tmp_path / "feat"), meta()).write(*rows(3))
    assert fst.count_rows(f"file://{tmp_path / 'feat'}") == 3


def test_a_sample_is_seeded_uniform_and_without_repeats(tmp_path: Path) -> None:
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, etags, features = rows(200)
    store.write(paths, sizes, mtimes, etags, features)
    a, fa = fst.read_features(uri, sample=50, seed=1)
    b, _ = fst.read_features(uri, sample=50, seed=1)
    c, _ = fst.read_features(uri, sample=50, seed=2)
    assert a == b and a != c and len(set(a)) == 50 and fa.shape == (50, DIM)
    np.testing.assert_array_equal(fa[0], features[paths.index(a[0])].astype(np.float16).astype(np.float32))
    assert len(fst.read_features(uri, sample=500)[0]) == 200


def test_importing_the_module_does_not_import_pyarrow() -> None:
    import subprocess
    import sys

    code = "import sys, imgcluster.featurestore; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "False"


def test_features_float16_cannot_hold_are_refused_naming_the_file(tmp_path: Path) -> None:
    """A feature above 65504 was stored as infinity without a word, and every later read took it for a feature."""
    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, etags, features = rows(4)
    features[2, 5] = 7e4
    with pytest.raises(ImgclusterError) as info:
        store.write(paths, sizes, mtimes, etags, features)
    assert str(info.value) == (
        f"cannot store the features of cls/0002.png in {uri}: its features reach 70000, beyond float16's largest value 65504, "
        "which the store would hold as infinity"
    )
    features[1, 0] = np.nan
    first = r"^cannot store the features of cls/0001\.png \(and 1 other rows\) in .+: its features are not finite"
    with pytest.raises(ImgclusterError, match=first):
        store.write(paths, sizes, mtimes, etags, features)
    assert fst.count_rows(uri) == 0  # nothing written
    features[1, 0], features[2, 5] = -65504.0, 65519.0  # float16's largest, and a value that rounds to it
    store.write(paths, sizes, mtimes, etags, features)
    assert np.isfinite(fst.read_features(uri)[1]).all()


def test_the_embed_job_records_features_float16_cannot_hold_as_skipped(tmp_path: Path) -> None:
    """One image whose features overflow float16 is recorded with the reason, as an unreadable one is; the rest are stored."""
    from imgcluster.scale.embed_job import write_batch

    uri = str(tmp_path / "feat")
    store = fst.open_store(uri, meta())
    paths, sizes, mtimes, _, features = rows(3)
    features[1, 3] = -1e5
    batch = {
        "path": np.array(paths, dtype=object), "size": np.array(sizes), "mtime_ns": np.array(mtimes), "etag": np.array(["", "", ""]),
        "reason": np.array(["", "", ""], dtype=object), "feature": features.astype(np.float32),
    }  # fmt: skip
    out = write_batch(batch, store)
    why = "not stored: its features reach 100000, beyond float16's largest value 65504, which the store would hold as infinity"
    assert list(out["reason"]) == ["", why, ""]
    assert sorted(fst.done_rows(uri)) == [paths[0], paths[2]]
    assert fst.skipped_rows(uri)[paths[1]] == (sizes[1], mtimes[1], None, why)
