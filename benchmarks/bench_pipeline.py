"""`make bench`: the default pipeline on Fashion-MNIST (10,000 test images) with efficientnet-lite0 on the CPU.

Reports embed throughput, head training time, and ACC/NMI/ARI of the default head next to
spherical k-means, 3 seeds each, on the same cached features.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import DATA, datasets, features, machine, mean_std, neighbours_for, run_objective, write_section

from imgcluster.config import TrainConfig
from imgcluster.objectives import DEFAULT_OBJECTIVE

SEEDS = (0, 1, 2)
THROUGHPUT_IMAGES = 1000


def embed_throughput(folder: Path, device: torch.device) -> float:
    """Images/s embedding a fresh copy of the first 1,000 images (empty cache, real decoding)."""
    subset = Path(tempfile.mkdtemp(prefix="imgcluster-bench-"))
    try:
        for src in sorted(folder.rglob("*.png"))[:THROUGHPUT_IMAGES]:
            target = subset / src.parent.name / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        start = time.perf_counter()
        _, _, _, embedded = features(subset, device, cache_dir=subset / ".cache")
        return embedded / (time.perf_counter() - start)
    finally:
        shutil.rmtree(subset, ignore_errors=True)


def ivf_recall(x: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """Share of the exact 20 neighbours the IVF index finds on these real features, and its seconds.

    The pipeline switches to IVF above 200,000 images; forcing it here shows its recall on
    features with real structure (random vectors, in `make bench-speed`, are its worst case).
    """
    import imgcluster.neighbours as neighbours

    saved = neighbours.IVF_THRESHOLD
    neighbours.IVF_THRESHOLD = 0
    try:
        start = time.perf_counter()
        approx = neighbours.knn_search(x, exact.shape[1])[0]
        seconds = time.perf_counter() - start
    finally:
        neighbours.IVF_THRESHOLD = saved
    found = sum(len(set(a) & set(e)) for a, e in zip(approx, exact))
    return found / exact.size, seconds


def main() -> None:
    device = torch.device("cpu")
    fashion = datasets()[0]
    print(f"machine: {machine()}", flush=True)
    rate = embed_throughput(fashion.folder, device)
    print(f"embed throughput: {rate:.1f} images/s", flush=True)
    x, y, seconds, embedded = features(fashion.folder, device)
    print(f"features: {x.shape} ({embedded} embedded now, {seconds:.1f}s)", flush=True)
    start = time.perf_counter()
    nn = neighbours_for(x)
    exact_seconds = time.perf_counter() - start
    recall, ivf_seconds = ivf_recall(x, nn)
    print(f"kNN: exact {exact_seconds:.1f}s; IVF recall {recall:.3f} in {ivf_seconds:.1f}s", flush=True)
    rows = {}
    for objective in dict.fromkeys((DEFAULT_OBJECTIVE, "scan", "kmeans")):  # scan: kNN consistency, the first default
        runs = [run_objective(x, y, nn, TrainConfig(objective=objective, clusters=10, seed=s), device) for s in SEEDS]
        rows[objective] = runs
        print(objective, [round(r["acc"], 4) for r in runs], flush=True)
    lines = [
        "## Default pipeline on Fashion-MNIST (`make bench`)",
        "",
        f"10,000 test images, `{fashion.folder.relative_to(DATA.parent)}`, model efficientnet-lite0, CPU, "
        f"seeds {', '.join(map(str, SEEDS))}.",
        "",
        f"- Embed throughput (fresh cache, first {THROUGHPUT_IMAGES} images, PNG 28x28 -> 224 px): **{rate:.1f} images/s**",
        f"- kNN (k=20): exact {exact_seconds:.1f} s; the IVF index the pipeline uses above 200,000 images, forced here "
        f"(nlist {int(4 * np.sqrt(len(x)))}, nprobe 16), finds {recall:.1%} of the exact neighbours in {ivf_seconds:.1f} s",
        "",
        "| head | ACC | NMI | ARI | train seconds | empty clusters |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        label = {DEFAULT_OBJECTIVE: f"{name} (default)", "kmeans": "kmeans (spherical, centred; baseline)"}.get(name, name)
        lines.append(
            f"| {label} | {mean_std([r['acc'] for r in runs])} | {mean_std([r['nmi'] for r in runs])} | "
            f"{mean_std([r['ari'] for r in runs])} | {mean_std([r['seconds'] for r in runs], 1)} | "
            f"{mean_std([r['empty'] for r in runs], 1)} |"
        )
    body = "\n".join(lines)
    print(body)
    write_section("pipeline", body)


if __name__ == "__main__":
    main()
