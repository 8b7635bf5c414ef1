"""`make bench-peers`: imgcluster against fastdup 2.54 on the same folders, in the same run.

Each tool runs as a subprocess from a cold start (a fresh cache or work folder), one after the
other on each folder (ABBA order with ``--repeats 2``), so load from other processes hits both
alike. Measured for the whole process tree:

- wall seconds, and CPU seconds split into user and system (``os.wait4``: the process and every
  child it waited for, which covers imgcluster's decode workers and fastdup's threads);
- peak memory: the largest sum of PSS (proportional set size, so pages shared between a process
  and its forked workers count once) over the tree, from ``/proc`` (``PeakPss``: resident memory
  looked at every 50 ms, PSS read when it may have risen), and the largest single process's RSS
  (``ru_maxrss``); the CPU seconds the sampling took beside each run are reported with it;
- images/s: images over wall time, start-up and clustering included;
- ACC / NMI / ARI of each tool's clusters against the folder's class sub-folders, both through
  ``imgcluster.scoring.score``.

What runs: ``python -m imgcluster assign FOLDER --model efficientnet-lite0 --clusters K`` with a
fresh ``--cache-dir`` and otherwise default options (``--runtime auto``: since round 23 the model in int8 in
ONNX Runtime on the CPU; ``$IMGCLUSTER_RUNTIME`` is unset for the run; tools ``imgcluster-torch``,
``imgcluster-onnx`` and ``imgcluster-int8`` add ``--runtime torch``, ``onnx``, ``onnx-int8``), and fastdup's own k-means entry point,
``fastdup.run_kmeans(input_dir=FOLDER, work_dir=FRESH, num_clusters=K)`` (its ONNX model on the
CPU, default threads), each image taken to the closest of the centroids it lists in
``kmeans_assignments.csv``. fastdup lives in its own virtualenv under ``benchmarks/data/``,
created on first use (pip from PyPI). imgcluster's exported models live in
``benchmarks/data/model-cache`` (``$IMGCLUSTER_MODEL_CACHE``) and are made before the timed runs,
as fastdup's model comes with its package (the seconds that took are printed on stderr).

Writes its table into the ``peers`` section of ``benchmarks/results_peers.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import timeline  # noqa: E402
from common import DATA, MODEL, write_section  # noqa: E402
from datasets import FASHION_CLASSES, fashion_mnist_test, write_folder  # noqa: E402
from timeline import tree_pids  # noqa: E402

from imgcluster.scoring import score  # noqa: E402

RESULTS = HERE / "results_peers.md"
FASTDUP_VERSION = "2.54"
FASTDUP_VENV = DATA / "fastdup-venv"
RUNS = DATA / "peers-runs"
MODEL_CACHE = DATA / "model-cache"
IMGCLUSTER_TOOLS = ("imgcluster", "imgcluster-torch", "imgcluster-onnx", "imgcluster-int8", "baseline")
RUNTIME_OF = {"imgcluster-torch": "torch", "imgcluster-onnx": "onnx", "imgcluster-int8": "onnx-int8"}  # the tools that add --runtime
FASTDUP_SCRIPT = (
    "import sys, fastdup\nsys.exit(fastdup.run_kmeans(input_dir=sys.argv[1], work_dir=sys.argv[2], num_clusters=int(sys.argv[3])) or 0)\n"
)


@dataclass
class Folder:
    name: str
    path: Path
    classes: int
    images: int


@dataclass
class Measured:
    tool: str
    folder: str
    images: int
    assigned: int
    wall: float
    user: float
    system: float
    tree_pss_mb: float
    max_rss_mb: float
    load: tuple[float, float]
    scores: dict[str, float]
    phases: list[timeline.Phase] | None = None  # imgcluster's run phase by phase (``--timeline``)
    sampler_cpu: float = 0.0  # CPU seconds the memory sampler took beside the run


def fastdup_python() -> Path:
    """fastdup's interpreter, in a virtualenv of its own so its pins never touch imgcluster's."""
    python = FASTDUP_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {FASTDUP_VENV} with fastdup=={FASTDUP_VERSION}", file=sys.stderr, flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(FASTDUP_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"fastdup=={FASTDUP_VERSION}"], check=True)
    return python


def fashion_folder(n: int) -> Folder:
    images, labels = fashion_mnist_test()
    path = write_folder(images[:n], labels[:n], FASHION_CLASSES, DATA / "peers" / f"fashion-mnist-{n}")
    return Folder(f"Fashion-MNIST test, first {n:,}", path, 10, n)


def sample_folder() -> Folder:
    path = HERE.parent / "sample_data"
    return Folder("sample_data", path, 5, sum(1 for p in path.rglob("*.png")))


def pss_kb(pids: set[int]) -> int:
    """Sum of the processes' PSS in kB; processes that end meanwhile count 0."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def rss_pages(pids: set[int]) -> int:
    """Sum of the processes' resident pages, from ``statm``: a counter the kernel keeps, so reading it costs nothing."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total


SAMPLE_EVERY = 0.05  # seconds between two looks at the tree (--sample-every)
PSS_EVERY = 1.0  # seconds between two PSS readings while resident memory stays below its high-water mark
RSS_RISE = 0.01  # resident memory this much over the last PSS reading's takes a PSS reading at once


class PeakPss:
    """The tree's peak PSS, read only when it can have risen.

    PSS comes from ``smaps_rollup``, which walks every page of the process: 21 ms of CPU for one
    read of imgcluster's 1 GB process on the loaded 2-core machine. Read every 50 ms, as before,
    the sampler took 43-47 CPU seconds beside one cold ``assign`` of 10,000 images (more than a
    third of imgcluster's own), from the same two cores it measured. Resident memory (``statm``) is
    free to read and bounds PSS from above, so PSS is read when the tree's resident memory rises
    1 % over what it was at the last reading, when a process joins or leaves, and otherwise once a
    second. The same sampler runs beside every tool.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self.pids: set[int] = set()
        self.rss_then = 0
        self.read_at = -math.inf

    def look(self) -> None:
        pids = tree_pids(self.root)
        rss = rss_pages(pids)
        now = time.monotonic()
        if pids != self.pids or rss > self.rss_then * (1 + RSS_RISE) or now - self.read_at >= PSS_EVERY:
            self.peak = max(self.peak, pss_kb(pids))
            self.pids, self.rss_then, self.read_at = pids, rss, now


def run_measured(
    command: list[str], env: dict[str, str], log: Path, cwd: Path, every: float = SAMPLE_EVERY
) -> tuple[float, resource.struct_rusage, int, float]:
    """Run ``command``; wall seconds, rusage of the tree, peak tree PSS in kB (0 with ``every`` 0: not
    sampled) and the CPU seconds the sampling thread took, which the measured tree did not get."""
    sampler_cpu = 0.0
    done = threading.Event()
    start = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = PeakPss(process.pid)

        def sample() -> None:
            nonlocal sampler_cpu
            begun = time.thread_time()
            while not done.wait(every):
                peak.look()
            sampler_cpu = time.thread_time() - begun

        sampler = threading.Thread(target=sample, daemon=True)
        if every > 0:
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        if every > 0:
            sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed with {process.returncode}; see {log}")
    return wall, usage, peak.peak, sampler_cpu


def export_model(runtime: str | None = "onnx") -> float:
    """Export (and for onnx-int8 quantise) the benchmark's model into ``MODEL_CACHE`` (a no-op once there); returns the seconds.
    ``runtime`` None: what the default (``auto``) runs, so the default's first run is timed as the others' are."""
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        folder = Path(tmp, "one")
        folder.mkdir()
        shutil.copy(next(iter(sorted((HERE.parent / "sample_data").rglob("*.png")))), folder)
        env = dict(os.environ, IMGCLUSTER_MODEL_CACHE=str(MODEL_CACHE), PYTHONPATH=str(HERE.parent))
        env.pop("IMGCLUSTER_RUNTIME", None)
        asked = ["--runtime", runtime] if runtime else []
        command = [sys.executable, "-m", "imgcluster", "embed", str(folder), "--model", MODEL, *asked, "--quiet"]
        start = time.perf_counter()
        subprocess.run(command, env=env, cwd=tmp, check=True)
        return time.perf_counter() - start


def labels_of(rels: list[str]) -> np.ndarray:
    return np.array([rel.split("/", 1)[0] for rel in rels])


def imgcluster_clusters(csv_path: Path) -> tuple[list[str], np.ndarray]:
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["path"] for r in rows], np.array([int(r["cluster"]) for r in rows])


