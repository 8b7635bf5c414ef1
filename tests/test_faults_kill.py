"""Kill the real CLI at random moments and prove nothing is lost or half-read.

``python -m imgcluster`` runs in a subprocess on a small folder (24 images and one broken file)
and is stopped with SIGKILL, SIGINT or SIGTERM after a seeded random delay, during ``embed``
(a chain of resumed runs on one cache), ``train`` (a trained head replacing an old one) and
``assign --head`` (a CSV replacing an old one). After every kill the files on disk are checked:
each visible cache shard is complete and its features equal the uninterrupted reference run's
bit for bit, the head is the old one, the new one or a pair that loading refuses, and the CSV is
byte for byte the old one or the new one. Then each phase is rerun to completion and must match
the reference exactly. Train and assign kills work on copies of the reference cache, so only the
embed kills pay for embedding.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import FAST, NO_TRAINING, cli_env, default_stops, record, start_cli
from imagefolders import CLASSES, copy_sample

from imgcluster.cache import read_shard
from imgcluster.checkpoint import load_checkpoint, save_checkpoint
from imgcluster.errors import ImgclusterError
from imgcluster.objectives import create_objective

SEED = 1234
EMBED_KILLS, TRAIN_KILLS, ASSIGN_KILLS = 10, 5, 5
BATCH = ["--embed-batch-size", "4"]
ENV = cli_env(IMGCLUSTER_FLUSH_EVERY="4")  # a shard every batch: many points to resume from
START_MARKER = re.compile(r"^\d+ images: \d+ cached, \d+ to embed")
EMBEDDED = re.compile(r"^embedded \d+, reused \d+")
KEPT = re.compile(r"(\d+) of (\d+) files are saved in the cache")
SIGNALS = {signal.SIGKILL: "SIGKILL", signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


# ---- running and stopping the CLI ---------------------------------------------------------------
@dataclass
class Run:
    """One CLI process: its stderr lines with the time each arrived, and how it ended."""

    args: list[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    returncode: int | None = None
    ended: float = 0.0  # seconds from start to exit
    signalled: bool = False  # a signal was sent while the process was still running
    last_line: str = ""  # the last thing it had said when the signal was sent

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def time_of(self, pattern: re.Pattern[str]) -> float:
        return next(t for t, line in self.lines if pattern.search(line))


def run_and_stop(args: list[str], sig: int | None, delay: float, after: Callable[[], bool] | None = None) -> Run:
    """Start the CLI; once it prints the start marker (or ``after()`` holds), wait ``delay`` s, send ``sig``."""
    run = Run(args)
    started = time.monotonic()
    proc = start_cli(*args, env=ENV)
    marker = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            run.lines.append((time.monotonic() - started, line.rstrip("\n")))
            if START_MARKER.search(line):
                marker.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if sig is not None:
            deadline = time.monotonic() + 240
            while not marker.is_set() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if after is not None:
                while not after() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
                run.signalled = True
                run.last_line = run.lines[-1][1] if run.lines else ""
        run.returncode = proc.wait(timeout=240)
        run.ended = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    if run.returncode == 0:
        run.signalled = False  # it finished before the signal could matter
    return run


class Window:
    """How long a phase runs after the start marker, which the kill delays are drawn within: the
    reference run's time, shrunk whenever a run ends before its signal. Otherwise a reference
    slowed by other work on the machine makes every later delay too long and no kill lands."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def update(self, run: Run, end: re.Pattern[str] | None = None, share: float = 1.0) -> None:
        """``run`` did ``share`` of the phase's work; ``end`` marks where the phase ended (default: exit)."""
        if run.signalled or run.returncode != 0:
            return
        try:
            took = (run.time_of(end) if end else run.ended) - run.time_of(START_MARKER)
        except StopIteration:
            return
        self.seconds = min(self.seconds, 0.8 * took / share)


