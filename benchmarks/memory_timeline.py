"""Where a cold ``assign`` of sample_data holds its memory: a timeline sampled at its progress events.

Used by ``bench_startup.py --memory`` (``make bench-memory``). A child interpreter runs
``imgcluster.cluster_folder`` on a fresh cache (what ``imgcluster assign`` calls, without the CLI's
typer and rich) and writes one line per progress event: seconds, its own RSS and peak RSS
(``VmRSS``/``VmHWM`` from ``/proc/self/status``) and CPU seconds so far. The parent samples the
process tree's summed PSS every 20 ms beside it and gives each event the largest PSS since the
previous one, so a peak between two events (a forward pass, the names' classifier pass) shows up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import pss_kb, tree_pids

# Runs in the child: argv is (folder, cache_dir). Marks are logged only at their first and
# every fourth batch, to keep the table short; every other event is logged.
DRIVER = r"""
import os, resource, sys, time
T0 = time.monotonic()

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024

def log(label):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss, hwm = status()
    print(f"@@\t{time.monotonic() - T0:.3f}\t{rss}\t{hwm}\t{usage.ru_utime + usage.ru_stime:.2f}\t{label}", file=sys.stderr, flush=True)

log("interpreter started")
import imgcluster
log("import imgcluster")
batches = [0]

def progress(event):
    if event.kind == "mark" and event.message == "batch decoded":
        batches[0] += 1
        if batches[0] % 4 != 1:
            return
        log(f"embed: batch {batches[0]} decoded")
    elif event.kind == "advance" and event.stage == "train" and event.done % 100:
        return
    elif event.kind == "advance":
        log(f"{event.stage}: {event.done}/{event.total} done")
    else:
        log(f"{event.stage}: {event.message or event.kind}"[:100])

imgcluster.cluster_folder(sys.argv[1], cache_dir=sys.argv[2], out=sys.argv[3], model="efficientnet-lite0", n_clusters=5, progress=progress)
log("done")
"""


@dataclass
class Point:
    seconds: float
    rss_mb: int
    hwm_mb: int
    cpu_s: float
    label: str
    tree_pss_mb: float = 0.0  # the largest tree PSS since the previous point


def timeline(folder: Path, work: Path, code: Path) -> tuple[list[Point], float]:
    """The events of one cold run of the imgcluster in ``code`` and the run's peak tree PSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    argv = [sys.executable, "-c", DRIVER, str(folder), str(work / "cache"), str(work / "out.csv")]
    start = time.monotonic()
    process = subprocess.Popen(argv, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append((time.monotonic() - start, pss_kb(tree_pids(process.pid))))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    points, other = [], []
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("@@\t"):
            _, seconds, rss, hwm, cpu, label = line.rstrip("\n").split("\t", 5)
            points.append(Point(float(seconds), int(rss), int(hwm), float(cpu), label))
        else:
            other.append(line)
    process.wait()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"the timeline's run failed ({process.returncode}): {''.join(other)[-2000:]}")
    # the child's clock starts a little after ours (its interpreter's start), so a sample taken
    # up to 50 ms after an event still counts for it; between two close events, the nearest sample
    previous = 0.0
    for point in points:
        window = [kb for t, kb in samples if previous <= t <= point.seconds + 0.05]
        if not window and samples:
            window = [min(samples, key=lambda s: abs(s[0] - point.seconds))[1]]
        point.tree_pss_mb = max(window, default=0) / 1024
        previous = point.seconds
    return points, max((kb for _, kb in samples), default=0) / 1024


def table(points: list[Point]) -> list[str]:
    rows = [
        "| s | event (after) | RSS MB | peak RSS so far MB | tree PSS peak since last event MB | CPU s so far |",
        "|---|---|---|---|---|---|",
    ]
    for p in points:
        label = p.label.replace("|", "\\|")
        rows.append(f"| {p.seconds:.2f} | {label} | {p.rss_mb} | {p.hwm_mb} | {p.tree_pss_mb:.0f} | {p.cpu_s:.2f} |")
    return rows
