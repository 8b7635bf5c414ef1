"""Find the images under a folder in a stable order."""

from __future__ import annotations

import contextlib
import errno
import os
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
) -> list[ImageFile]:
    """Images under ``root``, sorted by relative path.

    Hidden files and folders (the default cache ``.imgcluster/`` among them), folders imgcluster
    wrote (marked with :data:`OUTPUT_MARKER`) and ``exclude`` are skipped. Files in formats it
    cannot read (:data:`UNSUPPORTED_IMAGE_EXTENSIONS`) are appended to ``unsupported`` if given.
    Folders that cannot be listed and images that cannot be stat'ed are appended to
    ``unreachable`` as (relative path, reason), a folder's path ending in ``/``: nothing is left
    out in silence. The walk keeps its own stack, so no depth of nesting can exhaust Python's.
    Symbolic links are followed only when they stay inside ``root`` or when
    ``follow_symlinks`` is set; each real directory is visited once, so link loops end. Linked
    folders are walked after every real one, so a folder reachable both ways keeps its real path
    (its images keep their names and ``evaluate`` labels whichever link sorts first).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    real_root = root.resolve()
    excluded: set[tuple[int, int]] = set()  # by device and inode: resolving each folder's path costs a stat per level
    for p in exclude:
        with contextlib.suppress(OSError):
            st = p.stat()
            excluded.add((st.st_dev, st.st_ino))
    seen_dirs: set[tuple[int, int]] = set()
    found: list[ImageFile] = []
    linked: list[tuple[Path, tuple[str, ...]]] = []  # folders reached through a link: walked last

    def inside_root(p: Path) -> bool:
        return p == real_root or real_root in p.parents

    def missed(rel_parts: tuple[str, ...], what: str, exc: OSError) -> None:
        if unreachable is not None:
            unreachable.append(("/".join(rel_parts) + ("/" if what == "folder" else ""), f"{what} cannot be read: {exc.strerror or exc}"))

    def walk(start: Path, start_parts: tuple[str, ...]) -> None:
        stack = [(start, start_parts)]
        while stack:
            directory, rel_parts = stack.pop()
            try:
                st = directory.stat()
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    continue
                seen_dirs.add(key)
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                missed(rel_parts, "folder", exc)
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
                        if not follow_symlinks and not inside_root(target):
                            continue
                    if entry.is_dir(follow_symlinks=True):
                        st = entry.stat(follow_symlinks=True)
                        # os.path.exists, not Path.exists: on Python 3.11 that raised PermissionError in
                        # a folder that cannot be searched, and the folder was dropped without a word.
                        if (st.st_dev, st.st_ino) in excluded or os.path.exists(path / OUTPUT_MARKER):
                            continue
                        if is_link:
                            linked.append((path, parts))
                        else:
                            subfolders.append((path, parts))
                    elif entry.is_file(follow_symlinks=True):
                        if suffix in IMAGE_EXTENSIONS:
                            st = entry.stat(follow_symlinks=True)
                            found.append(ImageFile("/".join(parts), path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
                        elif unsupported is not None and suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
                            unsupported.append("/".join(parts))
                    elif suffix in IMAGE_EXTENSIONS:  # a named pipe, a device, or a link to nothing
                        if is_link and not os.path.exists(path):
                            missed(parts, "file", FileNotFoundError(errno.ENOENT, "broken symbolic link"))
                        else:
                            missed(parts, "file", OSError(errno.EINVAL, "not a regular file"))
                except OSError as exc:  # permission, a dangling link, a name too long for the system
                    if suffix in IMAGE_EXTENSIONS:
                        missed(parts, "file", exc)
                except RuntimeError:  # resolve() meeting a loop of links: names no file at all
                    if suffix in IMAGE_EXTENSIONS:
                        missed(parts, "file", OSError(errno.ELOOP, "loop of symbolic links"))
            stack.extend(reversed(subfolders))

    walk(root, ())
    while linked:
        walk(*linked.pop(0))
    found.sort(key=lambda f: f.rel)
    return found
