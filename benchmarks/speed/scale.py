"""Section (b): kNN, head training and assignment on N random unit features, each N in its own
process (``bench_speed.py --scale-worker N``) so that each stage's peak memory is its own."""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcluster.config import TrainConfig

ENTRY = Path(__file__).resolve().parents[1] / "bench_speed.py"  # the script a worker process runs
RESULT_PREFIX = "RESULT "  # lines a scale worker prints for the parent


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs), so each stage has its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_mb(field_name: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) from /proc, else getrusage's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(**values: Any) -> None:
    print(RESULT_PREFIX + json.dumps(values), flush=True)


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall_at_k(x: np.ndarray, idx: np.ndarray, queries: int = 200, seed: int = 1) -> float:
    """Share of the exact top-k found, on a sample of rows (brute force over all N for each)."""
    from imgcluster.neighbours import _exact_rows

    rows = np.random.default_rng(seed).choice(x.shape[0], size=min(queries, x.shape[0]), replace=False)
    exact, _ = _exact_rows(x, rows, idx.shape[1])
    return float(np.mean([len(set(a) & set(b)) / idx.shape[1] for a, b in zip(idx[rows], exact)]))


def scale_worker(n: int, dim: int, epochs: int, k: int, device_name: str) -> None:
    """Runs in its own process: neighbours, training, assignment on N random unit vectors."""
    from imgcluster.assign import predict
    from imgcluster.csvfile import write_assignments
    from imgcluster.neighbours import IVF_THRESHOLD, knn_search
    from imgcluster.train import train_objective

    device = torch.device(device_name)
    x = random_unit(n, dim)
    paths = [f"images/{i:07d}.jpg" for i in range(n)]
    emit(stage="data", mb=memory_mb("VmRSS"), features_mb=x.nbytes / 2**20)

    reset_peak()
    t = time.perf_counter()
    idx, _ = knn_search(x, k, use_gpu=device.type == "cuda")
    seconds = time.perf_counter() - t
    method = "IVF" if n > IVF_THRESHOLD else "exact"
    emit(stage="neighbours", seconds=seconds, peak_mb=memory_mb("VmHWM"), method=method)
    emit(stage="recall", value=recall_at_k(x, idx))  # after the peak was read: its buffer is not the search's

    reset_peak()
    t = time.perf_counter()
    trained = train_objective(x, idx, TrainConfig(epochs=epochs, min_steps=0, clusters=10, seed=0), device)
    emit(
        stage="training", seconds=time.perf_counter() - t, peak_mb=memory_mb("VmHWM"), steps=epochs * (n // trained.schedule["batch_size"])
    )

    reset_peak()
    t = time.perf_counter()
    assignment = predict(trained.objective, x, device)
    with tempfile.TemporaryDirectory() as tmp:
        write_assignments(str(Path(tmp) / "clusters.csv"), paths, assignment)
    emit(stage="assignment", seconds=time.perf_counter() - t, peak_mb=memory_mb("VmHWM"))


def run_scale(n: int, dim: int, epochs: int, k: int, timeout: float, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """One worker process per N; stages that finished before a timeout still count."""
    cmd = [
        sys.executable,
        str(ENTRY),
        "--scale-worker",
        str(n),
        "--dim",
        str(dim),
        "--epochs",
        str(epochs),
        "--k",
        str(k),
        "--device",
        device,
    ]
    results: dict[str, dict[str, Any]] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RESULT_PREFIX):
                value = json.loads(line[len(RESULT_PREFIX) :])
                results[value.pop("stage")] = value
                print(f"  N={n:,}: {line[len(RESULT_PREFIX) :].strip()}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode != 0:
        results["error"] = {"returncode": proc.returncode, "timed_out": proc.returncode == -9}
    return results


def exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def scale_benchmark(sizes: list[int], dim: int, epochs: int, k: int, timeout: float) -> list[str]:
    rows = {n: run_scale(n, dim, epochs, k, timeout) for n in sizes}
    lines = [
        f"### (b) Synthetic scale, CPU: random unit features, d={dim}, k={k}, default objective ({epochs} epochs, batch 512)",
        "",
        "Each N runs in a fresh process; peak RSS is reset before each stage (Linux `clear_refs`), so a "
        "stage's peak includes what earlier stages left alive (the features, the kNN table, ~0.7 GB of "
        "imported libraries). kNN recall: share of the exact neighbours found, on 200 random rows. "
        "Random unit vectors in 384 dimensions have no cluster structure: the worst case for IVF.",
        "",
        "| N | features MB | kNN s | kNN method | kNN recall | kNN peak MB | train s | train steps | train peak MB "
        "| assign s | assign peak MB | process peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict[str, Any], stage: str, key: str, fmt: str) -> str:
        return format(r[stage][key], fmt) if stage in r and key in r[stage] else "not run"

    for n, r in rows.items():
        lines.append(
            f"| {n:,} | {cell(r, 'data', 'features_mb', '.0f')} | {cell(r, 'neighbours', 'seconds', '.1f')} | "
            f"{cell(r, 'neighbours', 'method', 's')} | {cell(r, 'recall', 'value', '.3f')} | "
            f"{cell(r, 'neighbours', 'peak_mb', '.0f')} | "
            f"{cell(r, 'training', 'seconds', '.1f')} | {cell(r, 'training', 'steps', 'd')} | {cell(r, 'training', 'peak_mb', '.0f')} | "
            f"{cell(r, 'assignment', 'seconds', '.1f')} | {cell(r, 'assignment', 'peak_mb', '.0f')} | "
            f"{max([v['peak_mb'] for v in r.values() if 'peak_mb' in v] + [r.get('data', {}).get('mb', 0.0)]):.0f} |"
        )
    lines.append("")
    for stage in ("neighbours", "training", "assignment"):
        done = [(n, rows[n][stage]["seconds"]) for n in sizes if stage in rows[n]]
        if len(done) >= 2:
            pairs = ", ".join(f"{a:,}→{b:,}: {exponent([a, b], [ta, tb]):.2f}" for (a, ta), (b, tb) in itertools.pairwise(done))
            lines.append(f"- {stage}: time ∝ N^{exponent(*map(list, zip(*done))):.2f} over {len(done)} sizes (between sizes: {pairs})")
    for n, r in rows.items():
        if "error" in r:
            what = "stopped at the time limit" if r["error"]["timed_out"] else f"failed (exit {r['error']['returncode']})"
            lines.append(f"- N={n:,}: {what} ({timeout:.0f} s); stages marked `not run` did not finish.")
    return lines
