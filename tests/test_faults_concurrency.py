"""Two runs on one cache: the second fails in one line or waits (--lock-timeout); neither corrupts
the cache; a lock whose holder was SIGKILLed is taken over at once (flock dies with its process).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faults import cli_env, record, start_cli
from typer.testing import CliRunner

from imgcluster.cache import read_shard
from imgcluster.cli import app

EMBED = ["--model", "efficientnet-lite0", "--workers", "0", "--embed-batch-size", "4"]
HOLDER = """
import sys, time
from pathlib import Path
from imgcluster.lock import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def cache_directory(cache_root: Path) -> Path:
    (directory,) = cache_root.glob("folders/*/embeddings/efficientnet-lite0-*")
    return directory


@pytest.fixture
def embedded(small_folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A folder whose cache is complete: (folder, cache root)."""
    cache = tmp_path / "cache"
    result = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    return small_folder, cache


def hold_lock(directory: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the cache lock, as a running imgcluster would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_fails_at_once_in_one_line(embedded: tuple[Path, Path]) -> None:
    folder, cache = embedded
    holder = hold_lock(cache_directory(cache), 120)
    try:
        started = time.monotonic()
        result = invoke("embed", folder, "--cache-dir", cache, *EMBED)
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr
        assert f"another imgcluster run (pid {holder.pid}) is using {cache_directory(cache)}" in errors[0]
        assert "--lock-timeout SECONDS" in errors[0]
        waited = invoke("embed", folder, "--cache-dir", cache, *EMBED, "--lock-timeout", "1")
        assert waited.exit_code == 1 and "is still using" in waited.stderr and "after 1s" in waited.stderr
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()


def test_second_run_waits_with_lock_timeout(embedded: tuple[Path, Path]) -> None:
    folder, cache = embedded
    holder = hold_lock(cache_directory(cache), 3)
    try:
        result = invoke("embed", folder, "--cache-dir", cache, *EMBED, "--lock-timeout", "120")
        assert result.exit_code == 0, result.stderr
        assert f"another imgcluster run (pid {holder.pid}) is using" in result.stderr and "waiting up to 120s" in result.stderr
        assert "embedded 0, reused 24" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_holder_is_taken_over(embedded: tuple[Path, Path]) -> None:
    folder, cache = embedded
    directory = cache_directory(cache)
    holder = hold_lock(directory, 600)
    assert invoke("embed", folder, "--cache-dir", cache, *EMBED).exit_code == 1  # really held
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (directory / "lock").read_text().strip() == str(holder.pid)  # the file stays; only the flock went
    started = time.monotonic()
    result = invoke("embed", folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    assert "waiting" not in result.stderr and time.monotonic() - started < 60


@pytest.mark.slow
def test_two_cli_runs_at_once_share_the_work(small_folder: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Two real processes start together on an empty cache: one embeds, the other waits and reuses."""
    reference_cache = tmp_path / "reference"
    assert invoke("embed", small_folder, "--cache-dir", reference_cache, *EMBED).exit_code == 0
    cache = tmp_path / "shared"
    env = cli_env(IMGCLUSTER_FLUSH_EVERY="4")
    args = ["embed", small_folder, "--cache-dir", cache, *EMBED, "--lock-timeout", "300"]
    started = time.monotonic()
    procs = [start_cli(*args, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    seconds = time.monotonic() - started
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    embedded = sorted(int(re.search(r"embedded (\d+), reused (\d+)", err).group(1)) for _, err in outputs)  # type: ignore[union-attr]
    assert embedded == [0, 24]  # each image embedded once, by one of them
    waited = sum("waiting up to" in err for _, err in outputs)
    directory = cache_directory(cache)
    shards = sorted((directory / "shards").iterdir())
    assert len(shards) == 1 and not shards[0].name.startswith(".")
    features, rows = read_shard(shards[0], cache=directory.name, dtype="float16", dim=1280)
    ref_features, ref_rows = read_shard(next((cache_directory(reference_cache) / "shards").glob("*.safetensors")))
    assert rows == ref_rows and np.array_equal(features, ref_features)
    record(request.config, "concurrency_two_runs", {"runs": 2, "waited": waited, "embedded": embedded, "seconds": round(seconds, 1)})


def test_the_lock_is_held_once_per_process_and_names_its_parameter(embedded: tuple[Path, Path]) -> None:
    """A record lock belongs to the process, and closing any descriptor of its file drops it: a
    second attempt in the same process must be refused without opening (and closing) the file."""
    from imgcluster.lock import LockBusy, folder_lock

    directory = cache_directory(embedded[1])
    with folder_lock(directory):
        with pytest.raises(LockBusy, match="this process is already using"), folder_lock(directory):
            pass
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(directory), "0"], capture_output=True, text=True, check=False)
        assert probe.returncode != 0 and "LockBusy" in probe.stderr  # still held after the refused attempt
        message = probe.stderr.splitlines()[-1]
        assert f"(pid {os.getpid()})" in message and "pass lock_timeout SECONDS" in message and "--" not in message
    with folder_lock(directory):  # released on leaving
        pass
