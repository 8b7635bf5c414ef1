"""Where a CLI run's wall and CPU time go, phase by phase (issue 15's breakdown).

Run ``python benchmarks/timeline.py OUT.json -- assign FOLDER --clusters K ...``: the arguments after
``--`` are an ``imgcluster`` command line, run in this process through ``imgcluster.cli.main``. The
library's own progress events (the CLI's ``Printer`` sees every one) split the run into phases;
each event is stamped with the wall clock and the CPU seconds (user, system) of this process and,
apart, of its child processes (decode workers: from ``/proc`` while they live, from
``os.times`` once reaped). ``phases`` turns the stamps into per-phase wall seconds, CPU seconds and
busy cores; ``bench_peers.py --timeline`` runs imgcluster through this script and prints them.

No timing of its own changes what runs: the events are the ones the CLI already receives.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

START_WALL = time.monotonic()
START_TIMES = os.times()
TICK = os.sysconf("SC_CLK_TCK")
_gc = {"seconds": 0.0, "started": 0.0}  # CPU seconds of this process's thread in Python's cyclic collector


def _time_collections(phase: str, info: dict) -> None:
    if phase == "start":
        _gc["started"] = time.thread_time()
    else:
        _gc["seconds"] += time.thread_time() - _gc["started"]


gc.callbacks.append(_time_collections)


@dataclass
class Stamp:
    """One moment: what happened and the clocks then (seconds since the process started)."""

    label: str
    wall: float
    user: float  # this process
    system: float
    child_user: float  # child processes, alive or reaped
    child_system: float
    gc: float = 0.0  # of ``user + system``: Python's cyclic garbage collector


def tree_pids(root: int) -> set[int]:
    """``root`` and its descendants, from each thread's ``children`` file: only the tree's own
    ``/proc`` entries are read, so the cost does not grow with what else runs on the machine."""
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in tree:
                    tree.add(child)
                    frontier.append(child)
    return tree


def _live_children_ticks() -> tuple[int, int]:
    """(utime, stime) clock ticks of this process's live children and their descendants."""
    user = system = 0
    for child in tree_pids(os.getpid()) - {os.getpid()}:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime, field 14 of stat(5), counted after the name
        system += int(fields[12])
    return user, system


def stamp(label: str) -> Stamp:
    times = os.times()
    live_user, live_system = _live_children_ticks()
    return Stamp(
        label,
        time.monotonic() - START_WALL,
        times.user - START_TIMES.user,
        times.system - START_TIMES.system,
        times.children_user + live_user / TICK,
        times.children_system + live_system / TICK,
        _gc["seconds"],
    )


# ---- phases --------------------------------------------------------------------------------------
PHASE_ORDER = (
    "start-up (CLI import)", "imports, scan and cache look-up", "model build", "first batch decode", "embed: forward passes",
    "embed: between batches", "embed: cache writes", "after embedding", "kNN", "training", "assignment",
    "naming pass", "CSV and report", "exit",
)  # fmt: skip


def phase_after(label: str, current: str) -> str:
    """The phase that begins with the event ``label`` (``stage/kind/message``), given the current one."""
    if label == "imports done":
        return "imports, scan and cache look-up"
    if label == "exit":
        return "exit"
    stage, kind, message = label.split("/", 2)
    if stage == "model" and message.startswith("loading the model"):
        return "model build"
    if stage == "model" and message == "model ready":
        return "first batch decode"
    if stage == "embed":
        if message == "batch decoded":
            return "embed: forward passes"
        if message == "saving features":
            return "embed: cache writes"
        if message == "features saved" or kind == "advance":
            return "embed: between batches"
        return current
    if stage == "train" and message.startswith("finding the"):
        return "kNN"
    if stage == "train" and message.startswith("training "):
        return "training"
    if stage == "train" and message.startswith("trained "):
        return "assignment"
    if stage == "assign" and ("shown inverted" in message or "extra pass" in message):
        return "naming pass"
    if stage == "write":
        return "CSV and report"
    return current


@dataclass
class Phase:
    name: str
    wall: float = 0.0
    user: float = 0.0
    system: float = 0.0
    child_user: float = 0.0
    child_system: float = 0.0
    gc: float = 0.0

    @property
    def cpu(self) -> float:
        return self.user + self.system + self.child_user + self.child_system

    @property
    def cores(self) -> float:
        return self.cpu / self.wall if self.wall > 0 else 0.0


def phases(stamps: list[Stamp]) -> list[Phase]:
    """Wall and CPU seconds between consecutive stamps, summed by the phase each interval belongs to."""
    totals: dict[str, Phase] = {name: Phase(name) for name in PHASE_ORDER}
    current = "start-up (CLI import)"
    previous = Stamp("start", 0.0, 0.0, 0.0, 0.0, 0.0)
    for s in stamps:
        # an interval ending at a stage's later event belongs to that stage when the
        # embed bookkeeping events fall after the embed loop (the last advance)
        if s.label.split("/", 1)[0] not in ("embed", "model") and current.startswith("embed"):
            current = "after embedding"
        p = totals[current]
        p.wall += s.wall - previous.wall
        p.user += s.user - previous.user
        p.system += s.system - previous.system
        p.child_user += s.child_user - previous.child_user
        p.child_system += s.child_system - previous.child_system
        p.gc += s.gc - previous.gc
        current = phase_after(s.label, current)
        previous = s
    return [p for p in totals.values() if p.wall > 0 or p.cpu > 0]


def table(rows: list[Phase]) -> str:
    """A markdown table of the phases and their total."""
    fields = ("wall", "user", "system", "child_user", "child_system", "gc")
    total = Phase("total", *(sum(getattr(p, f) for p in rows) for f in fields))
    lines = [
        "| phase | wall s | CPU s | main user s | main system s | of which Python's GC s | workers' CPU s | busy cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in [*rows, total]:
        name = f"**{p.name}**" if p is total else p.name
        cells = (p.wall, p.cpu, p.user, p.system, p.gc, p.child_user + p.child_system)
        lines.append(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {p.cores:.2f} |")
    return "\n".join(lines) + "\n"


def load(path: Path) -> list[Stamp]:
    return [Stamp(**s) for s in json.loads(path.read_text())]


# ---- running the CLI under the clocks ----------------------------------------------------------
def run(out: Path, argv: list[str]) -> None:
    stamps: list[Stamp] = []
    import imgcluster.cli as cli

    stamps.append(stamp("imports done"))
    shown = cli.Printer.__call__

    def recorded(self: cli.Printer, event: cli.Event) -> None:
        stamps.append(stamp(f"{event.stage}/{event.kind}/{event.message}"))
        shown(self, event)

    cli.Printer.__call__ = recorded  # type: ignore[method-assign]
    sys.argv = ["imgcluster", *argv]
    code: int | str | None = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        stamps.append(stamp("exit"))
        out.write_text(json.dumps([asdict(s) for s in stamps]))
    try:
        from imgcluster.__main__ import leave
    except ImportError:  # a baseline checkout from before it: it ended the ordinary way
        sys.exit(code)
    leave(code)  # as the imgcluster command ends


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit("usage: timeline.py OUT.json -- IMGCLUSTER-ARGS ...")
    run(Path(sys.argv[1]), sys.argv[3:])
