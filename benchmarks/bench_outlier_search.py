"""`python benchmarks/bench_outlier_search.py`: the CPU a cold ``assign`` spends finding neighbours, before and after sharing.

Before, training mined its kNN (``knn`` = 20 neighbours) and the isolation test ran a search of its own
(k = :func:`isolation_k`, 50 on 10,000 images); now training searches once at ``max(knn, isolation k)`` and
the outlier test reuses it (:attr:`imgcluster.fitting.FittedHead.knn`). On cached efficientnet-lite0 features
of the 10,000 Fashion-MNIST test images (embedded once through the project's pipeline), each way is timed
in CPU seconds of this process (``time.process_time``: user + system over all threads), alternating the two
ways ``ROUNDS`` times so that both see the same load, and the flags of both ways are compared. Writes
``benchmarks/results_outlier_search.md``. ``python benchmarks/bench_outlier_search.py FILE.npz`` takes the
features from ``FILE.npz``'s ``features`` array instead (``bench_runtime.py`` keeps the same 10,000 images'
torch features in ``benchmarks/data/runtime-features/torch-10000.npz``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import DATA, HERE, features, machine
from datasets import fashion_mnist_folder

from imgcluster.config import DEFAULT_KNN
from imgcluster.neighbours import knn_search
from imgcluster.outliers import Outliers, find_outliers, isolation_k

OUT = HERE / "results_outlier_search.md"
ROUNDS = 3


def before(x: np.ndarray, clusters: np.ndarray) -> Outliers:
    knn_search(x, DEFAULT_KNN)  # training's search
    return find_outliers(x, clusters, np.ones(len(x)))  # and the isolation test's own


def after(x: np.ndarray, clusters: np.ndarray) -> Outliers:
    searched = knn_search(x, max(DEFAULT_KNN, isolation_k(len(x))))  # one search, training takes its first 20 columns
    return find_outliers(x, clusters, np.ones(len(x)), neighbours=searched)


def main(given: Path | None = None) -> None:
    started, load = time.perf_counter(), os.getloadavg()
    if given is None:
        x, labels, _, _ = features(fashion_mnist_folder(DATA / "fashion-mnist-test"), torch.device("cpu"))
        source = "embedded through the project's cached pipeline"
    else:
        stored = np.load(given)
        x, labels = stored["features"], np.array([p.split("/", 1)[0] for p in stored["rel"]])
        source = f"read from `{given.name}`"
    x = np.asarray(x, dtype=np.float32)
    clusters = np.unique(labels, return_inverse=True)[1]  # the classes stand in for a head's clusters: same cost
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    found = {}
    for _ in range(ROUNDS):
        for name, way in (("before", before), ("after", after)):
            cpu = time.process_time()
            found[name] = way(x, clusters)
            seconds[name].append(time.process_time() - cpu)
    same = np.array_equal(found["before"].flags, found["after"].flags)
    b, a = np.median(seconds["before"]), np.median(seconds["after"])
    lines = [
        "# Neighbour searches of a cold `assign` (`python benchmarks/bench_outlier_search.py`)",
        "",
        f"{len(x):,} Fashion-MNIST test images, cached {x.shape[1]}-d efficientnet-lite0 features ({source}); training's kNN at "
        f"{DEFAULT_KNN} neighbours, the isolation test's at {isolation_k(len(x))}. CPU seconds of the searches and the "
        f"outlier tests (process time, all threads), median of {ROUNDS} alternating rounds:",
        "",
        "| way | searches | CPU s (median) | each round |",
        "|---|---|---|---|",
        f"| before: training's search + the isolation test's own | 2 | {b:.2f} | {', '.join(f'{s:.2f}' for s in seconds['before'])} |",
        f"| after: one search at max(knn, isolation k), shared | 1 | {a:.2f} | {', '.join(f'{s:.2f}' for s in seconds['after'])} |",
        "",
        f"After / before: {a / b:.2f}. Same outlier flags both ways: {'yes' if same else 'NO'} ({found['after'].count} flagged).",
        "",
        f"Took {time.perf_counter() - started:.0f} s on {machine()}, shared with five other engineers' work "
        f"(load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end): compare the ratio, "
        "measured side by side, not the seconds.",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    OUT.write_text(body)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
