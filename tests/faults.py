"""Shared helpers for the fault-injection tests: recording what they tried, running the CLI.

Counts go to pytest's cache (``.pytest_cache/v/imgcluster/faults/<name>``) and to stdout, so
the numbers in ``docs/reliability.md`` are the ones a run actually saw
(``pytest -s -k faults`` prints them; ``python tests/faults.py`` lists the last recorded ones).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import imgcluster.atomic

ROOT = Path(__file__).resolve().parents[1]
CACHE_KEY = "imgcluster/faults/"
# No --epochs: the default schedule trains a small folder for 300 steps, long enough to be killed in.
FAST = ["--model", "efficientnet-lite0", "--clusters", "3", "--workers", "0", "--seed", "0"]
NO_TRAINING = ["--model", "efficientnet-lite0", "--workers", "0"]  # embed, and assign with --head


def record(config: pytest.Config, name: str, counts: dict[str, object]) -> None:
    """Keep one test's counts where the reliability doc's numbers come from."""
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        cache.set(CACHE_KEY + name, counts)
    print(f"[faults] {name}: {json.dumps(counts, sort_keys=True)}")


# Set by conftest.py for the whole session: the runtime the tests embed in (torch) and the model cache (never ~/.cache).
SESSION_VARIABLES = ("IMGCLUSTER_RUNTIME", "IMGCLUSTER_MODEL_CACHE")


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: offline, no debugger tracebacks, one thread pool; none of the
    caller's ``IMGCLUSTER_*`` variables but the session's own (without them, auto ran int8 in such a
    subprocess, against features the test made in torch, and built it in the user's ~/.cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLUSTER_") or k in SESSION_VARIABLES}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m imgcluster ARGS`` to completion, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "imgcluster", *map(str, args)],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def default_stops() -> None:
    """Before a child that a test stops by a signal starts: the stops at their defaults. A test run
    started in the background (``make test &``: SIGINT ignored) or under nohup (SIGHUP ignored)
    passes the ignoring on to every child, and imgcluster rightly keeps a stop ignored at its start,
    so the kill tests' signals never landed."""
    for signum in STOPS:
        signal.signal(signum, signal.SIG_DFL)


def start_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m imgcluster ARGS`` in the background, stderr piped line by line, stops at their defaults."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgcluster", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=ROOT,
        preexec_fn=default_stops,
    )


def cache_directory(cache_root: Path) -> Path:
    """The one ``embeddings/efficientnet-lite0-<key>`` folder under a cache root used by one folder."""
    (directory,) = Path(cache_root).glob("folders/*/embeddings/efficientnet-lite0-*")
    return directory


def backbone_identity(cache_root: Path) -> dict[str, object]:
    """The backbone identity a run recorded in a cache's ``config.json`` (any folder's: all agree)."""
    directory = sorted(Path(cache_root).glob("folders/*/embeddings/efficientnet-lite0-*"))[0]
    return json.loads((directory / "config.json").read_text())["backbone"]


def untrained_head(path: Path, cache_root: Path, seed: int = 0) -> Path:
    """A valid (random) SCAN head for efficientnet-lite0 features: quick, no training needed."""
    import torch

    from imgcluster.checkpoint import save_checkpoint
    from imgcluster.objectives import create_objective

    torch.manual_seed(seed)
    save_checkpoint(path, create_objective("scan", 1280, 3), {"backbone": backbone_identity(cache_root)})
    return path


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` really read-only: chmod for a user, a read-only bind mount for root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("running as root and bind mounts are not allowed here: cannot make a folder read-only")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True, check=False)
        if remount.returncode != 0:
            pytest.skip("cannot remount read-only here")
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, check=False)


class FullDisk:
    """A file handle whose writes fail with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, handle: Any, budget: int) -> None:
        self._handle = handle
        self._left = budget

    def write(self, data: Any) -> int:
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def fill_disk_for(monkeypatch: pytest.MonkeyPatch, name_part: str, budget: int = 100) -> None:
    """Writes through the atomic writer to files whose name contains ``name_part`` hit a full disk."""
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(fd, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        return FullDisk(handle, budget) if name_part in Path(target).name else handle

    monkeypatch.setattr(imgcluster.atomic.os, "fdopen", fdopen)


@contextlib.contextmanager
def tiny_tmpfs(mountpoint: Path, size: str = "256k") -> Iterator[Path]:
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)


if __name__ == "__main__":
    cache_dir = ROOT / ".pytest_cache" / "v" / "imgcluster" / "faults"
    for path in sorted(cache_dir.glob("*")):
        print(f"{path.name}: {path.read_text().strip()}")


def fail_embedding_after_one_batch(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """Make the pipeline's embedding raise ``error`` after its first batch, with a shard flushed
    every 4 images: what a failure in the middle of a run (a dead worker, a full GPU) leaves."""
    import imgcluster.pipeline as pipeline

    real = pipeline.embed_files

    def after_one_batch(*args, **kwargs):  # type: ignore[no-untyped-def]
        yield next(iter(real(*args, **kwargs)))
        raise error

    monkeypatch.setattr(pipeline, "embed_files", after_one_batch)
    monkeypatch.setenv("IMGCLUSTER_FLUSH_EVERY", "4")
