"""`make bench`: the default pipeline on Fashion-MNIST (10,000 test images) with efficientnet-lite0 on the CPU.

Reports embed throughput, head training time, and ACC/NMI/ARI of the default head next to FAISS
spherical k-means, 3 seeds each, on the same cached features.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    device = torch.device("cpu")
    fashion = datasets()[0]
    print(f"machine: {machine()}", flush=True)
    rate = embed_throughput(fashion.folder, device)
    print(f"embed throughput: {rate:.1f} images/s", flush=True)
    x, y, seconds, embedded = features(fashion.folder, device)
    print(f"features: {x.shape} ({embedded} embedded now, {seconds:.1f}s)", flush=True)
    nn = neighbours_for(x)
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
        "",
        "| head | ACC | NMI | ARI | train seconds | empty clusters |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in rows.items():
        label = {DEFAULT_OBJECTIVE: f"{name} (default)", "kmeans": "kmeans (FAISS spherical, baseline)"}.get(name, name)
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
