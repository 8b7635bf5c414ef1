"""An exclusive lock on a cache folder so that two runs never write it at once.

``flock`` locks belong to the open file: the kernel drops them when the holder dies, so a lock
left by a killed process is never stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from imgcluster.errors import ImgclusterError


@contextlib.contextmanager
def folder_lock(directory: Path, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``directory/lock``; wait up to ``wait_seconds`` for another run, then fail clearly.

    ``on_wait`` hears once, in one line, that this run is waiting and for whom.
    """
    path = directory / "lock"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ImgclusterError(
            f"cannot create the cache folder {directory}: {exc.strerror or exc}; "
            "pass {cache_dir} DIR or set $IMGCLUSTER_CACHE to a writable folder"
        ) from None
    try:
        deadline = time.monotonic() + wait_seconds
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(path)
                if time.monotonic() >= deadline:
                    still = f" is still using {directory} after {wait_seconds:g}s" if wait_seconds > 0 else f" is using {directory}"
                    raise ImgclusterError(
                        f"another imgcluster run{holder}{still}; wait for it to finish, or pass {{lock_timeout}} SECONDS to wait longer"
                    ) from None
                if not waited and on_wait is not None:
                    on_wait(f"another imgcluster run{holder} is using {directory}; waiting up to {wait_seconds:g}s")
                waited = True
                time.sleep(0.2)
        with contextlib.suppress(OSError):  # the pid only makes a waiting run's message friendlier; the flock is what counts
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
