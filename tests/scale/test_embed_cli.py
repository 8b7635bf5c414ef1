"""``imgcluster embed --engine ray``: the options it takes and the one line it prints without Ray."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgcluster.cli import app

runner = CliRunner()


def test_without_the_extra_one_error_line_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    result = runner.invoke(app, ["embed", str(tmp_path), "--engine", "ray", "--features-out", str(tmp_path / "f")])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == ["error: the Ray engine needs the 'ray' extra: pip install 'imgcluster[ray]'"]
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--features-out", "x"], "error: --features-out is an option of --engine ray"),
        (["--ray-address", "auto"], "error: --ray-address is an option of --engine ray"),
        (["--engine", "ray"], "error: --engine ray needs --features-out, the location of the features"),
        (["--engine", "spark"], "error: --engine must be local or ray, not 'spark'"),
        (["--engine", "ray", "--features-out", "x", "--workers", "2"], "error: --workers is an option of --engine local"),
        (["--engine", "ray", "--features-out", "x", "--compile"], "error: --compile is an option of --engine local"),
        # ignored before: the Ray engine's actors run torch whatever was asked
        (["--engine", "ray", "--features-out", "x", "--runtime", "onnx-int8"], "error: --runtime is an option of --engine local"),
    ],
)
def test_ray_options_are_checked_in_one_line(tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --features-out lands here, should a check let it through
    result = runner.invoke(app, ["embed", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == message


def test_a_manifest_without_the_needed_columns_is_one_line_before_any_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow", reason="needs the 'ray' extra")
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    import pyarrow.parquet as pq

    import imgcluster.backbones

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built for a manifest that cannot be used")

    monkeypatch.setattr(imgcluster.backbones, "create_backbone", no_model)
    parts = tmp_path / "manifest"
    parts.mkdir()
    pq.write_table(pa.table({"path": ["a.png"], "bytes": [3]}), parts / "part-0.parquet")
    args = ["embed", str(tmp_path), "--engine", "ray", "--features-out", str(tmp_path / "f"), "--manifest", str(parts)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: the --manifest {parts} needs the columns path, size and mtime_ns or etag; it has bytes, path"
    ]


def test_an_empty_manifest_is_one_line_before_any_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It ran the whole job and reported "embedded 0" with exit 0, where a SOURCE holding no images is exit 2."""
    pa = pytest.importorskip("pyarrow", reason="needs the 'ray' extra")
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    import pyarrow.parquet as pq

    import imgcluster.backbones

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built for an empty manifest")

    monkeypatch.setattr(imgcluster.backbones, "create_backbone", no_model)
    manifest = tmp_path / "manifest.parquet"
    empty = {"path": pa.array([], pa.string()), "size": pa.array([], pa.int64()), "mtime_ns": pa.array([], pa.int64())}
    pq.write_table(pa.table(empty), manifest)
    args = ["embed", str(tmp_path), "--engine", "ray", "--features-out", str(tmp_path / "f"), "--manifest", str(manifest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"error: the --manifest {manifest} lists no files"]
    assert not (tmp_path / "f").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("signame", "stall"), [("SIGTERM", ""), ("SIGINT", "4:hang")])
def test_a_signal_mid_job_says_what_is_kept_and_ends_by_that_signal(tmp_path: Path, signame: str, stall: str) -> None:
    """Ray's core worker aborts on SIGTERM (signal 6) unless the session gives the handler back. Ctrl-C
    reaches the whole foreground process group (the driver and the Ray processes it started), as sent
    here, to a job stalled after its first write (the actor hangs at its 4th batch: 3 x 2 rows = one write)."""
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    import os
    import signal
    import subprocess
    import time

    from faults import default_stops
    from imagefolders import CLASSES, copy_sample

    from imgcluster.scale.embed_actor import CRASH_VARIABLE

    signum = getattr(signal, signame)
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=12)
    out = tmp_path / "features"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_memory_monitor_refresh_ms": "0", CRASH_VARIABLE: stall}
    args = ["embed", str(folder), "--engine", "ray", "--features-out", str(out), "--model", "efficientnet-lite0", "--embed-batch-size", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "imgcluster", *args], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_stops,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*/*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if stall:
        time.sleep(5)  # well into the stall: the hanging batch follows the written ones at once
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # Ctrl-C in a terminal: every process of the foreground group
    else:
        process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signum, stderr
    assert "error: interrupted; " in stderr and "are kept, and the next run embeds only what is missing" in stderr
    if stall:  # stopped while stalled, not after finishing
        import pyarrow.parquet as pq

        assert 0 < sum(pq.read_metadata(p).num_rows for p in out.glob("part-*/*.parquet")) < 24


@pytest.mark.slow
def test_a_job_prints_imgclusters_lines_and_none_of_rays_own(tmp_path: Path) -> None:
    """Ray Data's actor pool made the driver's core worker print `[date E pid tid] core_worker.cc:2465: Actor
    with class name: 'MapWorker(MapBatches(EmbedActor))' ... has constructor arguments in the object store and
    max_restarts > 0 ...` on the terminal of every job (ray-project/ray#57733); a file that fails is still said."""
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    import os
    import subprocess

    from imagefolders import CLASSES, copy_sample

    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=3)
    (folder / "broken.png").write_bytes(b"not a png")
    env = {k: v for k, v in os.environ.items() if k != "RAY_BACKEND_LOG_LEVEL"}
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_memory_monitor_refresh_ms": "0"})
    args = ["embed", str(folder), "--engine", "ray", "--features-out", str(tmp_path / "f"), "--model", "efficientnet-lite0"]
    done = subprocess.run([sys.executable, "-m", "imgcluster", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    said = (done.stdout + done.stderr).splitlines()
    assert not [line for line in said if "core_worker" in line or line.startswith("[")], said
    assert any(line.startswith("embedded 3, reused 0, skipped 1 in ") for line in said), said
    assert any(line.startswith("warning: skipped 1 unreadable file") for line in said), said


def test_a_folder_that_is_no_store_is_refused_before_any_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`embed photos --engine ray --features-out photos` (or a file) loaded the model, then refused the location."""
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    from imagefolders import CLASSES, copy_sample

    import imgcluster.backbones

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built for a location that is refused whatever the model")

    monkeypatch.setattr(imgcluster.backbones, "create_backbone", no_model)
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    (tmp_path / "notes.txt").write_text("x")
    for out, why in ((folder, f"{folder} is not empty and holds no imgcluster features (it has {CLASSES[0]!r})"),
                     (tmp_path / "notes.txt", f"{tmp_path / 'notes.txt'} is a file, not a folder for features")):  # fmt: skip
        result = runner.invoke(app, ["embed", str(folder), "--engine", "ray", "--features-out", str(out)])
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {why}"), result.stderr
        assert "loading the model" not in result.stderr
