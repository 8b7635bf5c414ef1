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

``--memory`` (``make bench-memory``) measures only a cold ``assign`` of sample_data, the imgcluster
of ``BENCH_BASELINE`` and this checkout's in turn: whole CLI runs (``make bench-peers``'s
measurement: CPU seconds, tree peak PSS, largest RSS, ACC) and a timeline of each, memory at every
progress event (``memory_timeline.py``). Writes benchmarks/results_memory.md.
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
    wall, usage, peak_kb, _ = run_measured(argv, env, cwd / "run.log", cwd)
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


MEMORY_OUT = HERE / "results_memory.md"
MEMORY_ROUNDS = int(os.environ.get("BENCH_MEMORY_ROUNDS", "3"))


# What the tables above do not show, measured by hand; the numbers are those of the run committed.
MEMORY_NOTES = """## What the memory was, and what was changed (measured by hand, 2026-11-30 02:10-02:52 UTC, same machine, load 0.6-18)

Before (438eff8) a cold `assign sample_data` peaked at 2,124 MB largest RSS and 1,778 MB tree PSS, far above the
969 / 1,282 MB that `results_peers.md` gives: the pass that names a light-on-black folder's clusters
(`imgcluster/negatives.py`, merged after that measurement) built a second Lite0 and ran it unfolded on batches of
64 with glibc's default allocator settings, so every batch's ~100 MB activations were mapped afresh from the kernel:
+1,250 MB RSS and 10 of the run's 19 CPU seconds (7.5 s of them system time) for 125 images. The timeline above
splits the rest of the main process's RSS as follows (API run, `/proc/self/status` at each event):

| step | RSS MB after it | what it is |
|---|---|---|
| `import torch` (with numpy, PIL, imgcluster) | 512 | torch's libraries: 520 MB RSS, 332 MB PSS (shared pages: RSS only) |
| building the model | 735 | importing timm: torch._dynamo 120, sympy 33, torchvision 14, timm 32; weights ~20 |
| model ready | 780 | batch norm folded into a copy (+20), channels-last |
| embedding, batches of 8 | 931 (peak) | activations: +17 MB per image in the batch (16: +280 MB, 8: +135 MB, 4: +68 MB) |
| after the embedding | 763 | glibc's freed memory handed back (`malloc_trim` as `speed.reuse_freed_memory` exits) |
| kNN + training | 781-811 | faiss 13 MB; scikit-learn is no longer imported (it was +135 MB: scipy.stats 45, pandas 66) |
| names of the clusters (light-on-black folders only) | 975-989 (peak) | a second Lite0 (folded) and its batches of 8 |

Changes, each kept only where it costs no CPU time:

- **The names' classifier pass** runs as the embedding does: folded, channels-last, in `embedding.default_batch_size`'s
  batches, with freed memory reused (`negatives._lite0_probabilities`). Same CSV, names included, as before (compared
  byte for byte on sample_data).
- **CPU batch 8 instead of 16** (`embedding.default_batch_size`, scaled to the same pixels per pass for inputs other
  than 224 px). Why 8 helped: a batch's activations are the main process's largest allocation and grow linearly
  with the batch (17 MB per 224 px image for Lite0), while the CPU time per image does not improve past 8 on this
  CPU (forward passes of a random batch, two interleaved pairs each, load 11-18: 16.5 and 16.7 ms per image with
  16, 15.5 and 16.5 with 8, 17.8 and 18.9 with 4). With `OMP_WAIT_POLICY` unset (torch imported before
  imgcluster) smaller batches cost much more CPU (spinning threads at every layer): imgcluster sets it passive.
- **No scikit-learn on `assign`'s path**: `ClusterHead.fit`'s body is `imgcluster.fitting.fit_head`, which
  `cluster_folder` calls directly; scipy (`choose_k`) is imported only for `--clusters auto`.
- **The backbone is released before training** (checked by a test: weak references to the model and its folded
  copy are dead when training starts); it already was, nothing to change.

Measured and not adopted:

- **Decode workers**: sample_data gets one worker, forked after torch is imported, so it shares the parent's pages:
  with `--workers 0` the tree's PSS peaked at 675 MB against 698 MB with the worker, the main process's RSS at 951
  against 983 MB (decoding in the main process grows its heap instead), 11.94 against 11.88 CPU seconds (one pair,
  load 16). A spawned worker would import torch again (~330 MB PSS of its own); the default stays forked.
- **glibc arenas**: `MALLOC_ARENA_MAX=1` gave 957 MB largest RSS against 975 MB (one pair, load 10-12), 10.35 + 1.40
  against 9.99 + 1.26 CPU seconds: within the spread of single runs, and setting it from the library would change
  its caller's process, so not adopted; the CLI could set it (`mallopt(M_ARENA_MAX)` before torch starts threads).
- **torch's CPU allocator** does not cache (it is glibc's malloc); the embedding already reuses freed memory
  (`speed.reuse_freed_memory`) and trims on exit.
- **torch._dynamo** (120 MB RSS) is imported by any torchvision import and, in training, by the optimiser's first
  step, so avoiding it while embedding would not lower the peak, which is after training.

What is left: the target holds with little room (974-989 MB against 1,000 in every run); the names pass is now the
peak (+165-200 MB over training's 811). Batches of 4 there would take ~70 MB off for ~10 % more CPU time in that pass
(~0.2 s here); the unavoidable floor is torch + timm's imports, ~735 MB RSS (~480 MB PSS).
"""


