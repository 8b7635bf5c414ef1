"""`make bench-k`: does `--clusters auto` find the number of classes, and what does its K cost in ACC/NMI?

Datasets: Fashion-MNIST test (10,000), scikit-learn digits written as images (1,797) and
sample_data (125), embedded with efficientnet-lite0 through the project's pipeline into each
folder's own cache (the CLI's default, ``<folder>/.imgcluster``), so reruns embed nothing.

For each dataset: the K that ``choose_k`` picks with seeds 0, 1, 2 (label-free), its CPU time,
then the default objective trained with seeds 0, 1, 2 at the seed-0 choice and at the true
number of classes, scored against the labels (ACC: Hungarian matching, which counts images in
unmatched clusters as errors when K differs from the class count). Prints a markdown table and
writes it to ``benchmarks/results_choose_k.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import HERE, datasets, features, machine, mean_std, neighbours_for, run_objective

from imgcluster.choose_k import DEFAULT_K_MAX, DEFAULT_K_MIN, choose_k
from imgcluster.config import TrainConfig
from imgcluster.errors import render
from imgcluster.objectives import DEFAULT_OBJECTIVE

SEEDS = (0, 1, 2)
OUT = HERE / "results_choose_k.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"machine: {machine()}", flush=True)
    rows = []
    curves = []
    for ds in datasets():
        if args.datasets and ds.name not in args.datasets:
            continue
        x, y, _, _ = features(ds.folder, torch.device("cpu"), cache_dir=ds.folder / ".imgcluster")
        choices, cpu, wall = [], [], []
        for seed in SEEDS:
            c0, w0 = time.process_time(), time.perf_counter()
            choices.append(choose_k(x, DEFAULT_K_MIN, DEFAULT_K_MAX, seed=seed))
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        chosen = choices[0].k
        print(ds.name, render(choices[0].explanation, {}), flush=True)
        nn = neighbours_for(x)
        scores = {}
        for k in dict.fromkeys((chosen, ds.classes)):  # once when the choice is right
            runs = [run_objective(x, y, nn, TrainConfig(objective=DEFAULT_OBJECTIVE, clusters=k, seed=s), device) for s in SEEDS]
            scores[k] = (mean_std([r["acc"] for r in runs]), mean_std([r["nmi"] for r in runs]))
            print(ds.name, f"K={k}", scores[k], flush=True)
        rows.append(
            f"| {ds.name} | {x.shape[0]} | {ds.classes} | {', '.join(str(c.k) for c in choices)} | "
            f"{mean_std(cpu, 1)} | {mean_std(wall, 1)} | {scores[chosen][0]} | {scores[chosen][1]} | "
            f"{scores[ds.classes][0]} | {scores[ds.classes][1]} |"
        )
        q = choices[0].scores
        best = max(q, key=q.get)
        curves.append(
            f"- {ds.name}: " + ", ".join(f"{k}: {v:.3f}" for k, v in q.items())
            + f" (best {best}, jackknife s.e. {choices[0].standard_error:.3f}, chosen {chosen})"
        )  # fmt: skip
    body = "\n".join(
        [
            "# `--clusters auto` against the true number of classes (`make bench-k`)",
            "",
            f"Criterion: kNN-graph modularity with the 1-SE rule (`imgcluster/choose_k.py`), K in "
            f"{DEFAULT_K_MIN}..{DEFAULT_K_MAX}, efficientnet-lite0 features. Chooser seeds {', '.join(map(str, SEEDS))}; "
            f"the default objective ({DEFAULT_OBJECTIVE}) trained with seeds {', '.join(map(str, SEEDS))} at the seed-0 "
            "choice and at the true K, mean ± std. Chooser times are per call (CPU = process time over all threads).",
            "",
            "| dataset | images | classes | chosen K (seeds 0,1,2) | choose CPU s | choose wall s | "
            "ACC @ chosen K | NMI @ chosen K | ACC @ true K | NMI @ true K |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Modularity Q per K (seed 0):",
            "",
            *curves,
            "",
            f"_Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}._",
        ]
    )
    print(body)
    args.out.write_text(body + "\n")


if __name__ == "__main__":
    main()