def fastdup_clusters(work: Path, folder: Path) -> tuple[list[str], np.ndarray]:
    """Each image's closest centroid; fastdup lists ``nearest_neighbors_k`` (2) rows per image."""
    best: dict[str, tuple[float, int]] = {}
    with (work / "kmeans_assignments.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            rel = Path(row["filename"]).resolve().relative_to(folder.resolve()).as_posix()
            distance = float(row["distance"])
            if rel not in best or distance < best[rel][0]:
                best[rel] = (distance, int(row["cluster"]))
    rels = sorted(best)
    return rels, np.array([best[r][1] for r in rels])


def run_tool(
    tool: str, folder: Folder, fastdup: Path | None, baseline: Path | None = None, timed: bool = True, every: float = SAMPLE_EVERY,
    baseline_runtime: str | None = None,
) -> Measured:  # fmt: skip
    """One cold run; tool ``baseline`` is imgcluster imported from the checkout ``baseline`` (with ``--runtime
    baseline_runtime`` when given); ``timed``:
    imgcluster runs under ``timeline.py``, which stamps each of its progress events with the clocks."""
    RUNS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{tool}-", dir=RUNS))
    env = dict(os.environ, SENTRY_OPT_OUT="1", PYTHONUNBUFFERED="1", IMGCLUSTER_MODEL_CACHE=str(MODEL_CACHE))
    env.pop("IMGCLUSTER_RUNTIME", None)  # tool imgcluster is what a user who passes no runtime gets
    # `python -m` puts the current folder first on sys.path, so each run starts in its empty work
    # folder and imports imgcluster from PYTHONPATH: this checkout, or the baseline's
    env["PYTHONPATH"] = str(baseline if tool == "baseline" and baseline else HERE.parent)
    if tool in IMGCLUSTER_TOOLS:
        out = work / "clusters.csv"
        runner = [str(HERE / "timeline.py"), str(work / "timeline.json"), "--"] if timed else ["-m", "imgcluster"]
        command = [
            sys.executable, *runner, "assign", str(folder.path), "--model", MODEL,
            "--clusters", str(folder.classes), "--cache-dir", str(work / "cache"), "--out", str(out), "--quiet",
        ]  # fmt: skip
        if tool in RUNTIME_OF:
            command += ["--runtime", RUNTIME_OF[tool]]
        elif tool == "baseline" and baseline_runtime:
            command += ["--runtime", baseline_runtime]
    else:
        assert fastdup is not None
        command = [str(fastdup), "-c", FASTDUP_SCRIPT, str(folder.path), str(work / "fastdup"), str(folder.classes)]
    load_before = os.getloadavg()[0]
    wall, usage, peak, sampler_cpu = run_measured(command, env, work.with_suffix(".log"), work, every)
    load_after = os.getloadavg()[0]
    rels, clusters = fastdup_clusters(work / "fastdup", folder.path) if tool == "fastdup" else imgcluster_clusters(out)
    stamps = work / "timeline.json"
    phases = timeline.phases(timeline.load(stamps)) if stamps.exists() else None
    shutil.rmtree(work)
    return Measured(
        tool=f"imgcluster {baseline.name}{f' {baseline_runtime}' if baseline_runtime else ''}" if tool == "baseline" and baseline else tool,
        folder=folder.name,
        images=folder.images,
        assigned=len(rels),
        wall=wall,
        user=usage.ru_utime,
        system=usage.ru_stime,
        tree_pss_mb=peak / 1024,
        max_rss_mb=usage.ru_maxrss / 1024,
        load=(load_before, load_after),
        scores=score(labels_of(rels), clusters),
        phases=phases,
        sampler_cpu=sampler_cpu,
    )


def table(results: list[Measured]) -> str:
    head = (
        "| folder | tool | images/s | wall s | CPU s | user s | system s | system % | tree peak PSS MB | "
        "largest process RSS MB | ACC | NMI | ARI | images scored | load avg before → after | sampler CPU s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        cpu = r.user + r.system
        rows.append(
            f"| {r.folder} | {r.tool} | {r.images / r.wall:.1f} | {r.wall:.1f} | {cpu:.1f} | {r.user:.1f} | {r.system:.1f} | "
            f"{100 * r.system / cpu:.1f} | {r.tree_pss_mb:.0f} | {r.max_rss_mb:.0f} | {r.scores['acc']:.3f} | {r.scores['nmi']:.3f} | "
            f"{r.scores['ari']:.3f} | {r.assigned:,} | {r.load[0]:.1f} → {r.load[1]:.1f} | {r.sampler_cpu:.1f} |"
        )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000", help="Fashion-MNIST test images per folder, comma-separated ('' for none)")
    parser.add_argument("--no-sample-data", action="store_true", help="leave out sample_data (125 images)")
    parser.add_argument("--tools", default="imgcluster,fastdup", help=f"comma-separated: {', '.join(IMGCLUSTER_TOOLS)}, fastdup")
    parser.add_argument("--baseline", type=Path, help="an imgcluster checkout to run as tool 'baseline' (before/after)")
    parser.add_argument("--baseline-runtime", choices=sorted(RUNTIME_OF.values()), help="the baseline's --runtime (default: its own)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool and folder, alternating A B B A ...")
    parser.add_argument("--section", default="peers", help="section of results_peers.md to write")
    parser.add_argument("--note", default="", help="a line written above the table (what else ran on the machine)")
    parser.add_argument("--no-timeline", action="store_true", help="run imgcluster as `python -m imgcluster`, without the phase breakdown")
    parser.add_argument(
        "--sample-every", type=float, default=SAMPLE_EVERY, help="seconds between looks at the tree's memory (0: no memory sampling)"
    )
    args = parser.parse_args()

    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - {*IMGCLUSTER_TOOLS, "fastdup"}
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "baseline" in tools and (args.baseline is None or not (args.baseline / "imgcluster").is_dir()):
        parser.error("tool 'baseline' needs --baseline DIR, a checkout with an imgcluster/ folder")
    fastdup = fastdup_python() if "fastdup" in tools else None
    for tool in tools:
        if tool in RUNTIME_OF or tool == "imgcluster":
            seconds = export_model(RUNTIME_OF.get(tool))
            print(f"imgcluster's {RUNTIME_OF.get(tool, 'default')} model ready in {seconds:.1f} s", file=sys.stderr, flush=True)
    folders = ([] if args.no_sample_data else [sample_folder()]) + [fashion_folder(int(n)) for n in args.sizes.split(",") if n]
    results: list[Measured] = []
    for folder in folders:
        for repeat in range(args.repeats):
            for tool in tools if repeat % 2 == 0 else tools[::-1]:
                print(f"{tool} on {folder.name} (run {repeat + 1})", file=sys.stderr, flush=True)
                timed, every = not args.no_timeline, args.sample_every
                results.append(run_tool(tool, folder, fastdup, args.baseline, timed, every, args.baseline_runtime))
                print(table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                # written after every run, so what ran is kept if a later run is stopped
                write_section(args.section, report(results, [f.name for f in folders], args.note), RESULTS)
    print(report(results, [f.name for f in folders], args.note))


def command_line() -> str:
    """This run's options, the note's text left out (it is printed above the table)."""
    argv = sys.argv[1:]
    if "--note" in argv:
        argv[argv.index("--note") + 1] = "..."
    return shlex.join(argv)


def report(results: list[Measured], order: list[str], note: str) -> str:
    ordered = sorted(results, key=lambda r: (order.index(r.folder), r.tool))
    return (
        "## imgcluster and fastdup side by side (`make bench-peers`)\n\n"
        + (f"{note}\n\n" if note else "")
        + f"Run as `python benchmarks/bench_peers.py {command_line()}`. Each row is one cold run (fresh cache or work "
        f"folder). imgcluster: `assign FOLDER --model {MODEL} --clusters K`, other options default (`--runtime auto`: "
        "int8 in ONNX Runtime on the CPU since round 23, torch before; `imgcluster-torch`, `imgcluster-onnx`, `imgcluster-int8`: "
        "the same with `--runtime torch` / `onnx` / `onnx-int8`; every model exported (and quantised) before the timed runs). fastdup "
        f"{FASTDUP_VERSION}: "
        "`fastdup.run_kmeans(input_dir=FOLDER, work_dir=FRESH, num_clusters=K)`, each image in its closest centroid's cluster. "
        "CPU, user and system seconds cover the whole process tree (`os.wait4`); tree peak PSS is the largest sum of "
        "proportional set sizes over the tree (resident memory looked at every 50 ms, PSS read when it rose 1 % or once a "
        "second: `PeakPss`); sampler CPU s: what that took, in the harness, beside the run; ACC/NMI/ARI by "
        "`imgcluster.scoring.score` for both.\n\n" + table(ordered) + breakdown(ordered)
    )


def breakdown(results: list[Measured]) -> str:
    """Each timed imgcluster run phase by phase: where its wall and CPU seconds went."""
    parts = []
    for r in results:
        if r.phases:
            parts.append(
                f"\n**{r.tool} on {r.folder}**, phase by phase (`benchmarks/timeline.py`: the CLI's own progress events, "
                "stamped with the wall clock and the CPU seconds of the main process and, apart, of its decode workers; "
                "busy cores = CPU s / wall s; the whole tree's load is shared with everything else on the machine):\n\n"
                + timeline.table(r.phases)
            )
    return "".join(parts)


if __name__ == "__main__":
    main()
