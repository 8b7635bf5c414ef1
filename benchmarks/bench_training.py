"""Training cost and ACC of training variants side by side, seed by seed, on cached features.

Each variant is a set of TrainConfig fields (``stable_fraction=0.01``) and optionally ``threads=N``
(torch's intra-op threads for that run) or ``matmul=bf16`` (oneDNN's reduced-precision float32
matmuls); the first variant is the yardstick. For every dataset and seed the variants run one after
the other, so that they share the machine's load; ratios of their seconds mean more than the
seconds themselves on a shared machine. Writes a section of benchmarks/results_training.md.

    python benchmarks/bench_training.py --variants base: stop:stable_fraction=0.01 --seeds 0 1 2 3 4
"""

from __future__ import annotations

# isort: off
import imgcluster  # noqa: F401 - before torch: OpenMP threads wait passively (spinning ones cost 30x on shared cores)

# isort: on
import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import HERE, datasets, features, machine, mean_std, neighbours_for, write_section

from imgcluster.config import TrainConfig
from imgcluster.scoring import score
from imgcluster.train import predict_labels, train_objective

RESULTS = HERE / "results_training.md"
RUN_KEYS = ("threads", "matmul")  # settings of the process, not of TrainConfig


@dataclasses.dataclass
class Variant:
    name: str
    train: dict[str, Any]
    run: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """``name:key=value,key=value``; values are JSON (``null``, numbers) or plain words."""
    name, _, spec = text.partition(":")
    train: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        (run if key in RUN_KEYS else train)[key] = value
    return Variant(name, train, run)


def folder_labels(folder: Path, count: int) -> np.ndarray:
    """Class of each image in the pipeline's order (sorted relative paths), for features saved as .npy."""
    paths = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    paths = [p for p in paths if not p.startswith(".imgcluster")]
    if len(paths) != count:
        raise SystemExit(f"{folder}: {len(paths)} images, but the saved features have {count} rows")
    return np.array([p.split("/", 1)[0] for p in paths])


def run_once(x: np.ndarray, y: np.ndarray, nn: np.ndarray, config: TrainConfig, variant: Variant) -> dict[str, float]:
    threads = torch.get_num_threads()
    precision = torch.backends.mkldnn.matmul.fp32_precision
    torch.set_num_threads(int(variant.run.get("threads", threads)))
    torch.backends.mkldnn.matmul.fp32_precision = "bf16" if variant.run.get("matmul") == "bf16" else precision
    try:
        load = os.getloadavg()[0]
        cpu = time.process_time()
        result = train_objective(x, nn, config, torch.device("cpu"))
        cpu = time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.matmul.fp32_precision = precision
    z = torch.from_numpy(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    labels = predict_labels(result.objective, z)
    return {
        **score(y, labels),
        "seconds": result.seconds,
        "cpu": cpu,
        "epochs": float(len(result.history)),
        "load": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", required=True, help="name:key=value,... (the first is the yardstick)")
    parser.add_argument("--objective", default=TrainConfig.objective)
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: each folder's own)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the labelled folders are written (default: benchmarks/data)")
    parser.add_argument(
        "--features-npy",
        nargs="*",
        default=[],
        help="DATASET=FILE.npy: features this pipeline saved earlier, rows in the folder's sorted path order",
    )
    parser.add_argument("--section", default=None)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown file whose section is written")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    saved = dict(item.split("=", 1) for item in args.features_npy)
    section = args.section or f"training-{args.objective}"
    print(f"machine: {machine()}", flush=True)
    lines = [
        f"## Training variants side by side: {args.objective} (`benchmarks/bench_training.py`)",
        "",
        *([args.note, ""] if args.note else []),
        f"Run as `python benchmarks/bench_training.py {' '.join(sys.argv[1:])}`.",
        "",
        "efficientnet-lite0 features (cached), the kNN table searched once per dataset; for each seed the variants "
        "run one after the other in one process, so they share the machine's load. `train s`: wall seconds of "
        "`train_objective` (setup included); `CPU s`: the process's CPU seconds over the same call; `epochs`: "
        "epochs trained; `load`: the 1-minute load average when each run started (2 cores: above 2 means "
        "other work shared them). Ratios are against the first variant, seed by seed.",
        "",
        "Variants: " + "; ".join(f"`{v.name}` = {json.dumps({**v.train, **v.run}) if v.train or v.run else 'defaults'}" for v in variants),
        "",
    ]
    for ds in datasets(args.data_dir):
        if args.datasets and ds.name not in args.datasets:
            continue
        if ds.name in saved:
            x = np.load(saved[ds.name])
            y = folder_labels(ds.folder, x.shape[0])
        else:
            x, y, _, _ = features(ds.folder, torch.device("cpu"), args.cache_dir)
        nn = neighbours_for(x)
        runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
        for seed in args.seeds:
            for v in variants:
                config = dataclasses.replace(TrainConfig(objective=args.objective, clusters=ds.classes, seed=seed), **v.train)
                r = run_once(x, y, nn, config, v)
                runs[v.name].append(r)
                print(f"{ds.name} seed {seed} {v.name}: ACC {r['acc']:.4f} {r['seconds']:.2f} s, {r['cpu']:.2f} CPU s, "
                      f"{r['epochs']:.0f} epochs, load {r['load']:.1f}", flush=True)  # fmt: skip
        base = runs[variants[0].name]
        lines += [
            f"### {ds.name} ({x.shape[0]} images, {ds.classes} classes)",
            "",
            "| variant | ACC | NMI | train s | CPU s | epochs | train s / first | CPU s / first | load |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in variants:
            rs = runs[v.name]
            ratio = [r["seconds"] / b["seconds"] for r, b in zip(rs, base)]
            cpu_ratio = [r["cpu"] / b["cpu"] for r, b in zip(rs, base)]
            lines.append(
                f"| {v.name} | {mean_std([r['acc'] for r in rs])} | {mean_std([r['nmi'] for r in rs])} | "
                f"{mean_std([r['seconds'] for r in rs], 2)} | {mean_std([r['cpu'] for r in rs], 2)} | "
                f"{mean_std([r['epochs'] for r in rs], 1)} | {np.mean(ratio):.2f} | {np.mean(cpu_ratio):.2f} | "
                f"{min(r['load'] for r in rs):.1f}-{max(r['load'] for r in rs):.1f} |"
            )
        lines += ["", "Seed by seed (ACC / train s):", ""]
        lines += ["| seed | " + " | ".join(v.name for v in variants) + " |", "|---" * (len(variants) + 1) + "|"]
        for i, seed in enumerate(args.seeds):
            cells = [f"{runs[v.name][i]['acc']:.4f} / {runs[v.name][i]['seconds']:.2f}" for v in variants]
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines.append("")
        write_section(section, "\n".join(lines), args.results)  # each finished dataset is kept
    print("\n".join(lines))


if __name__ == "__main__":
    main()
