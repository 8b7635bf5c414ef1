"""Sources of a Ray job: a folder, an s3:// prefix (a moto server on 127.0.0.1), a manifest."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, copy_sample

from imgcluster import featurestore as fst
from imgcluster.errors import ParameterError
from imgcluster.scale import sources

pa = pytest.importorskip("pyarrow", reason="the Ray engine's sources need pyarrow (the 'ray' extra)")
pq = pytest.importorskip("pyarrow.parquet")


def test_a_folder_is_listed_as_the_single_machine_listing_finds_it(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("not an image")
    source = sources.open_source(str(folder))
    table = sources.list_source(source)
    assert source.relative and table.schema == sources.manifest_schema()
    assert table.column("path").to_pylist() == sorted(f"{c}/{p.name}" for c in CLASSES[:2] for p in (folder / c).iterdir())
    first = folder / table.column("path")[0].as_py()
    assert table.column("size")[0].as_py() == first.stat().st_size and table.column("mtime_ns")[0].as_py() == first.stat().st_mtime_ns


def test_a_missing_source_or_bad_manifest_is_a_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="does not exist"):
        sources.open_source(str(tmp_path / "nowhere"))
    pq.write_table(pa.table({"path": ["a.png"], "bytes": [3]}), tmp_path / "m.parquet")
    with pytest.raises(ParameterError, match="needs the columns path, size and mtime_ns or etag"):
        sources.read_manifest(str(tmp_path / "m.parquet"))
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "size": [3, 4], "etag": ["e1", None]}), tmp_path / "ok.parquet")
    manifest = sources.read_manifest(str(tmp_path / "ok.parquet"))
    assert manifest.schema == sources.manifest_schema() and manifest.column("mtime_ns").null_count == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, reached through the environment as a real bucket would be."""
    server_mod = pytest.importorskip("moto.server", reason="the s3:// tests need moto: pip install 'moto[server]'")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def ray_env(s3_server: str, ray_env: None) -> None:
    """The S3 settings are in the environment before Ray starts, so its workers have them too."""


@pytest.fixture(scope="module")
def bucket(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    import pyarrow.fs as pafs

    host = s3_server.removeprefix("http://")
    pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True).create_dir("photos")
    fs, _ = fst.resolve("s3://photos")  # what imgcluster uses: endpoint and keys from the environment
    folder = copy_sample(tmp_path_factory.mktemp("s3") / "photos", CLASSES[:2], per_class=2)
    for path in sorted(folder.rglob("*.png")):
        pafs.copy_files(str(path), f"photos/in/{path.relative_to(folder).as_posix()}", destination_filesystem=fs)
    with fs.open_output_stream("photos/in/broken.jpg") as out:
        out.write(b"not a jpeg")
    with fs.open_output_stream("photos/in/.cache/x.png") as out:
        out.write(b"hidden")
    return "s3://photos/in"


def test_a_prefix_is_listed_with_full_uris(bucket: str) -> None:
    table = sources.list_source(sources.open_source(bucket))
    paths = table.column("path").to_pylist()
    assert len(paths) == 5 and all(p.startswith("s3://photos/in/") for p in paths) and "s3://photos/in/broken.jpg" in paths
    assert table.column("mtime_ns").null_count == 0


@pytest.mark.slow
def test_embed_from_and_into_s3_then_resume_from_the_kept_manifest(local_ray: object, bucket: str) -> None:
    from imgcluster.scale import embed_job

    out = "s3://photos/features"
    summary = embed_job.embed_to_store(bucket, out, model="efficientnet-lite0")
    assert summary.embedded == 4 and [p for p, _ in summary.skipped] == ["s3://photos/in/broken.jpg"]
    assert summary.manifest == "s3://photos/features/_manifest.parquet"
    paths, features = fst.read_features(out)
    assert len(paths) == 4 and np.isfinite(features).all() and features.shape[1] == fst.read_meta(out).dim
    again = embed_job.embed_to_store(bucket, out, model="efficientnet-lite0", manifest=summary.manifest)
    assert (again.embedded, again.reused, len(again.skipped)) == (0, 4, 1)