def memory_main() -> None:
    """Cold ``assign sample_data``: before (``BENCH_BASELINE``) and after, side by side."""
    from bench_peers import run_tool, sample_folder, table
    from memory_timeline import table as timeline_table
    from memory_timeline import timeline

    folder = sample_folder()
    load_before = os.getloadavg()
    runs = []
    for _ in range(MEMORY_ROUNDS):  # A B A B ...: load from other jobs hits both alike
        if BASELINE is not None:
            runs.append(run_tool("baseline", folder, None, BASELINE))
        runs.append(run_tool("imgcluster", folder, None))
        print(table(runs[-2:]), flush=True)
    timelines = []
    for label, code in ([(f"before (`{BASELINE.name}`)", BASELINE)] if BASELINE is not None else []) + [("after (this checkout)", ROOT)]:
        with tempfile.TemporaryDirectory() as tmp:
            points, peak = timeline(folder.path, Path(tmp), code)
        heading = f"### {label}: peak tree PSS {peak:.0f} MB, peak RSS {max(p.hwm_mb for p in points)} MB"
        timelines += [heading, "", *timeline_table(points), ""]
        print(heading, flush=True)
    load_after = os.getloadavg()
    lines = [
        "# Memory of a cold `assign` on sample_data (`make bench-memory`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 2-core x86_64 CPU, no GPU ({platform.platform()}); "
        f"Python {platform.python_version()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, shared with "
        "five other engineers' jobs: compare the rows as ratios measured in turn, not with other files' numbers.",
        "",
        f"## Whole CLI runs ({MEMORY_ROUNDS} rounds, before and after in turn)",
        "",
        "`imgcluster assign sample_data --model efficientnet-lite0 --clusters 5` on a fresh cache, as `make bench-peers` runs it:",
        "CPU seconds of the process tree (`os.wait4`), the largest sum of PSS over the tree (sampled every 50 ms) and the largest",
        "single process's RSS (`ru_maxrss`).",
        "",
        table(runs),
        "",
        "## Timelines (one run each, the library's `cluster_folder` without the CLI)",
        "",
        "RSS and peak RSS so far (`VmRSS`, `VmHWM`) of the main process and its CPU seconds at each progress event (every",
        "fourth batch of the embedding); the tree's PSS (decode worker included) is the largest sampled since the previous event.",
        "",
        *timelines,
        MEMORY_NOTES,
    ]
    MEMORY_OUT.write_text("\n".join(lines))
    print(f"wrote {MEMORY_OUT}")


def main() -> None:
    if "--memory" in sys.argv[1:]:
        memory_main()
        return
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
