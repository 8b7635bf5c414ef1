"""``python -m imgcluster``, and the ``imgcluster`` command's entry point."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import NoReturn


def main() -> None:
    """Run the CLI. A Ctrl-C while it is still being imported (about a second on a busy machine)
    printed a traceback of importlib's frames; it now ends as a later Ctrl-C does: one line, then
    the process ends by SIGINT, so a calling script stops too."""
    try:
        from imgcluster.cli import main as run
    except KeyboardInterrupt as exc:
        from imgcluster.signals import STOPPED_STARTING, exit_by_signal, note_stop

        sys.stderr.write(f"error: {STOPPED_STARTING}\n")
        note_stop(exc)
        exit_by_signal()
        raise SystemExit(128 + signal.SIGINT) from None  # off POSIX, where no signal ends the process
    try:
        run()
    except SystemExit as exc:
        leave(exc.code)


def leave(code: int | str | None) -> NoReturn:
    """End the process as ``SystemExit(code)`` would, without tearing the interpreter down.

    The run has written and said everything; what remains is Python finalising every module and
    torch's own exit. With torch and timm imported that took 1.2 CPU s and touched 127 MB more
    memory than the run had used: the largest RSS of a cold int8 ``assign`` of sample_data came at
    exit (``benchmarks/results_memory.md``). The ``atexit`` callbacks still run (temporary folders,
    multiprocessing, logging), and the standard streams are flushed; if that fails, the process ends
    the ordinary way, so a closed pipe is reported as before.
    """
    getattr(threading, "_shutdown", lambda: None)()  # what finalising does first: wait for the threads still running
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - Python's own exit reports it, with its own status
        raise SystemExit(code) from None
    if code is None or isinstance(code, int):
        os._exit(code or 0)
    sys.stderr.write(f"{code}\n")  # as Python prints a SystemExit's message
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    main()
