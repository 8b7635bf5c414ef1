"""Ctrl-C, SIGTERM and SIGHUP unwind the same way, so a stopped run always keeps what it finished.

SIGTERM (sent by ``kill``, schedulers and container runtimes) and SIGHUP (the terminal closed,
the ssh connection dropped) would otherwise end the process on the spot, skipping the
``finally`` blocks that flush finished work. Turning them into an :class:`Interrupted` (a
:class:`KeyboardInterrupt`) makes them take the path Ctrl-C takes; the CLI then prints one line
and ends by that same signal (the shell reports 130, 143 or 129). After a hangup the terminal is
gone: stdout and stderr on it are pointed at /dev/null, so the writes still ahead (the stop line,
a progress bar's last frame) cannot fail and cut the save short. SIGKILL cannot be caught:
atomic writes make it lose at most the unflushed block.
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


# The signals that stop a run the way Ctrl-C does (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def stops_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, like Ctrl-C does.

    A signal ignored when the run started stays ignored: ``nohup imgcluster ...`` ignores SIGHUP
    so that the run outlives the terminal, and must go on after a logout.
    """

    def handler(signum: int, frame: Any) -> None:
        if signum != signal.SIGTERM:  # SIGHUP: the terminal may be gone
            _leave_hung_up_terminal()
        raise Interrupted("", signum)

    previous: dict[int, Any] = {}
    try:
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals to whoever owns it
        yield
        return
    try:
        yield
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def leave_hangup_to_parent() -> None:
    """In a decode worker: ignore SIGHUP, which a closed terminal sends to every process of the run.

    The main process turns it into a stop that saves finished batches and then ends the workers;
    a worker dying of it first made the stop read as "a decode worker died".
    """
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _leave_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a hung-up terminal.

    A hung-up terminal fails every write with EIO, and ``isatty`` answers False for it while
    ``fstat`` still says it is a character device (as /dev/null is, which is unchanged). A live
    terminal (a ``kill -HUP`` from elsewhere), a file or a pipe is left alone: the stop line
    still reaches it.
    """
    import stat

    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    if stat.S_ISCHR(os.fstat(fd).st_mode) and not os.isatty(fd):
                        os.dup2(devnull, fd)
        finally:
            os.close(devnull)


STOPPED_STARTING = "interrupted while starting; nothing was done"  # a stop before any command's work began

_stopped_by: int | None = None  # the signal a handled interrupt came from, for exit_by_signal


def note_stop(exc: KeyboardInterrupt) -> int:
    """Remember which signal stopped the run (SIGINT for Ctrl-C, SIGTERM, SIGHUP) and return its number."""
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
