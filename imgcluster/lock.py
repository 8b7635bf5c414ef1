"""Locks: one run at a time writes a cache folder; a head's two files are written and read as a pair.

The cache lock is a POSIX record lock (``fcntl``/``lockf``), not a ``flock``. A ``flock`` belongs
to the open file, which forked decode workers share: a run killed with SIGKILL left its workers
holding the lock, and the next run was refused, naming a dead pid, until they noticed. A record
lock belongs to the process that took it: a fork does not inherit it and the kernel drops it
the moment that process dies, so a lock is never stale. The price is POSIX's rule that closing
*any* descriptor of the file drops the process's lock, so this module is the only code that
opens the lock file, and it never opens it twice in one process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from imgcluster.errors import ImgclusterError, placeholders, render

_BUSY = frozenset({errno.EACCES, errno.EAGAIN})
_READ_ONLY = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
_held: set[tuple[int, int]] = set()  # (device, inode) of cache locks this process holds
_held_guard = threading.Lock()


class _Advised(ImgclusterError):
    """A message and advice naming parameters as ``{placeholders}`` (only the advice: a path in
    the message may hold braces), which the caller renders as it names them (the CLI: flags)."""

    def __init__(self, message: str, advice: str = "") -> None:
        self.message = message
        self.advice = advice
        super().__init__(self.render({}))
        self.parameters = placeholders(advice)

    def render(self, names: Mapping[str, str]) -> str:
        advice = render(self.advice, names)
        return f"{self.message}; {advice}" if advice else self.message


class CacheNotWritable(_Advised):
    """The cache folder cannot be created or its lock file opened for writing."""


class LockBusy(_Advised):
    """Another run holds the cache lock."""


@contextlib.contextmanager
def folder_lock(
    directory: Path, wait_seconds: float = 0.0, on_wait: Callable[[str], None] | None = None, read_only_ok: bool = False
) -> Iterator[bool]:
    """Hold ``directory/lock``; wait up to ``wait_seconds`` for another run, then fail clearly.

    Yields True when the lock is held for writing. With ``read_only_ok``, a cache folder that
    exists but cannot be written (a read-only mount, another user's folder) yields False: it is
    held shared where the lock file can be opened for reading, so no writer changes it while it
    is read. ``on_wait`` hears once, in one line, that this run is waiting and for whom.
    """
    path = directory / "lock"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK | os.X_OK):  # a lock file we may write in a folder we may not
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        fd = _open_once(path, os.O_RDWR | os.O_CREAT)
        exclusive = True
    except OSError as exc:
        if not (read_only_ok and exc.errno in _READ_ONLY and directory.is_dir()):
            raise CacheNotWritable(
                f"cannot create the cache folder {directory}: {exc.strerror or exc}",
                "pass {cache_dir} DIR or set $IMGCLUSTER_CACHE to a writable folder",
            ) from None
        try:
            fd = _open_once(path, os.O_RDONLY)
        except OSError:  # no lock file to share: nobody has written here through this folder
            yield False
            return
        exclusive = False
    key = _key(fd)
    try:
        _acquire(fd, path, directory, exclusive, wait_seconds, on_wait)
        if exclusive:
            with _held_guard:
                _held.add(key)
            with contextlib.suppress(OSError):  # the pid only makes a waiting run's message friendlier; the lock is what counts
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
        yield exclusive
    finally:
        with _held_guard:
            _held.discard(key)
        os.close(fd)  # closing releases the lock


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _open_once(path: Path, flags: int) -> int:
    """Open the lock file, refusing (as busy) one this process already holds: opening and closing
    it again would drop the lock held through the first descriptor."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None:
        with _held_guard:
            if (st.st_dev, st.st_ino) in _held:
                raise LockBusy(f"this process is already using {path.parent}")
    return os.open(path, flags | os.O_CLOEXEC, 0o644)


def _acquire(fd: int, path: Path, directory: Path, exclusive: bool, wait_seconds: float, on_wait: Callable[[str], None] | None) -> None:
    deadline = time.monotonic() + wait_seconds
    waited = False
    while True:
        try:
            fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in _BUSY:
                if exclusive:
                    raise
                return  # a shared lock the file system cannot give: read without it
        holder = _read_holder(path)
        if time.monotonic() >= deadline:
            still = f" is still using {directory} after {wait_seconds:g}s" if wait_seconds > 0 else f" is using {directory}"
            raise LockBusy(f"another imgcluster run{holder}{still}", "wait for it to finish, or pass {lock_timeout} SECONDS to wait longer")
        if not waited and on_wait is not None:
            on_wait(f"another imgcluster run{holder} is using {directory}; waiting up to {wait_seconds:g}s")
        waited = True
        time.sleep(0.2)


def _read_holder(path: Path) -> str:
    """Only called while another process holds the lock, so opening the file here drops nothing."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip())
        return f" (pid {pid})"
    return ""


@contextlib.contextmanager
def pair_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """A ``flock`` on ``directory`` while a head's weights and JSON are written (exclusive) or read
    (shared), so concurrent saves leave one complete pair and a reader never sees half of one.

    Held for a moment and never across a fork, so a ``flock`` serves; a folder that cannot be
    opened or locked (a file system without ``flock``) is used without it.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
