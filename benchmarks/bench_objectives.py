"""`make bench-objectives`: every objective and k-means on the same cached features, 3 seeds each.

Datasets: Fashion-MNIST test (10,000), scikit-learn digits written as images (1,797) and
sample_data (125), all embedded with efficientnet-lite0 through the project's cache. Prints and
commits ACC / NMI / ARI (mean ± std), training seconds, empty clusters and the device.
"""

from __future__ import annotations

# isort: off
import imgcluster  # noqa: F401 - before torch: OpenMP threads wait passively (spinning ones cost 30x on shared cores)

# isort: on
import argparse
import re
import sys

import torch
from common import RESULTS, datasets, features, machine, mean_std, neighbours_for, option, run_objective, write_section

from imgcluster.config import TrainConfig
from imgcluster.objectives import DEFAULT_OBJECTIVE, list_objectives

SEEDS = (0, 1, 2)


def earlier_rows(section: str) -> dict[tuple[str, str], str]:
    """(dataset heading, objective) -> table row, from this section of RESULTS.md as it stands."""
    match = re.search(f"<!-- bench:{re.escape(section)} -->(.*?)<!-- /bench:{re.escape(section)} -->", RESULTS.read_text(), re.S)
    rows: dict[tuple[str, str], str] = {}
    heading = ""
    for line in (match.group(1) if match else "").splitlines():
        if line.startswith("### "):
            heading = line
        elif line.startswith("| ") and not line.startswith(("| objective", "|---")):
            rows[(heading, line.split("|")[1].strip().split(" ")[0])] = line
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objectives", nargs="*", default=list_objectives())
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--section", default=None, help="RESULTS.md section name (default: objectives-<device>)")
    parser.add_argument(
        "--keep-other-rows",
        action="store_true",
        help="rerun only --objectives and keep the section's rows of the others (marked as from the earlier run)",
    )
    parser.add_argument("--option", action="append", default=[], type=option, help="KEY=VALUE: an option of every objective run")
    args = parser.parse_args()
    options = dict(args.option)
    settings = ("options " + ", ".join(f"{k}={v}" for k, v in options.items())) if options else "default options of each objective"
    device = torch.device(args.device)
    section = args.section or f"objectives-{device.type}"
    kept = earlier_rows(section) if args.keep_other_rows else {}
    if kept:
        earlier = re.search(r"_Written (.*?) on", RESULTS.read_text().split(f"<!-- bench:{section} -->", 1)[1])
        when = earlier.group(1) if earlier else "an earlier run"
    print(f"machine: {machine()}", flush=True)
    lines = [
        f"## Objectives side by side on {device.type.upper()} (`make bench-objectives`)",
        "",
        *([f"Run as `python benchmarks/bench_objectives.py {' '.join(sys.argv[1:])}`.", ""] if sys.argv[1:] else []),
        *([f"Rows marked † are kept from the run of {when}; the others are from this run.", ""] if kept else []),
        f"efficientnet-lite0 features, {settings}, seeds {', '.join(map(str, args.seeds))}; "
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
        heading = f"### {ds.name} ({x.shape[0]} images, {ds.classes} classes)"
        lines += [heading, ""]
        lines += [
            "| objective | ACC | NMI | ARI | ECE | fitted T | below 0.5 | train s | empty clusters |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in sorted({*args.objectives, *(n for h, n in kept if h == heading)}):
            if name not in args.objectives:
                first, rest = kept[(heading, name)].split("|")[1], kept[(heading, name)].split("|", 2)[2]
                lines.append(f"|{first.replace(' †', '').rstrip()} † |{rest}")
                continue
            configs = [TrainConfig(objective=name, clusters=ds.classes, seed=s, objective_options=dict(options)) for s in args.seeds]
            runs = [run_objective(x, y, nn, config, device) for config in configs]
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
        write_section(section, "\n".join(lines))  # each finished dataset is kept
    print("\n".join(lines))


if __name__ == "__main__":
    main()
