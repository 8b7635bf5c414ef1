"""An exclusive lock on a cache folder so that two runs never write it at once.

``flock`` locks belong to the open file: the kernel drops them when the holder dies, so a lock
left by a killed process is never stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from imgcluster.errors import UserError


@contextlib.contextmanager
def folder_lock(directory: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold ``directory/lock``; wait up to ``wait_seconds`` for another run, then fail clearly."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(path)
                    raise UserError(
                        f"another imgcluster run{holder} is using {directory}; wait for it or use --lock-timeout"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read_holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip())
        return f" (pid {pid})"
    return ""
