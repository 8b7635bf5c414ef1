"""What the isolation test costs ``assign --features``, side by side; writes benchmarks/results_store_isolation.md.

A synthetic store (ROWS clustered float16 rows of DIM dimensions, no images) and one head trained
on it; then ``assign_store`` with that head, local pass, in a fresh process per variant:

- the sample is the whole store (every row keeps its LOF among the sample: a lookup by path key)
  or SMALL rows (the other rows are searched among the sample: ``knn.Reference``);
- with the isolation test, or without it (``labels.fit_isolation`` patched to return None: the
  pass as it was before the test came to stores).

Each variant reports the wall and CPU seconds of ``fit_isolation`` and of the whole ``assign_store``,
and the process's peak resident memory (VmHWM: ru_maxrss would carry the parent's peak across exec). The machine is shared (2 cores, other
engineers' jobs): compare the ratios of one run, not seconds; the load average is recorded.

    python benchmarks/bench_store_isolation.py            # all variants, then the report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / "data" / "store-isolation"
RESULTS = HERE / "results_store_isolation.md"
ROWS, DIM, CENTRES, SMALL = 20_000, 256, 20, 5_000
VARIANTS = {
    "whole, no isolation": (ROWS, False),
    "whole, isolation": (ROWS, True),
    f"sample {SMALL:,}, no isolation": (SMALL, False),
    f"sample {SMALL:,}, isolation": (SMALL, True),
}


def store() -> Path:
    import numpy as np

    from imgcluster.cache import cache_key
    from imgcluster.featurestore import FeatureStoreMeta, open_store

    path = WORK / f"store-{ROWS}x{DIM}"
    if (path / "_done").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(CENTRES, DIM))[rng.integers(0, CENTRES, ROWS)] + 0.8 * rng.normal(size=(ROWS, DIM))
    identity = {"model": "synthetic", "weights": "none", "dim": DIM}
    meta = FeatureStoreMeta(model="synthetic", key=cache_key(identity, "float16"), identity=identity, dim=DIM, source="/bench")
    writer = open_store(str(path), meta)
    for start in range(0, ROWS, 4096):
        part = slice(start, min(start + 4096, ROWS))
        n = part.stop - part.start
        writer.write([f"img/{i:08d}.jpg" for i in range(part.start, part.stop)], [1] * n, [0] * n, [None] * n, x[part])
    (path / "_done").write_text("")
    return path


def head() -> Path:
    from imgcluster.scale.training import train_from_store

    path = WORK / "head.safetensors"
    if not path.exists():
        train_from_store(str(store()), out=path, n_clusters=CENTRES, epochs=2, device="cpu")
    return path


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_variant(name: str) -> dict[str, Any]:
    """One variant, in this process."""
    import imgcluster.scale.assign_job as assign_job
    from imgcluster.scale import labels

    sample, isolation = VARIANTS[name]
    timed: dict[str, float] = {}
    fit = labels.fit_isolation

    def fit_timed(*args: Any, **kwargs: Any) -> Any:
        wall, used = time.perf_counter(), cpu()
        found = fit(*args, **kwargs) if isolation else None
        timed["fit_wall_s"], timed["fit_cpu_s"] = time.perf_counter() - wall, cpu() - used
        return found

    assign_job.fit_isolation = fit_timed
    with tempfile.TemporaryDirectory() as tmp:
        wall, used = time.perf_counter(), cpu()
        result = assign_job.assign_store(str(store()), out=Path(tmp) / "c.csv", head=head(), train_sample=sample, names=False, device="cpu")
        total_wall, total_cpu = time.perf_counter() - wall, cpu() - used
        sidecar = json.loads((Path(tmp) / "c.csv.json").read_text())["result"]
    return {
        "rows": result.rows, "sample": sample, "isolation": isolation, "total_wall_s": total_wall, "total_cpu_s": total_cpu,
        **timed, "peak_rss_mb": _vm_hwm_kb() / 1024,
        "isolated": sidecar["outliers"]["isolated"], "far": sidecar["outliers"]["far_from_centre"],
    }  # fmt: skip


def report(results: dict[str, dict[str, Any]], loads: list[str], seconds: float) -> str:
    lines = [
        "# What the isolation test costs `assign --features` (bench_store_isolation.py)",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()}-core CPU, no GPU, shared with other engineers' jobs; load average "
        f"before / after: {loads[0]} / {loads[1]}. Compare the ratios of this one run, not seconds. {seconds:.0f} s in all.",
        "",
        f"Store: {ROWS:,} synthetic rows of {DIM} dimensions around {CENTRES} centres (float16), one head trained on it "
        "(given to every variant); local pass, one process per variant, torch on one thread for the labelling.",
        "",
        "| variant | isolation fit wall s | fit CPU s | assign wall s | assign CPU s | rest CPU s | peak RSS MB | isolated | far |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['fit_wall_s']:.2f} | {r['fit_cpu_s']:.2f} | {r['total_wall_s']:.2f} | {r['total_cpu_s']:.2f} | "
            f"{r['total_cpu_s'] - r['fit_cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['isolated']} | {r['far']} |"
        )
    whole, small = results["whole, isolation"], results[f"sample {SMALL:,}, isolation"]
    base_whole, base_small = results["whole, no isolation"], results[f"sample {SMALL:,}, no isolation"]
    lines += [
        "",
        f"Reading: with the sample the whole store, the test cost {whole['total_cpu_s'] / base_whole['total_cpu_s']:.2f}x the CPU "
        f"of the pass without it (the sample's kNN at k = 50, then a lookup per row); with a sample of {SMALL:,}, "
        f"{small['total_cpu_s'] / base_small['total_cpu_s']:.2f}x (a smaller kNN, then {ROWS - SMALL:,} rows each searched "
        f"among the {SMALL:,}: one partition, an exact search).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant)))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    store(), head()  # made once, before the timed runs
    started, loads = time.perf_counter(), [" ".join(f"{v:.1f}" for v in os.getloadavg())]
    results = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    for name in VARIANTS:
        done = subprocess.run([sys.executable, __file__, "--variant", name], capture_output=True, text=True, env=env, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    loads.append(" ".join(f"{v:.1f}" for v in os.getloadavg()))
    RESULTS.write_text(report(results, loads, time.perf_counter() - started))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
