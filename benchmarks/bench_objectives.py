"""`make bench-objectives`: every objective and k-means on the same cached features, 3 seeds each.

Datasets: Fashion-MNIST test (10,000), scikit-learn digits written as images (1,797) and
sample_data (125), all embedded with efficientnet-lite0 through the project's cache. Prints and
commits ACC / NMI / ARI (mean ± std), training seconds, empty clusters and the device.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import datasets, features, machine, mean_std, neighbours_for, run_objective, write_section

from imgcluster.config import TrainConfig
from imgcluster.objectives import DEFAULT_OBJECTIVE, list_objectives

SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objectives", nargs="*", default=list_objectives())
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--section", default=None, help="RESULTS.md section name (default: objectives-<device>)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {machine()}", flush=True)
    lines = [
        f"## Objectives side by side on {device.type.upper()} (`make bench-objectives`)",
        "",
        *([f"Run as `python benchmarks/bench_objectives.py {' '.join(sys.argv[1:])}`.", ""] if sys.argv[1:] else []),
        f"efficientnet-lite0 features, default options of each objective, seeds {', '.join(map(str, args.seeds))}; "
        "mean ± std over seeds. `ECE`: expected calibration error of the confidences `assign` reports "
        "(10 bins; right = the cluster Hungarian-matched to the image's class). `fitted T`: the temperature on the "
        "head's log-probabilities that would fit the true labels best (above 1: the confidences overstate "
        "certainty; below 1: they understate it). `below 0.5`: share of images under the default "
        "`--min-confidence`. `train s` is the training time of one run.",
        "",
    ]
    for ds in datasets():
        if args.datasets and ds.name not in args.datasets:
            continue
        x, y, _, _ = features(ds.folder, torch.device("cpu"))
        nn = neighbours_for(x)
        lines += [f"### {ds.name} ({x.shape[0]} images, {ds.classes} classes)", ""]
        lines += [
            "| objective | ACC | NMI | ARI | ECE | fitted T | below 0.5 | train s | empty clusters |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in args.objectives:
            runs = [run_objective(x, y, nn, TrainConfig(objective=name, clusters=ds.classes, seed=s), device) for s in args.seeds]
            label = f"{name} (default)" if name == DEFAULT_OBJECTIVE else name
            row = (
                f"| {label} | {mean_std([r['acc'] for r in runs])} | {mean_std([r['nmi'] for r in runs])} | "
                f"{mean_std([r['ari'] for r in runs])} | {mean_std([r['ece'] for r in runs])} | "
                f"{mean_std([r['fitted_t'] for r in runs], 2)} | {mean_std([r['low'] for r in runs])} | "
                f"{mean_std([r['seconds'] for r in runs], 1)} | "
                f"{mean_std([r['empty'] for r in runs], 1)} |"
            )
            print(ds.name, row, flush=True)
            lines.append(row)
        lines.append("")
        write_section(args.section or f"objectives-{device.type}", "\n".join(lines))  # each finished dataset is kept
    print("\n".join(lines))


if __name__ == "__main__":
    main()
