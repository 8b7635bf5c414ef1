"""``python -m imgcluster``, and the ``imgcluster`` command's entry point."""

from __future__ import annotations

import signal
import sys


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
    run()


if __name__ == "__main__":
    main()
