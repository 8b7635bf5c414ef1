"""How long mistakes and cached reruns take: `imgcluster` against `import torch`, and its memory.

Each command runs in a fresh interpreter (as a user runs it), several times; the first table
gives the median and the fastest wall time and the exit code. The target: an argument or folder
error in under 1 s on 2 idle cores, i.e. before torch (seconds to import) is loaded.

The second table: a fully cached rerun of ``assign`` on a copy of sample_data, timed in turn with
``python -c "import torch"`` (A B A B ..., so that load from other processes hits both alike),
and a cold ``assign`` (fresh cache); with the peak memory of each run's process tree (the largest
sum of PSS, sampled every 50 ms, as ``make bench-peers`` measures it) and of its largest process
(RSS). Targets: the cached rerun within 1.5x of ``import torch`` (issue 14), peak memory under
1 GB on sample_data (issue 15). Writes benchmarks/results_startup.md, with the machine's load
average, which changes every number here.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results_startup.md"
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def timed(argv: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
    return seconds, done.returncode, last


def measured(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, peak PSS of the process tree and largest process RSS (MB) of one run."""
    from bench_peers import run_measured

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall, usage, peak_kb = run_measured(argv, env, cwd / "run.log", cwd)
    return wall, peak_kb / 1024, usage.ru_maxrss / 1024


def rerun_rows(root: Path) -> list[str]:
    """The cached rerun side by side with ``import torch``, and a cold run, with their memory."""
    sample = root / "sample_data"
    shutil.copytree(ROOT / "sample_data", sample)  # copy2 keeps the mtimes
    assign = [sys.executable, "-m", "imgcluster", "assign", str(sample), "--model", "efficientnet-lite0", "--clusters", "5"]
    cached = [*assign, "--cache-dir", str(root / "cache"), "--out", str(root / "cached.csv")]
    torch_only = [sys.executable, "-c", "import torch"]
    cold_runs = [measured([*assign, "--cache-dir", str(root / f"cold{i}"), "--out", str(root / "cold.csv")], root) for i in range(2)]
    shutil.copytree(root / "cold0", root / "cache")  # the first cold run's cache: every later run is fully cached
    pairs = [(measured(torch_only, root), measured(cached, root)) for _ in range(REPEATS)]
    reference = statistics.median(t[0] for t, _ in pairs)
    rows = []
    for name, runs in (
        ("`python -c 'import torch'` (reference)", [t for t, _ in pairs]),
        ("`imgcluster assign sample_data` fully cached (rerun)", [c for _, c in pairs]),
        ("`imgcluster assign sample_data` cold (fresh cache)", cold_runs),
    ):
        times = [r[0] for r in runs]
        median = statistics.median(times)
        rows.append(
            f"| {name} | {len(runs)} | {median:.2f} | {min(times):.2f} | {median / reference:.2f} | "
            f"{max(r[1] for r in runs):.0f} | {max(r[2] for r in runs):.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "empty").mkdir()
        two = root / "two"
        two.mkdir()
        sample = sorted((ROOT / "sample_data").rglob("*.png"))[:2]
        for i, src in enumerate(sample):
            (two / f"{i}.png").write_bytes(src.read_bytes())
        cli = [sys.executable, "-m", "imgcluster"]
        cases = [
            ("`python -c 'import torch'` (reference)", [sys.executable, "-c", "import torch"]),
            ("`imgcluster --version`", [*cli, "--version"]),
            ("`imgcluster assign no_such_folder`", [*cli, "assign", str(root / "no_such_folder")]),
            ("`imgcluster assign EMPTY_FOLDER`", [*cli, "assign", str(root / "empty")]),
            ("`imgcluster assign TWO_IMAGES --model dinov2` (unknown model)", [*cli, "assign", str(two), "--model", "dinov2"]),
            ("`imgcluster assign TWO_IMAGES` (K=10 > 2 images)", [*cli, "assign", str(two)]),
            ("`imgcluster assign TWO_IMAGES --clusters many`", [*cli, "assign", str(two), "--clusters", "many"]),
        ]
        load_before = os.getloadavg()
        rows = []
        for name, argv in cases:
            runs = [timed(argv) for _ in range(REPEATS)]
            times = [r[0] for r in runs]
            code, message = runs[-1][1], runs[-1][2].replace(str(root) + "/", "").replace("|", "\\|")
            rows.append(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {code} | {message} |")
            print(rows[-1], flush=True)
        rerun_load = os.getloadavg()
        reruns = rerun_rows(root)
        load_after = os.getloadavg()
    lines = [
        "# Startup and fail-fast times (`make bench-startup`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.platform()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPU cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(other jobs share these cores: the times scale with the load, the ratio to `import torch` much less).",
        f"Wall time of a fresh process, {REPEATS} runs each, in seconds.",
        "",
        "| command | median s | fastest s | exit code | last line |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## A cached rerun and a cold run of `assign` on sample_data (125 images, `--model efficientnet-lite0 --clusters 5`)",
        "",
        f"Load average {rerun_load[0]:.1f} before, {load_after[0]:.1f} after. The rerun and `import torch` ran in turn "
        f"({REPEATS} pairs), so the ratio of their medians is the number to compare; the cold run twice. Memory: the peak "
        "over the run of the process tree's summed PSS, and the largest single process's RSS (`ru_maxrss`).",
        "",
        "| command | runs | median s | fastest s | median / `import torch` | tree peak PSS MB | largest RSS MB |",
        "|---|---|---|---|---|---|---|",
        *reruns,
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
