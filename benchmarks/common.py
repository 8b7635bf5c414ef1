"""Shared benchmark plumbing: labelled folders -> cached features -> scores, and RESULTS.md sections."""

from __future__ import annotations

# isort: off
import imgcluster  # noqa: F401 - before torch: OpenMP threads wait passively (spinning ones cost 30x on shared cores)

# isort: on
import argparse
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from datasets import digits_folder, fashion_mnist_folder  # noqa: E402

from imgcluster.config import EmbedConfig, TrainConfig  # noqa: E402
from imgcluster.matching import best_matching  # noqa: E402
from imgcluster.neighbours import knn_search  # noqa: E402
from imgcluster.pipeline import embed_folder  # noqa: E402
from imgcluster.scoring import score  # noqa: E402
from imgcluster.train import train_objective  # noqa: E402

DATA = HERE / "data"
RESULTS = HERE / "RESULTS.md"
MODEL = "efficientnet-lite0"


@dataclass
class Dataset:
    name: str
    folder: Path
    classes: int


def datasets(data: Path | None = None) -> list[Dataset]:
    """The labelled folders, written under ``data`` (default benchmarks/data) when missing."""
    data = data or DATA
    return [
        Dataset("fashion-mnist-test", fashion_mnist_folder(data / "fashion-mnist-test"), 10),
        Dataset("digits", digits_folder(data / "digits"), 10),
        Dataset("sample_data", HERE.parent / "sample_data", 5),
    ]


# The runtime the benchmarks that embed through features() use: torch, as their committed results were measured
# (auto runs EfficientNet-Lite0 in int8 on the CPU since round 23; bench_int8_acc and bench_peers measure int8).
RUNTIME = "torch"


def features(folder: Path, device: torch.device, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Features (through the project's own cached pipeline, in :data:`RUNTIME`), labels, seconds, images embedded now."""
    config = EmbedConfig(str(folder), model=MODEL, cache_dir=str(cache_dir) if cache_dir else None, runtime=RUNTIME)
    result = embed_folder(config, device)
    labels = np.array([p.split("/", 1)[0] for p in result.paths])
    return result.features, labels, result.seconds, result.embedded


def run_objective(x: np.ndarray, y: np.ndarray, neighbours: np.ndarray, config: TrainConfig, device: torch.device) -> dict[str, float]:
    from imgcluster.assign import predict

    result = train_objective(x, neighbours, config, device)
    assigned = predict(result.objective, x, device)
    scores = score(y, assigned.cluster)
    probs = probabilities(result.objective, x, device)
    truth = matched_clusters(y, assigned.cluster, probs.shape[1])
    calibration = {
        "ece": expected_calibration_error(assigned.confidence, assigned.cluster == truth),
        "fitted_t": fitted_temperature(probs, truth),
        "low": float((assigned.confidence < 0.5).mean()),
    }
    return {**scores, **calibration, "seconds": result.seconds, "empty": float(result.empty_clusters)}


def probabilities(objective: Any, x: np.ndarray, device: torch.device) -> np.ndarray:
    """The kept head's probabilities, whose maximum is the confidence `assign` reports."""
    from imgcluster.neighbours import l2_normalise

    objective.eval().to(device)
    with torch.no_grad():
        z = torch.from_numpy(l2_normalise(x)).to(device)
        return objective.predict(z).float().cpu().numpy()


def matched_clusters(y: np.ndarray, clusters: np.ndarray, k: int) -> np.ndarray:
    """Each image's true class as a cluster index, by the Hungarian matching behind ACC (-1: no cluster)."""
    classes, y_idx = np.unique(y, return_inverse=True)
    _, rows, cols = best_matching(clusters, y_idx, (k, classes.size))
    cluster_of_class = np.full(classes.size, -1)
    cluster_of_class[cols] = rows
    return cluster_of_class[y_idx]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / confidence.size)


def fitted_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """The T that makes softmax(log p / T) most likely for the true (matched) clusters."""
    from scipy.optimize import minimize_scalar

    keep = truth >= 0
    logp = np.log(np.clip(probs[keep], np.finfo(np.float32).tiny, None)).astype(np.float64)
    target = truth[keep]

    def nll(log_t: float) -> float:
        scaled = logp / np.exp(log_t)
        scaled -= scaled.max(1, keepdims=True)
        return float(-(scaled[np.arange(target.size), target] - np.log(np.exp(scaled).sum(1))).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(50.0)), method="bounded").x))


def neighbours_for(x: np.ndarray, k: int = 20) -> np.ndarray:
    return knn_search(x, k)[0]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, threads {torch.get_num_threads()}"


def mean_std(values: list[float], digits: int = 3) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"


def write_section(name: str, body: str, results: Path = RESULTS) -> None:
    """Replace this benchmark's section of ``results`` (RESULTS.md), leaving the others as they are."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = results.read_text() if results.exists() else "# Benchmark results\n\nEach section is written by the script named in it.\n"
    block = f"{start}\n{body.rstrip()}\n\n_Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}._\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    results.write_text(text)


def option(text: str) -> tuple[str, str]:
    """``head_choice=tightest`` -> ("head_choice", "tightest")."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value
