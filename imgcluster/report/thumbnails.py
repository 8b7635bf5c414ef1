"""Thumbnails for the report: made once, kept in a disposable cache keyed by the file's size and mtime."""

from __future__ import annotations

import contextlib
import hashlib
import io
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from imgcluster.errors import ImgclusterError
from imgcluster.load import DecodeTimeout, ImageDecodeError, decode_timeout, load_rgb, time_limit

THUMB_PX = 112  # longest side of a thumbnail
THUMB_VERSION = "2"  # bump to invalidate cached thumbnails (2: alpha-only pictures shown on black)


@dataclass
class Thumb:
    data: bytes | None  # encoded image, or None for a placeholder
    mime: str = ""
    problem: str = ""  # when ``data`` is None: a key of PROBLEMS


# What a placeholder says in the page, by ``Thumb.problem``.
PROBLEMS = {"missing": "file missing", "unreadable": "unreadable", "refused": "outside the folder"}


class ThumbCache:
    """Thumbnails made once and kept as files keyed by (path, size, mtime, thumbnail size).

    The files are a disposable cache: written by rename (never torn) but not fsynced, which would
    cost more than remaking one. Without a writable ``directory`` they are made in memory only.
    """

    def __init__(self, directory: Path | None, px: int = THUMB_PX) -> None:
        self.px = px
        self.webp = features.check("webp")
        self.suffix, self.mime = (".webp", "image/webp") if self.webp else (".jpg", "image/jpeg")
        self.directory = directory
        self.write_problem = ""
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.directory, self.write_problem = None, f"cannot create thumbnail cache {directory}: {exc}"

    def get(self, path: Path, timeout: float = 0.0) -> Thumb:
        """The thumbnail of ``path``, made under the decode time limit (``timeout`` seconds, 0 for none).

        As when embedding, only regular files are opened (a named pipe would block forever) and the
        limit is a SIGALRM timer, so it holds in the main thread only: call this from there.
        """
        try:
            st = path.stat()
        except FileNotFoundError:
            return Thumb(None, problem="missing")
        except OSError:
            return Thumb(None, problem="unreadable")
        if not stat.S_ISREG(st.st_mode):
            return Thumb(None, problem="unreadable")
        key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{self.px}\0{self.suffix}\0{THUMB_VERSION}"
        cached = None if self.directory is None else self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + self.suffix)
        if cached is not None:
            with contextlib.suppress(OSError):
                data = cached.read_bytes()
                if data:
                    return Thumb(data, self.mime)
        try:
            with time_limit(timeout):  # also ends an open() that blocks: a pipe swapped in after the check above
                data = self._make(path)
        except DecodeTimeout:
            return Thumb(None, problem="unreadable")
        except ImageDecodeError as exc:
            return Thumb(None, problem="missing" if "disappeared" in str(exc) else "unreadable")
        if cached is not None:
            self._store(cached, data)
        return Thumb(data, self.mime)

    def _make(self, path: Path) -> bytes:
        im = load_rgb(path, draft_size=self.px * 2)
        im.thumbnail((self.px, self.px), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if self.webp:
            im.save(buffer, "WEBP", quality=70, method=4)
        else:
            im.save(buffer, "JPEG", quality=75, optimize=True)
        return buffer.getvalue()

    def _store(self, path: Path, data: bytes) -> None:
        """Written as every file is (:mod:`imgcluster.atomic`: the mode a new file gets, not mkstemp's 0600, which kept
        other users of a shared cache from reading them), without the fsyncs: a lost thumbnail is made again."""
        from imgcluster.atomic import atomic_write_bytes

        try:
            atomic_write_bytes(path, data, durable=False)
        except ImgclusterError as exc:
            self.write_problem = self.write_problem or f"thumbnail cache {path.parent} not writable ({exc}); thumbnails not kept"


def make_thumbnails(paths: list[Path], cache: ThumbCache, on_advance: Callable[[int], None]) -> dict[Path, Thumb]:
    """Make (or load) thumbnails one at a time in the calling thread, each under the decode time limit.

    Not in a thread pool: the limit interrupts a decode with SIGALRM, which only the main thread
    receives, and Ctrl-C or SIGTERM must end the report at once, not after the pool's queue.
    """
    timeout = decode_timeout()
    out: dict[Path, Thumb] = {}
    for path in paths:
        out[path] = cache.get(path, timeout)
        on_advance(1)
    return out
