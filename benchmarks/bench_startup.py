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
# Another checkout's imgcluster (a folder holding its ``imgcluster`` package) to rerun alongside: before and after.
BASELINE = Path(os.environ["BENCH_BASELINE"]) if os.environ.get("BENCH_BASELINE") else None


def timed(argv: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
    return seconds, done.returncode, last


NOTES = """\
## What a cached rerun no longer does (measured by hand, 2026-11-29, same machine)

Before (2ea5e53), a fully cached `assign sample_data` (timestamps of its stderr lines and
`python -X importtime`, 23:19-23:35 UTC, load 0.5-11): 7.2 s before its first line (importing
scikit-learn took 3.5 s under `-X importtime`: `imgcluster.estimator` imports `sklearn.base`, which
imports scipy.stats and pandas); 3.4 s building the model (importing timm, with torchvision and
torch._dynamo, took 4.0 s under `-X importtime`); 3.4-6 s training the head again; and 2-3.5 s
after its last line, tearing the interpreter down. Now:

- the backbone's identity, and so its cache folder, is read from the record the building run left
  in the cache's `config.json` (`imgcluster/identity.py`): the model is built only when an image
  must be embedded;
- the head saved for the same training config, images and features is loaded, not trained again
  (`folder._trained_before`), and scikit-learn is imported only to train (`head_config.py` checks
  the training options without it);
- cluster names read ImageNet's class names from timm's tables as files, without importing timm;
- loading a head no longer imports sympy and torch._dynamo (seconds): the centres' random start is
  only a shape on the meta device the checkpoint's shapes are checked on;
- `--model auto` looks for the hub cache's folder before importing the hub's HTTP client;
- the CLI calls `gc.freeze()` as the process ends: the teardown went from 2.1 s to 0.4 s after the
  last atexit handler (one pair, load 11). Freezing after the imports as well saved about 6 % of a
  cached run's CPU time (user 3.08, 3.05, 3.17 s against 2.95, 2.85, 2.85 s, three interleaved
  pairs at load 13): not adopted, since the library would have to freeze its caller's process.

A cached rerun now imports torch, numpy, PIL, safetensors and the CLI's typer, rich and pydantic;
not timm, torchvision, scikit-learn, scipy, pandas, FAISS, sympy or torch._dynamo
(`tests/test_cli.py::test_a_cached_rerun_imports_neither_timm_nor_scikit_learn_nor_torch_compiler`).

The cold run's largest RSS is above 1 GB (its tree PSS is not): the main process holds 753 MB once
the model is built and peaks at 1,098 MB while embedding batches of 16 (792 MB after). On 500
sample_data images, `imgcluster embed --embed-batch-size 8` peaked at 1,003 and 1,040 MB against
1,151 and 1,155 MB with 16, at the same CPU time (12.97 and 12.84 s against 12.92 and 12.58 s; two
interleaved pairs, load 17-20); on the 125 images 977 against 1,164 MB. That default belongs to
`embedding.default_batch_size` and was not changed here."""


def measured(argv: list[str], cwd: Path, code: Path = ROOT) -> tuple[float, float, float]:
    """Wall seconds, peak PSS of the process tree and largest process RSS (MB) of one run of the
    imgcluster in ``code``."""
    from bench_peers import run_measured

    env = {**os.environ, "PYTHONPATH": str(code)}
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
    baseline = [*assign, "--cache-dir", str(root / "cache-baseline"), "--out", str(root / "baseline.csv")]
    if BASELINE is not None:
        shutil.copytree(root / "cold0", root / "cache-baseline")
        measured(baseline, root, BASELINE)  # its own head, so that its reruns are as cached as they can be
    groups = []
    for _ in range(REPEATS):
        group = [measured(torch_only, root), measured(cached, root)]
        if BASELINE is not None:
            group.append(measured(baseline, root, BASELINE))
        groups.append(group)
    reference = statistics.median(g[0][0] for g in groups)
    cases = [
        ("`python -c 'import torch'` (reference)", [g[0] for g in groups]),
        ("`imgcluster assign sample_data` fully cached (rerun)", [g[1] for g in groups]),
        ("`imgcluster assign sample_data` cold (fresh cache)", cold_runs),
    ]
    if BASELINE is not None:
        cases.insert(2, (f"the same rerun with the imgcluster of `{BASELINE.name}` (before)", [g[2] for g in groups]))
    rows = []
    for name, runs in cases:
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
        f"2-core x86_64 CPU, no GPU, shared with other jobs: load average {rerun_load[0]:.1f} before, {load_after[0]:.1f} after. "
        f"The rerun and `import torch` ran in turn ({REPEATS} rounds"
        + (f", each with the rerun of `BENCH_BASELINE={BASELINE.name}` too" if BASELINE is not None else "")
        + "), so the ratio of their medians is the number to compare; the cold run twice. Memory: the peak "
        "over the run of the process tree's summed PSS, and the largest single process's RSS (`ru_maxrss`).",
        "",
        "| command | runs | median s | fastest s | median / `import torch` | tree peak PSS MB | largest RSS MB |",
        "|---|---|---|---|---|---|---|",
        *reruns,
        "",
        NOTES,
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
