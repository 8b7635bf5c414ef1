"""Ctrl-C and SIGTERM unwind the same way, so a stopped run always says what it kept.

SIGTERM (sent by ``kill``, schedulers and container runtimes) would otherwise end the process
on the spot, skipping the ``finally`` blocks that flush finished work. Turning it into an
:class:`Interrupted` (a :class:`KeyboardInterrupt`) makes both signals take the path Ctrl-C
takes; the CLI then prints one line and ends by that same signal (the shell reports 130 or 143).
SIGKILL cannot be caught: atomic writes make it lose at most the unflushed block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A stop request that carries the signal and, once known, what was kept."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @classmethod
    def wrap(cls, exc: KeyboardInterrupt, message: str) -> Interrupted:
        """Same signal as ``exc``, with a message saying what was kept."""
        return cls(message, getattr(exc, "signum", signal.SIGINT))


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


STOPPED_STARTING = "interrupted while starting; nothing was done"  # a stop before any command's work began

_stopped_by: int | None = None  # the signal a handled interrupt came from, for exit_by_signal


def note_stop(exc: KeyboardInterrupt) -> int:
    """Remember which signal stopped the run (SIGINT for Ctrl-C, SIGTERM) and return its number."""
    global _stopped_by
    _stopped_by = int(getattr(exc, "signum", signal.SIGINT))
    return _stopped_by


def exit_by_signal() -> None:
    """End the process by the signal that stopped it, once it has said what it kept.

    A shell running a script stops the script's loop when its child dies of SIGINT, but carries on
    when the child exits 130 (it takes that as a child that handled Ctrl-C itself; see
    https://www.cons.org/cracauer/sigint.html). CPython ends the same way after an uncaught
    KeyboardInterrupt. Does nothing if no interrupt was handled, or off POSIX.
    """
    if _stopped_by is None or os.name != "posix":
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(_stopped_by, signal.SIG_DFL)
    os.kill(os.getpid(), _stopped_by)
