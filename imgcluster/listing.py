"""Find the images under a folder in a stable order."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".webp", ".avif", ".bmp", ".gif", ".tif", ".tiff"})
# Photo formats Pillow cannot decode (HEIC from phones, camera raw, JPEG XL, vector): counted and
# named in a warning rather than passed over in silence.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw", ".svg"}
)
# A folder imgcluster wrote (montages beside a CSV) holds this file, so a later scan that reaches
# it (say, `assign .` run inside the photo folder) does not take its own output for photos.
OUTPUT_MARKER = ".imgcluster-output"


@dataclass(frozen=True)
class ImageFile:
    rel: str  # POSIX path relative to the scanned folder: the identity used in caches and CSVs
    path: Path
    size: int
    mtime_ns: int
    # With size and mtime, what git's index keys a file by: `cp -p`, `rsync -t` and `touch -r`
    # can give a new file the old size and mtime, but not the old ctime or inode.
    ctime_ns: int = 0
    inode: int = 0

    @property
    def stat_key(self) -> tuple[int, int, int, int]:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode)


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def list_images(
    root: Path,
    follow_symlinks: bool = False,
    exclude: tuple[Path, ...] = (),
    unsupported: list[str] | None = None,
    unreachable: list[tuple[str, str]] | None = None,
    *,
    within: Path | None = None,
    links: list[tuple[str, Path]] | None = None,
    outside: list[str] | None = None,
) -> list[ImageFile]:
    """Images under ``root``, sorted by relative path.

    Hidden files and folders (the default cache ``.imgcluster/`` among them), folders imgcluster
    wrote (marked with :data:`OUTPUT_MARKER`) and ``exclude`` are skipped. Files in formats it
    cannot read (:data:`UNSUPPORTED_IMAGE_EXTENSIONS`) are appended to ``unsupported`` if given.
    Folders that cannot be listed and images that cannot be stat'ed are appended to
    ``unreachable`` as (relative path, reason), a folder's path ending in ``/``: nothing is left
    out in silence. The walk keeps its own stack, so no depth of nesting can exhaust Python's.
    Symbolic links are followed only when they stay inside ``root`` or when
    ``follow_symlinks`` is set (the links left out are appended to ``outside``, if given, so a
    folder of links is not found empty without a word); each real directory is visited once, so link loops end. Linked
    folders are walked after every real one, so a folder reachable both ways keeps its real path
    (its images keep their names and ``evaluate`` labels whichever link sorts first).

    A listing split into pieces (the Ray engine's) lists each piece with ``within``, the whole
    listing's root that links are judged against, and ``links``: folders reached through a link
    are then not walked but appended there as (relative path, path), in the order this walk meets
    them; :func:`list_linked` walks them all afterwards, as this function would have.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    walk = _Walk(Path(within or root).resolve(), follow_symlinks, exclude, unsupported, unreachable)
    walk.outside = outside
    walk.walk(root, ())
    if links is not None:
        links.extend(("/".join(parts), path) for path, parts in walk.linked)
    else:
        walk.walk_linked()
    walk.found.sort(key=lambda f: f.rel)
    return walk.found


def list_linked(
    root: Path,
    links: list[tuple[str, Path]],
    follow_symlinks: bool,
    walked: Callable[[Path], bool],
    limit: int | None = None,
    outside: list[str] | None = None,
) -> list[ImageFile]:
    """The images :func:`list_images` finds through links, for a listing whose real folders were
    listed in pieces: ``links`` in the order the walk met them (see :func:`list_images`), and
    ``walked``, whether the pieces visited a folder (given its path), in place of the set of
    visited folders a single walk keeps. Sorted by relative path. With ``limit``, the walk stops
    soon after finding more than that many (a caller that cannot hold more then lists elsewhere).
    ``outside``, as for :func:`list_images`."""
    walk = _Walk(Path(root).resolve(), follow_symlinks, (), None, None, walked)
    walk.outside = outside
    walk.linked = [(path, tuple(rel.split("/"))) for rel, path in links]
    walk.limit = limit
    walk.walk_linked()
    walk.found.sort(key=lambda f: f.rel)
    return walk.found


class _Walk:
    """One listing's walk: what it found, the folders it visited, the linked folders left for last."""

    def __init__(
        self,
        real_root: Path,
        follow_symlinks: bool,
        exclude: tuple[Path, ...],
        unsupported: list[str] | None,
        unreachable: list[tuple[str, str]] | None,
        walked: Callable[[Path], bool] | None = None,
    ) -> None:
        self.real_root = real_root
        self.follow_symlinks = follow_symlinks
        self.unsupported = unsupported
        self.unreachable = unreachable
        self.walked = walked
        self.excluded: set[tuple[int, int]] = set()  # by device and inode: resolving each folder's path costs a stat per level
        for p in exclude:
            with contextlib.suppress(OSError):
                st = p.stat()
                self.excluded.add((st.st_dev, st.st_ino))
        self.seen_dirs: set[tuple[int, int]] = set()
        self.found: list[ImageFile] = []
        self.linked: list[tuple[Path, tuple[str, ...]]] = []  # folders reached through a link: walked last
        self.limit: int | None = None
        self.outside: list[str] | None = None  # links left out because they lead outside the root

    def inside_root(self, p: Path) -> bool:
        return p == self.real_root or self.real_root in p.parents

    def missed(self, rel_parts: tuple[str, ...], what: str, exc: OSError) -> None:
        if self.unreachable is not None:
            self.unreachable.append(
                ("/".join(rel_parts) + ("/" if what == "folder" else ""), f"{what} cannot be read: {exc.strerror or exc}")
            )

    def walk_linked(self) -> None:
        while self.linked and not self.full():
            self.walk(*self.linked.pop(0))

    def full(self) -> bool:
        return self.limit is not None and len(self.found) > self.limit

    def walk(self, start: Path, start_parts: tuple[str, ...]) -> None:
        stack = [(start, start_parts)]
        while stack and not self.full():
            directory, rel_parts = stack.pop()
            try:
                st = directory.stat()
                key = (st.st_dev, st.st_ino)
                if key in self.seen_dirs or (self.walked is not None and self.walked(directory)):
                    continue
                self.seen_dirs.add(key)
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                self.missed(rel_parts, "folder", exc)
                continue
            subfolders: list[tuple[Path, tuple[str, ...]]] = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                suffix = Path(entry.name).suffix.lower()
                parts = (*rel_parts, entry.name)
                try:
                    is_link = entry.is_symlink()
                    if is_link:
                        target = path.resolve()
                        if not self.follow_symlinks and not self.inside_root(target):
                            if self.outside is not None:
                                self.outside.append("/".join(parts))
                            continue
                    if entry.is_dir(follow_symlinks=True):
                        st = entry.stat(follow_symlinks=True)
                        # os.path.exists, not Path.exists: on Python 3.11 that raised PermissionError in
                        # a folder that cannot be searched, and the folder was dropped without a word.
                        if (st.st_dev, st.st_ino) in self.excluded or os.path.exists(path / OUTPUT_MARKER):
                            continue
                        if is_link:
                            self.linked.append((path, parts))
                        else:
                            subfolders.append((path, parts))
                    elif entry.is_file(follow_symlinks=True):
                        if suffix in IMAGE_EXTENSIONS:
                            st = entry.stat(follow_symlinks=True)
                            self.found.append(ImageFile("/".join(parts), path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                        elif self.unsupported is not None and suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
                            self.unsupported.append("/".join(parts))
                    elif suffix in IMAGE_EXTENSIONS:  # a named pipe, a device, or a link to nothing
                        if is_link and not os.path.exists(path):
                            self.missed(parts, "file", FileNotFoundError(errno.ENOENT, "broken symbolic link"))
                        else:
                            self.missed(parts, "file", OSError(errno.EINVAL, "not a regular file"))
                except OSError as exc:  # permission, a dangling link, a name too long for the system
                    if suffix in IMAGE_EXTENSIONS:
                        self.missed(parts, "file", exc)
                except RuntimeError:  # resolve() meeting a loop of links: names no file at all
                    if suffix in IMAGE_EXTENSIONS:
                        self.missed(parts, "file", OSError(errno.ELOOP, "loop of symbolic links"))
            stack.extend(reversed(subfolders))
