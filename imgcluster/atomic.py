"""Atomic file writes: a reader sees the old file or the complete new one, never a torn one.

A write that fails (read-only folder, disk full, quota) removes its temporary file and raises a
one-line :class:`ImgclusterError` naming the file, so no half-written file is ever left as if complete.
A process killed outright (SIGKILL, power loss) can leave a hidden ``.<name>.<random>.tmp``
beside the target; it is never renamed into place, and the cache removes its own on next open.

A symbolic link is followed: its target is replaced and the link stays. A target that exists
and is not a regular file (``/dev/null``, a named pipe, ``/dev/stdout``) is a stream: it is
written in place, since renaming a file over it would destroy it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from imgcluster.errors import ImgclusterError, literal

# Errors from the caller's writes that are about the disk, not the caller's data.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def _temp_prefix(path: Path) -> str:
    """Hidden and short enough: ``.{name}.`` plus mkstemp's suffix must stay under NAME_MAX (255 bytes)."""
    name = path.name
    while len(name.encode("utf-8", "surrogateescape")) > 200:
        name = name[:-1]
    return f".{name}."


def _cannot_write(path: Path, exc: OSError) -> ImgclusterError:
    return ImgclusterError(f"cannot write {literal(path)}: {literal(exc.strerror or exc)}")


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A hidden temporary file in ``path``'s folder (created if needed), as (fd, name).

    mkstemp makes it 0600; it gets the mode the target has, or a new file's usual
    ``0666 & ~umask``, so a CSV renamed into place is as readable as one written directly.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError) as exc:  # a file where a folder of the path should be
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise _cannot_write(path, exc) from None
        raise ImgclusterError(f"cannot write {literal(path)}: {literal(blocker)} is a file, not a folder") from None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    with contextlib.suppress(OSError):
        os.fchmod(fd, mode)
    return fd, tmp


def is_stream(path: Path) -> bool:
    """``path`` (after links) exists and is neither a regular file nor a folder: a device, a pipe."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _follow(path: Path) -> Path:
    """The file a symbolic link names (even a dangling one), so the link itself is kept."""
    if not path.is_symlink():
        return path
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # dangling: the file it names is created
        return Path(os.path.realpath(path))
    except OSError as exc:  # a loop of links names no file at all
        raise _cannot_write(path, exc) from None


@contextlib.contextmanager
def _open_stream(path: Path, mode: str, encoding: str | None, newline: str | None) -> Iterator[IO]:
    binary = "b" in mode
    in_body = False
    try:
        with open(path, mode, encoding=None if binary else encoding, newline=None if binary else newline) as handle:
            in_body = True
            yield handle
            in_body = False
    except OSError as exc:
        if not in_body or exc.errno in _DISK_ERRORS:
            raise _cannot_write(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_open(
    path: Path, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None, durable: bool = True
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``. ``durable`` False skips
    the fsyncs, for a cache whose files cost nothing to lose but would cost a sync each (thumbnails)."""
    path = Path(path)
    if is_stream(path):
        with _open_stream(path, mode, encoding, newline) as handle:
            yield handle
        return
    path = _follow(path)
    fd, tmp = _temp_beside(path)
    in_body = False
    try:
        binary = "b" in mode
        with os.fdopen(fd, mode, encoding=None if binary else encoding, newline=None if binary else newline) as handle:
            in_body = True
            yield handle
            in_body = False
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (not in_body or exc.errno in _DISK_ERRORS):
            raise _cannot_write(path, exc) from None
        raise


@contextlib.contextmanager
def writing_stdout() -> Iterator[None]:
    """Output written to standard output, then flushed: a full disk or a failing device behind it
    is one :class:`ImgclusterError` (it was an unexpected OSError, or a traceback from the help);
    a reader that went away stays a BrokenPipeError, which the CLI ends quietly."""
    check_stdout()
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise stdout_failed(exc) from None


def check_stdout() -> None:
    """Refuse a closed standard output (`>&-`) before the work whose output would vanish there
    (``assign --out -`` said so only after the whole run)."""
    closed = sys.stdout is None  # Python started with descriptor 1 closed
    if not closed:
        try:
            os.fstat(sys.stdout.fileno())
        except io.UnsupportedOperation:  # not a file descriptor (a test's capture): nothing to check
            pass
        except (OSError, ValueError):  # closed since
            closed = True
    if closed:
        raise ImgclusterError("cannot write to standard output: it is closed")


def stdout_failed(exc: OSError) -> ImgclusterError:
    """The one line for a write to standard output that failed (a full disk, a failing device)."""
    return ImgclusterError(f"cannot write to standard output: {exc.strerror or exc}")


def check_writable(path: Path) -> None:
    """Fail now, in one line, if ``path`` cannot be written, rather than after the embedding."""
    path = Path(path)
    if is_stream(path):
        if not os.access(path, os.W_OK):
            raise ImgclusterError(f"cannot write {path}: permission denied")
        return
    fd, tmp = _temp_beside(_follow(path))
    os.close(fd)
    os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable=durable) as handle:
        handle.write(data)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
