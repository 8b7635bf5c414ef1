"""Everything the CLI shows on stderr: messages, warnings and progress bars."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

# Characters that would break a message's one line or drive the terminal: C0 and C1 controls
# (newline, ESC, ...), the Unicode line and paragraph separators and the bidirectional overrides.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def one_line(message: str) -> str:
    """``message`` with each control character shown as its escape (``\\n``, ``\\x1b``).

    Messages quote file names, and a name may hold a newline or an escape sequence: printed as
    it is, one error became two lines, and a name could recolour the terminal or set its title.
    """
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], message)


class UI:
    """Progress bars only on an interactive terminal; ``quiet`` keeps warnings and errors alone."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        # No stderr at all (`2>&-`, some daemons): rich writes nowhere, and the run goes on; asking
        # whether it was a terminal ended every command with exit code 1 before its work.
        self.interactive = sys.stderr is not None and sys.stderr.isatty() and not quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(one_line(message), markup=False)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {one_line(message)}", markup=False, style="yellow")

    def error(self, message: str) -> None:
        self.console.print(f"error: {one_line(message)}", markup=False, style="bold red")

    @contextmanager
    def progress(self, description: str, unit: str = "images") -> Iterator[ProgressTask]:
        """A bar that appears once :meth:`ProgressTask.start` gives its total; silent when not a TTY."""
        if not self.interactive:
            yield ProgressTask(None, description)
            return
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            EtaColumn(),
            TextColumn("{task.fields[status]}"),
        ]
        with Progress(*columns, console=self.console, transient=True) as progress:
            yield ProgressTask(progress, description)


class ProgressTask:
    def __init__(self, progress: Progress | None, description: str) -> None:
        self._progress = progress
        self._description = description
        self._task: TaskID | None = None

    def start(self, total: int) -> None:
        if self._progress is not None and total > 0:
            self._task = self._progress.add_task(self._description, total=total, status="")

    def update(self, done: int, status: str = "") -> None:
        """Show ``done`` steps of the total finished."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, status=status)


def rate(task: Task) -> float | None:
    """Steps per second since the bar started, from the first update on.

    rich's own ``task.speed`` needs several updates inside a short window, so a stage that
    advances a few slow batches (large photos on a CPU) showed no rate and no ETA at all.
    """
    elapsed = task.elapsed
    if not task.completed or not elapsed:
        return None
    return task.completed / elapsed


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = rate(task)
        return Text(f"{speed:6.1f}/s" if speed else "     -/s")


class EtaColumn(ProgressColumn):
    """Time left at the average rate so far (:func:`rate`)."""

    def render(self, task: Task) -> Text:
        speed = rate(task)
        if not speed or task.total is None:
            return Text("-:--:--")
        left = int(max(0.0, task.total - task.completed) / speed + 0.5)
        return Text(f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
