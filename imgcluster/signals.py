"""Ctrl-C and SIGTERM unwind the same way, so a stopped run always says what it kept.

SIGTERM (sent by ``kill``, schedulers and container runtimes) would otherwise end the process
on the spot, skipping the ``finally`` blocks that flush finished work. Turning it into an
:class:`Interrupted` (a :class:`KeyboardInterrupt`) makes both signals take the path Ctrl-C
takes; the CLI then prints one line and exits 130 (SIGINT) or 143 (SIGTERM), as shells do.
SIGKILL cannot be caught: atomic writes make it lose at most the unflushed block.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A stop request that carries the signal and, once known, what was kept."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + signal number: what a shell reports for a process stopped by that signal."""
        return 128 + int(self.signum)

    @classmethod
    def wrap(cls, exc: KeyboardInterrupt, message: str) -> Interrupted:
        """Same signal as ``exc``, with a message saying what was kept."""
        return cls(message, getattr(exc, "signum", signal.SIGINT))


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + int(signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Interrupted` in the main thread, like Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted("", signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals to whoever owns it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
