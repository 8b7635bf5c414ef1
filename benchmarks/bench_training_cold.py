"""One cold epoch of training in a fresh process per package tree, trees taking turns.

What a cold ``assign`` pays in its training phase besides the steps: the imports training makes on
first use (torch.optim's import of torch._dynamo before imgcluster's own AdamW). Each run is a new
Python process whose PYTHONPATH is one tree (a checkout's root, or ``git archive COMMIT
imgcluster | tar -x -C DIR``); it prints the epoch's wall and CPU seconds, the modules the call
imported and its loss (equal losses: the same arithmetic). Writes a section of results_training.md.

    python benchmarks/bench_training_cold.py --trees /tmp/main-tree . --features fm10k.npy
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import HERE, write_section

CHILD = """
import imgcluster, json, os, sys, time
import numpy as np, torch
from imgcluster.config import TrainConfig
from imgcluster.neighbours import knn_search
from imgcluster.train import train_objective
torch.set_num_threads(1)
x = np.load(sys.argv[1])
nn = knn_search(x, 20)[0]
before = len(sys.modules)
load = os.getloadavg()[0]
wall, cpu = time.perf_counter(), time.process_time()
r = train_objective(x, nn, TrainConfig(clusters=10, epochs=1, min_steps=0), torch.device("cpu"))
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "package": imgcluster.__file__,
                  "modules": len(sys.modules) - before, "loss": r.history[0].loss, "load": load}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", type=Path, required=True, help="package trees, the first is the yardstick")
    parser.add_argument("--features", type=Path, required=True, help=".npy feature matrix [N, d]")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for round_ in range(args.rounds):
        for tree in args.trees:
            env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
            # -P: the current folder does not go first on sys.path, so the tree given is the package imported
            command = [sys.executable, "-P", "-c", CHILD, str(args.features)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if not result["package"].startswith(str(tree.resolve())):
                raise SystemExit(f"{tree}: imported {result['package']} instead")
            rows.append((round_ + 1, tree, result))
            print(round_ + 1, tree, result, flush=True)
    lines = [
        "## One cold epoch per package tree (`benchmarks/bench_training_cold.py`)",
        "",
        f"Run as `python benchmarks/bench_training_cold.py {' '.join(sys.argv[1:])}`: a fresh process per run, "
        f"one torch thread, one epoch of the default objective on {args.features.name}; `modules`: imported by the call.",
        "",
        "| round | tree | wall s | CPU s | modules | loss | load |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r} | {t} | {x['wall']:.2f} | {x['cpu']:.2f} | {x['modules']} | {x['loss']:.6f} | {x['load']:.1f} |" for r, t, x in rows),
    ]
    write_section("training-cold", "\n".join(lines), HERE / "results_training.md")


if __name__ == "__main__":
    main()
