"""Shared helpers for the fault-injection tests: recording what they tried, running the CLI.

Counts go to pytest's cache (``.pytest_cache/v/imgcluster/faults/<name>``) and to stdout, so
the numbers in ``docs/reliability.md`` are the ones a run actually saw
(``pytest -s -k faults`` prints them; ``python tests/faults.py`` lists the last recorded ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: offline, no debugger tracebacks, one thread pool."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCLUSTER_")}
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


def start_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m imgcluster ARGS`` in the background, stderr piped line by line."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgcluster", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=ROOT,
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
