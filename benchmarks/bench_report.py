"""`make bench-report`: size and speed of the HTML report for 10,000 images, and how fast Chromium opens it.

Two folders of 10,000 images:
- the Fashion-MNIST test set (clusters from FAISS k-means on its cached efficientnet-lite0
  features, K = 10 and K = 50; typical images chosen by those features);
- 10,000 JPEGs of random noise at 256 px, the worst case for thumbnail compression, with 50
  random clusters and confidences (no features: typical images chosen by confidence).
For each: the report's size, thumbnails shown, the time to write it with an empty and with a
warm thumbnail cache, and the time headless Chromium takes to fire the page's load event
(Chromium's start not included). Writes its table to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import HERE, MODEL, datasets, neighbours_for, write_section
from PIL import Image

sys.path.insert(0, str(HERE.parent / "tests"))
from test_report_browser import DevTools, find_chromium

from imgcluster.assign import predict
from imgcluster.cache import default_cache_root
from imgcluster.config import EmbedConfig, TrainConfig
from imgcluster.csvfile import write_assignments
from imgcluster.pipeline import embed_folder
from imgcluster.report import write_report
from imgcluster.train import train_objective

NOISE_IMAGES = 10_000
NOISE_PX = 256


def noise_folder(root: Path) -> Path:
    """10,000 random-noise JPEGs (written once, seeded): thumbnails that barely compress."""
    folder = root / f"noise-{NOISE_IMAGES}"
    if len(list(folder.glob("*.jpg"))) == NOISE_IMAGES:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(NOISE_IMAGES):
        pixels = rng.integers(0, 256, size=(NOISE_PX, NOISE_PX, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def kmeans_csv(folder: Path, k: int, out: Path) -> tuple[Path, tuple[list[str], np.ndarray]]:
    """Cluster the folder's cached features with k-means; the CSV and the (paths, features) it came from."""
    result = embed_folder(EmbedConfig(str(folder), model=MODEL), torch.device("cpu"))
    x = result.features
    head = train_objective(x, neighbours_for(x), TrainConfig(objective="kmeans", clusters=k), torch.device("cpu"))
    write_assignments(str(out), result.paths, predict(head.objective, x, torch.device("cpu")))
    return out, (result.paths, x)


def random_csv(folder: Path, k: int, out: Path) -> Path:
    rng = np.random.default_rng(1)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["path", "cluster", "confidence"])
        for p in sorted(folder.glob("*.jpg")):
            writer.writerow([p.name, int(rng.integers(k)), float(rng.uniform(0.2, 1.0))])
    return out


def load_seconds(page: Path, work: Path) -> float | None:
    binary = find_chromium()
    if binary is None:
        return None
    chrome = DevTools(binary, work / "profile", work / "chromium.log")
    try:
        start = time.perf_counter()
        chrome.open_page(page.resolve().as_uri(), width=1280)
        return time.perf_counter() - start
    finally:
        chrome.close()


def measure(name: str, folder: Path, csv_path: Path, work: Path, feats: tuple[list[str], np.ndarray] | None = None) -> str:
    shutil.rmtree(default_cache_root(folder, None) / "thumbs", ignore_errors=True)
    out = work / f"{csv_path.stem}.html"
    cold = write_report(csv_path, out=out, folder=folder, features=feats)
    warm = write_report(csv_path, out=out, folder=folder, features=feats)
    opened = load_seconds(out, work)
    row = (
        f"| {name} | {cold.rows:,} | {cold.clusters} | {cold.typical_by} | {cold.shown:,} | {cold.bytes / 1e6:.1f} | "
        f"{cold.seconds:.1f} | {warm.seconds:.1f} | {'–' if opened is None else f'{opened:.2f}'} |"
    )
    print(row, flush=True)
    return row


def main() -> None:
    fashion = datasets()[0]
    work = Path(tempfile.mkdtemp(prefix="imgcluster-bench-report-"))
    try:
        rows = []
        for k in (10, 50):
            table, feats = kmeans_csv(fashion.folder, k, work / f"fashion-k{k}.csv")
            rows.append(measure("Fashion-MNIST test, k-means", fashion.folder, table, work, feats))
        noise = noise_folder(fashion.folder.parent)
        rows.append(measure(f"random noise, {NOISE_PX} px JPEG, random clusters", noise, random_csv(noise, 50, work / "noise.csv"), work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = "\n".join(
        [
            "## HTML report for 10,000 images (`make bench-report`)",
            "",
            "Default options (48 typical and 16 least confident images per cluster, at most 2,400 thumbnails, 28 MB cap). "
            "`write s`: writing the report with an empty thumbnail cache, then again with it warm; `load s`: headless "
            "Chromium from navigation to the page's load event.",
            "",
            "| images | rows | clusters | typical by | thumbnails | MB | write s (cold) | write s (warm) | load s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(body)
    write_section("report", body)


if __name__ == "__main__":
    main()