def check_exit(run: Run, sig: int, done_marker: str) -> str:
    """The exit a stopped run must make; returns the interruption message (or '')."""
    rc, err = run.returncode, run.stderr
    assert "Traceback" not in err, err
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL, (rc, err)
        return ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if rc == 0 or not errors:  # the signal landed after the work was done, while the process shut down
        assert done_marker in err and rc in (0, -sig), (SIGNALS[sig], rc, err)
        return ""
    # It says what it kept, then ends by the same signal (the shell shows 130 or 143), so a calling
    # script's loop stops as well.
    assert rc == -sig, (SIGNALS[sig], rc, err)
    assert len(errors) == 1 and errors[0].startswith("error: interrupted"), err
    assert err.rstrip().endswith(errors[0]), err  # the last thing it says
    return errors[0]


# ---- what is on disk ------------------------------------------------------------------------------
def cache_dir_of(cache_root: Path) -> Path:
    dirs = list(cache_root.glob("folders/*/embeddings/efficientnet-lite0-*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def cached_features(cache_root: Path, folder: Path) -> dict[str, np.ndarray]:
    """Features per path in every visible shard, newest first; each shard must be complete and valid."""
    directory = cache_dir_of(cache_root)
    shard_dir = directory / "shards"
    found: dict[str, np.ndarray] = {}
    for path in sorted(shard_dir.iterdir(), reverse=True):
        if path.name.startswith("."):
            assert path.name.endswith(".tmp"), path  # a killed writer's leftover, never renamed into place
            continue
        assert path.suffix == ".safetensors", path
        features, rows = read_shard(path, cache=directory.name, dtype="float16", dim=1280)  # raises on any damage
        for (rel, size, mtime_ns), vector in zip(rows, features):
            st = (folder / rel).stat()
            assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns), rel
            found.setdefault(rel, vector)
    return found


def assert_features_match(found: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert set(found) <= set(reference), set(found) - set(reference)
    for rel, vector in found.items():
        assert np.array_equal(vector, reference[rel]), f"features of {rel} differ from the reference run"


def head_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The head's weights, or None when loading refuses the pair (torn by a kill)."""
    try:
        objective, _ = load_checkpoint(path)
    except ImgclusterError:
        return None
    return {k: v.clone() for k, v in objective.state_dict().items()}


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_no_visible_partials(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.name.endswith(".tmp"):
                assert path.name.startswith("."), f"temporary file visible as a result: {path}"


# ---- the reference run ---------------------------------------------------------------------------
@dataclass
class Reference:
    folder: Path
    cache: Path
    features: dict[str, np.ndarray]
    head: Path
    head_state: dict[str, torch.Tensor]
    csv: bytes
    windows: dict[str, float]  # seconds from the start marker to exit, per phase
    seconds: float


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    start = time.perf_counter()
    root = tmp_path_factory.mktemp("kill")
    folder = copy_sample(root / "photos", CLASSES[:3], per_class=8)
    good = sorted(folder.rglob("*.png"))[0].read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])  # skipped each run: shifts batches after a resume
    cache = root / "ref-cache"
    windows: dict[str, float] = {}
    embed = run_and_stop(["embed", str(folder), "--cache-dir", str(cache), *NO_TRAINING, *BATCH], None, 0)
    assert embed.returncode == 0, embed.stderr
    windows["embed"] = embed.time_of(EMBEDDED) - embed.time_of(START_MARKER)
    head = root / "ref" / "head.safetensors"
    train = run_and_stop(["train", str(folder), "--cache-dir", str(cache), "--out", str(head), *FAST, *BATCH], None, 0)
    assert train.returncode == 0, train.stderr
    windows["train"] = train.ended - train.time_of(START_MARKER)
    out = root / "ref" / "clusters.csv"
    assign_args = ["assign", str(folder), "--cache-dir", str(cache), "--head", str(head), "--out", str(out), *NO_TRAINING, *BATCH]
    assign = run_and_stop(assign_args, None, 0)
    assert assign.returncode == 0, assign.stderr
    windows["assign"] = assign.ended - assign.time_of(START_MARKER)
    features = cached_features(cache, folder)
    assert len(features) == 24
    state = head_state(head)
    assert state is not None
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert len(rows) == 25 and rows[0][:3] == ["path", "cluster", "confidence"]
    return Reference(folder, cache, features, head, state, out.read_bytes(), windows, time.perf_counter() - start)


def signal_plan(rng: random.Random, n: int) -> list[int]:
    """``n`` signals, each kind at least once (when n >= 3), in seeded random order."""
    plan = [signal.SIGKILL, signal.SIGINT, signal.SIGTERM] * (n // 3) + rng.sample(sorted(SIGNALS), n % 3)
    rng.shuffle(plan)
    return plan


def test_features_do_not_depend_on_batch_grouping(small_folder: Path) -> None:
    """A resumed run groups images differently; padding every forward pass to the batch size keeps
    each image's features bit-identical (a batch of 1 took another CPU kernel path)."""
    from imgcluster.backbones import create_backbone
    from imgcluster.embedding import embed_files
    from imgcluster.listing import list_images

    files = list_images(small_folder)[:9]
    backbone = create_backbone("efficientnet-lite0", None, torch.device("cpu"))
    together = {}
    for batch in embed_files(files, backbone, torch.device("cpu"), batch_size=4, workers=0):
        together.update({files[i].rel: batch.features[j] for j, i in enumerate(batch.indices)})
    regrouped = {}
    for batch in embed_files(files[1:], create_backbone("efficientnet-lite0", None, torch.device("cpu")), torch.device("cpu"), 4, 0):
        regrouped.update({files[1:][i].rel: batch.features[j] for j, i in enumerate(batch.indices)})
    assert len(regrouped) == 8  # the last batch holds a single image
    for rel, vector in regrouped.items():
        assert np.array_equal(vector, together[rel]), rel


# ---- the kill tests ------------------------------------------------------------------------------
def _embed_moment(after: int) -> str:
    if after == 24:
        return "all saved (last flush or compaction)"
    return "embedding, nothing saved yet" if after == 0 else "embedding, part saved"


def _train_moment(last_line: str) -> str:
    if last_line.startswith("epoch "):
        return "training"
    if last_line.startswith(("trained ", "head saved")):
        return "saving the head"
    return "loading features, mining neighbours"


@pytest.mark.slow
def test_kill_during_embed_then_resume(reference: Reference, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(SEED)
    cache = tmp_path / "cache"
    args = ["embed", str(reference.folder), "--cache-dir", str(cache), *NO_TRAINING, *BATCH]
    plan = signal_plan(rng, EMBED_KILLS)
    plan.remove(signal.SIGINT)
    plan.insert(0, signal.SIGINT)  # the first: Ctrl-C right after the first shard, so what was kept is known to be > 0
    landed: Counter[str] = Counter()
    moments: Counter[str] = Counter()
    kept_messages = 0
    completed_chains = 0
    attempts = 0
    window = Window(reference.windows["embed"])
    first_pending = True
    start = time.perf_counter()
    while sum(landed.values()) < EMBED_KILLS:
        attempts += 1
        assert attempts <= 3 * EMBED_KILLS, f"only {sum(landed.values())} kills landed in {attempts} attempts"
        sig = plan[sum(landed.values())]
        first = first_pending

        def first_shard(cache: Path = cache) -> bool:
            return any(cache.glob("folders/*/embeddings/*/shards/[0-9]*.safetensors"))

        done = len(cached_features(cache, reference.folder)) if any(cache.glob("folders/*/embeddings")) else 0
        delay = 0.0 if first else rng.uniform(0, window.seconds * (24 - done) / 24)  # within the work left
        run = run_and_stop(args, sig, delay, after=first_shard if first else None)
        window.update(run, EMBEDDED, (24 - done) / 24)
        if run.signalled:
            message = check_exit(run, sig, "embedded ")
            landed[SIGNALS[sig]] += 1
        else:
            assert run.returncode == 0, run.stderr
            message = ""
        found = cached_features(cache, reference.folder) if any(cache.glob("folders/*/embeddings")) else {}
        assert_features_match(found, reference.features)
        if run.signalled:
            moments[_embed_moment(len(found))] += 1
        if match := KEPT.search(message):
            kept_messages += 1
            assert int(match.group(1)) == len(found), (message, len(found))  # it says exactly what was kept
            assert int(match.group(2)) == 25
        if first and run.signalled:  # it may have finished first on a busy machine: then a fresh chain tries again
            assert match and int(match.group(1)) >= 4, message
            first_pending = False
        if run.returncode == 0 or len(found) == 24:  # finished: check, then start a fresh chain
            completed_chains += 1
            shutil.rmtree(cache)
    final = run_and_stop(args, None, 0)
    assert final.returncode == 0 and "skipped 1 unreadable file;" in final.stderr, final.stderr
    found = cached_features(cache, reference.folder)
    assert found.keys() == reference.features.keys()
    assert_features_match(found, reference.features)
    directory = cache_dir_of(cache)
    assert [p.name for p in (directory / "shards").iterdir()] == [p.name for p in (directory / "shards").glob("*.safetensors")]
    assert len(list((directory / "shards").iterdir())) == 1  # compacted, no leftovers
    assert kept_messages >= 1
    record(
        request.config,
        "kill_embed",
        {
            "kills_survived": sum(landed.values()),
            "by_signal": dict(landed),
            "attempts": attempts,
            "interrupt_messages_checked": kept_messages,
            "killed_while": dict(moments),
            "chains_completed_and_verified": completed_chains + 1,
            "failures": 0,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


@pytest.mark.slow
def test_kill_during_train_then_rerun(reference: Reference, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(SEED + 1)
    cache = tmp_path / "cache"
    shutil.copytree(reference.cache, cache)
    head = tmp_path / "heads" / "head.safetensors"
    old = create_objective("scan", 1280, 3)
    backbone = json.loads((cache_dir_of(cache) / "config.json").read_text())["backbone"]
    save_checkpoint(head, old, {"backbone": backbone})
    old_state = head_state(head)
    assert old_state is not None and not same_state(old_state, reference.head_state)
    old_files = {p: p.read_bytes() for p in (head, head.with_suffix(".json"))}
    moments: Counter[str] = Counter()
    args = ["train", str(reference.folder), "--cache-dir", str(cache), "--out", str(head), *FAST, *BATCH]
    landed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    attempts = 0
    start = time.perf_counter()
    plan = signal_plan(rng, TRAIN_KILLS)
    window = Window(reference.windows["train"])
    while sum(landed.values()) < TRAIN_KILLS:
        attempts += 1
        assert attempts <= 3 * TRAIN_KILLS
        sig = plan[sum(landed.values())]
        for path, data in old_files.items():  # every kill starts from the old head, so each can tear it
            path.write_bytes(data)
        run = run_and_stop(args, sig, rng.uniform(0, window.seconds))
        window.update(run)
        if run.signalled:
            message = check_exit(run, sig, "head saved to")
            landed[SIGNALS[sig]] += 1
            moments[_train_moment(run.last_line)] += 1
            if "while training" in message:
                assert "no head or CSV was written" in message
        else:
            assert run.returncode == 0, run.stderr
        assert_features_match(cached_features(cache, reference.folder), reference.features)
        state = head_state(head)
        if state is None:
            outcomes["torn pair refused"] += 1
        elif same_state(state, old_state):
            outcomes["old head intact"] += 1
        else:
            assert same_state(state, reference.head_state), "a head that is neither the old nor the reference one"
            outcomes["new head complete"] += 1
        assert_no_visible_partials(head.parent, cache)
    final = run_and_stop(args, None, 0)
    assert final.returncode == 0, final.stderr
    state = head_state(head)
    assert state is not None and same_state(state, reference.head_state)
    assert safetensors_metadata(head) == safetensors_metadata(reference.head)  # bytes differ: header key order is random
    record(
        request.config,
        "kill_train",
        {
            "kills_survived": sum(landed.values()),
            "by_signal": dict(landed),
            "attempts": attempts,
            "head_after_kill": dict(outcomes),
            "killed_while": dict(moments),
            "failures": 0,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


@pytest.mark.slow
def test_kill_during_assign_then_rerun(reference: Reference, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(SEED + 2)
    cache = tmp_path / "cache"
    shutil.copytree(reference.cache, cache)
    out = tmp_path / "out" / "clusters.csv"
    out.parent.mkdir()
    rows = [["path", "cluster", "confidence"]] + [[rel, 0, 1.0] for rel in sorted(reference.features)]
    with out.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n").writerows(rows)
    old_csv = out.read_bytes()
    assert old_csv != reference.csv
    moments: Counter[str] = Counter()
    args = ["assign", str(reference.folder), "--cache-dir", str(cache), "--head", str(reference.head), "--out", str(out)]
    args += [*NO_TRAINING, *BATCH]  # no training options: the head is trained
    landed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    attempts = 0
    start = time.perf_counter()
    plan = signal_plan(rng, ASSIGN_KILLS)
    window = Window(reference.windows["assign"])
    while sum(landed.values()) < ASSIGN_KILLS:
        attempts += 1
        assert attempts <= 3 * ASSIGN_KILLS
        sig = plan[sum(landed.values())]
        out.write_bytes(old_csv)  # every kill starts from the old CSV, so each can tear it
        run = run_and_stop(args, sig, rng.uniform(0, window.seconds))
        window.update(run)
        if run.signalled:
            check_exit(run, sig, "wrote 24 assignments")
            landed[SIGNALS[sig]] += 1
            moments["after the CSV was written" if "wrote" in run.last_line else "before or while writing the CSV"] += 1
        else:
            assert run.returncode == 0, run.stderr
        data = out.read_bytes()
        assert data in (old_csv, reference.csv), "the CSV is neither the old one nor the complete new one"
        outcomes["old CSV intact" if data == old_csv else "new CSV complete"] += 1
        skipped = out.parent / "clusters-skipped.csv"
        if skipped.exists():
            assert [r[0] for r in csv.reader(skipped.open(encoding="utf-8"))] == ["path", "broken.png"]
        sidecar = out.parent / "clusters.csv.json"
        if sidecar.exists():
            json.loads(sidecar.read_text())
        assert_no_visible_partials(out.parent, cache)
        assert_features_match(cached_features(cache, reference.folder), reference.features)
    final = run_and_stop(args, None, 0)
    assert final.returncode == 0, final.stderr
    assert out.read_bytes() == reference.csv
    record(
        request.config,
        "kill_assign",
        {
            "kills_survived": sum(landed.values()),
            "by_signal": dict(landed),
            "attempts": attempts,
            "csv_after_kill": dict(outcomes),
            "killed_while": dict(moments),
            "failures": 0,
            "seconds": round(time.perf_counter() - start, 1),
            "reference_runs_seconds": round(reference.seconds, 1),
        },
    )


def test_sigterm_mid_embed_reports_what_was_kept(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast and deterministic: SIGTERM arrives while the 10th image decodes; 2 blocks of 4 were saved."""
    import os

    from typer.testing import CliRunner

    import imgcluster.embedding
    from imgcluster.cli import app

    monkeypatch.setenv("IMGCLUSTER_FLUSH_EVERY", "4")
    real_load = imgcluster.embedding.load_image
    calls = 0

    def load(path: Path, draft_size: int | None = None, grey: bool = False):
        nonlocal calls
        calls += 1
        if calls == 10:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_load(path, draft_size, grey)

    monkeypatch.setattr(imgcluster.embedding, "load_image", load)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["embed", str(small_folder), "--cache-dir", str(cache), *NO_TRAINING, *BATCH])
    assert result.exit_code == 143, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted while embedding: 8 of 24 files are saved in the cache"), last
    assert len(cached_features(cache, small_folder)) == 8
    monkeypatch.undo()
    resumed = CliRunner().invoke(app, ["embed", str(small_folder), "--cache-dir", str(cache), *NO_TRAINING, *BATCH])
    assert resumed.exit_code == 0 and "embedded 16, reused 8" in resumed.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ctrl_c_stops_a_calling_scripts_loop(small_folder: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground process group: the script's bash and imgcluster. bash
    ends its loop only if its child died of SIGINT; a child that exits 130 looks like one that
    handled Ctrl-C itself, and the loop goes on to the next folder."""
    cache = tmp_path / "cache"
    command = f"{sys.executable} -m imgcluster embed {small_folder} --cache-dir {cache} {' '.join(NO_TRAINING + BATCH)}"
    script = f'for i in 1 2 3; do {command}; echo "after run $i" >&2; rm -rf {cache}; done'
    proc = subprocess.Popen(
        ["bash", "-c", script], stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path, start_new_session=True, preexec_fn=default_stops
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # wait until the first run is embedding
        lines.append(line)
        if START_MARKER.search(line):
            break
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    try:
        _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    err = "".join(lines) + rest
    assert "error: interrupted while embedding" in err, err
    assert "after run" not in err, err  # the loop stopped with the run
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
