"""Head checkpoints: concurrent saves leave one complete pair; crafted heads are refused before they
cost memory; non-finite weights and confidences are refused instead of labelling every image 0."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from faults import record, untrained_head
from typer.testing import CliRunner

from imgcluster.assign import predict
from imgcluster.checkpoint import load_checkpoint, save_checkpoint
from imgcluster.cli import app
from imgcluster.errors import ImgclusterError
from imgcluster.objectives import create_objective

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 40


def _saver(path: str, writer: int, barrier: Any) -> None:
    """One of two processes saving a different head to one path at the same moment, ROUNDS times."""
    for r in range(ROUNDS):
        torch.manual_seed(1000 * writer + r)
        objective = create_objective("scan", 16, 3)
        barrier.wait()
        save_checkpoint(Path(path), objective, {"writer": writer, "round": r})
        barrier.wait()
        barrier.wait()  # the parent loads the pair meanwhile


def _reader(path: str, stop: Any, refused: Any, loaded: Any) -> None:
    """Loads the pair again and again while the two savers run."""
    while not stop.is_set():
        if not Path(path).exists():
            continue
        try:
            load_checkpoint(Path(path))
            loaded.value += 1
        except ImgclusterError as exc:
            refused.value += 1
            print(f"reader refused: {exc}", file=sys.stderr)


@pytest.mark.timeout(300)
def test_concurrent_saves_leave_one_complete_head(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "heads" / "head.safetensors"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    stop = context.Event()
    refused, loaded = context.Value("i", 0), context.Value("i", 0)
    savers = [context.Process(target=_saver, args=(str(path), w, barrier)) for w in (1, 2)]
    reader = context.Process(target=_reader, args=(str(path), stop, refused, loaded))
    for proc in (*savers, reader):
        proc.start()
    torn, writers = 0, set()
    try:
        for _ in range(ROUNDS):
            barrier.wait()
            barrier.wait()
            try:
                writers.add(load_checkpoint(path)[1]["writer"])
            except ImgclusterError:
                torn += 1
            barrier.wait()
    finally:
        stop.set()
        for proc in (*savers, reader):
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in savers)
    assert torn == 0, f"{torn} of {ROUNDS} pairs refused after both saves ended"
    assert refused.value == 0, f"a reader saw {refused.value} torn pairs while saves ran ({loaded.value} loaded)"
    assert loaded.value > 0 and writers == {1, 2}  # both won some rounds: the saves really raced
    record(request.config, "concurrent_head_saves", {"rounds": ROUNDS, "torn_after": torn, "reads_during": loaded.value, "torn_during": 0})


CRAFTED_LOAD = """
import json, resource, sys
from pathlib import Path
from imgcluster.checkpoint import load_checkpoint
from imgcluster.errors import ImgclusterError
import imgcluster.objectives, torch  # loaded before measuring
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 2**30, resource.RLIM_INFINITY))  # a failing fix fails, not the machine
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_checkpoint(Path(sys.argv[1]))
    message = "loaded"
except ImgclusterError as exc:
    message = str(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"message": message, "grown_mb": grown / 1024}))
"""


def test_a_head_declaring_huge_sizes_is_refused_before_allocating(tmp_path: Path) -> None:
    """3 MB of weights for 3 clusters, a description (and header) saying 3,000,000: it grew to
    7.9 GB before the shapes were compared. Memory is measured, not timed."""
    objective = create_objective("scan", 1280, 3)
    objective.n_clusters = 3_000_000
    head = tmp_path / "crafted.safetensors"
    save_checkpoint(head, objective, {})
    assert head.stat().st_size < 4 * 2**20  # a few MB on disk
    done = subprocess.run([sys.executable, "-c", CRAFTED_LOAD, str(head)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "declares a scan head of 3000000 clusters on 1280-d features, but the weights" in result["message"]
    assert result["grown_mb"] < 200


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, value: float) -> None:
    objective = create_objective("scan", 16, 3)
    with torch.no_grad():
        next(iter(objective.parameters())).view(-1)[0] = value
    head = tmp_path / "head.safetensors"
    save_checkpoint(head, objective, {})
    with pytest.raises(ImgclusterError, match="not finite numbers"):
        load_checkpoint(head)


def test_non_finite_confidences_are_refused() -> None:
    """Finite weights that overflow: every logit infinite, every confidence NaN."""
    objective = create_objective("scan", 16, 3)
    with torch.no_grad():
        for p in objective.parameters():
            p.fill_(1e30)
    features = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    with pytest.raises(ImgclusterError, match="confidences that are not finite"):
        predict(objective, features, torch.device("cpu"))


def test_a_nan_head_through_the_cli_is_one_line_and_no_csv(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    embed = ["--model", "efficientnet-lite0", "--workers", "0", "--embed-batch-size", "8"]
    assert CliRunner().invoke(app, ["embed", str(small_folder), "--cache-dir", str(shared_cache), *embed]).exit_code == 0
    head = untrained_head(tmp_path / "head.safetensors", shared_cache)
    objective, meta = load_checkpoint(head)
    with torch.no_grad():
        next(iter(objective.parameters())).fill_(float("nan"))
    save_checkpoint(head, objective, {"backbone": meta["backbone"]})
    out = tmp_path / "clusters.csv"
    result = CliRunner().invoke(
        app, ["assign", str(small_folder), "--cache-dir", str(shared_cache), *embed, "--head", str(head), "--out", str(out)]
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not finite numbers" in errors[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_head_is_saved_only_under_the_name_it_is_read_back_from(tmp_path: Path) -> None:
    """ClusterHead.save("head") wrote head and head.json, which ClusterHead.load and assign --head then refused."""
    from imgcluster import ClusterHead
    from imgcluster.errors import ParameterError

    x = np.random.default_rng(0).normal(size=(40, 8)).astype("float32")
    head = ClusterHead(n_clusters=2, epochs=1, device="cpu").fit(x)
    with pytest.raises(ParameterError, match=r"head does not end in \.safetensors, the only name a head is read back from$"):
        head.save(tmp_path / "head")
    assert list(tmp_path.iterdir()) == []
    head.save(tmp_path / "head.safetensors")
    assert (ClusterHead.load(tmp_path / "head.safetensors").predict(x) == head.predict(x)).all()
