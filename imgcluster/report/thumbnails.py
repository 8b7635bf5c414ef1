"""Thumbnails for the report: made once, kept in a disposable cache keyed by the file's size and mtime."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, features

from imgcluster.load import ImageDecodeError, load_rgb

THUMB_PX = 112  # longest side of a thumbnail
THUMB_VERSION = "1"  # bump to invalidate cached thumbnails


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

    def get(self, path: Path) -> Thumb:
        try:
            st = path.stat()
        except FileNotFoundError:
            return Thumb(None, problem="missing")
        except OSError:
            return Thumb(None, problem="unreadable")
        key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{self.px}\0{self.suffix}\0{THUMB_VERSION}"
        cached = None if self.directory is None else self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + self.suffix)
        if cached is not None:
            with contextlib.suppress(OSError):
                data = cached.read_bytes()
                if data:
                    return Thumb(data, self.mime)
        try:
            data = self._make(path)
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
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            self.write_problem = self.write_problem or f"thumbnail cache {path.parent} not writable ({exc}); thumbnails not kept"
            return
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.write_problem = self.write_problem or f"thumbnail cache {path.parent} not writable ({exc}); thumbnails not kept"


def make_thumbnails(paths: list[Path], cache: ThumbCache, on_advance: Callable[[int], None]) -> dict[Path, Thumb]:
    """Make (or load) thumbnails with a few threads: Pillow decodes and resizes without the GIL."""
    out: dict[Path, Thumb] = {}
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for path, thumb in zip(paths, pool.map(cache.get, paths)):
            out[path] = thumb
            on_advance(1)
    return out
