"""Find the images under a folder in a stable order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageFile:
    rel: str  # POSIX path relative to the scanned folder: the identity used in caches and CSVs
    path: Path
    size: int
    mtime_ns: int


def scan_folder(root: Path, follow_symlinks: bool = False, exclude: tuple[Path, ...] = ()) -> list[ImageFile]:
    """Images under ``root``, sorted by relative path.

    Hidden files and folders (the default cache ``.imgcluster/`` among them) and ``exclude`` are
    skipped. Symbolic links are followed only when they stay inside ``root`` or when
    ``follow_symlinks`` is set; each real directory is visited once, so link loops end. Linked
    folders are walked after every real one, so a folder reachable both ways keeps its real path
    (its images keep their names and ``evaluate`` labels whichever link sorts first).
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    real_root = root.resolve()
    excluded = {p.resolve() for p in exclude}
    seen_dirs: set[tuple[int, int]] = set()
    found: list[ImageFile] = []
    linked: list[tuple[Path, tuple[str, ...]]] = []  # folders reached through a link: walked last

    def inside_root(p: Path) -> bool:
        return p == real_root or real_root in p.parents

    def walk(directory: Path, rel_parts: tuple[str, ...]) -> None:
        try:
            st = directory.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_link = entry.is_symlink()
                if is_link:
                    target = path.resolve()
                    if not follow_symlinks and not inside_root(target):
                        continue
                if entry.is_dir(follow_symlinks=True):
                    if path.resolve() in excluded:
                        continue
                    if is_link:
                        linked.append((path, (*rel_parts, entry.name)))
                    else:
                        walk(path, (*rel_parts, entry.name))
                elif entry.is_file(follow_symlinks=True) and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    st = entry.stat(follow_symlinks=True)
                    found.append(ImageFile("/".join((*rel_parts, entry.name)), path, st.st_size, st.st_mtime_ns))
            except (OSError, RuntimeError):  # broken link, permission, resolve() loop
                continue

    walk(root, ())
    while linked:
        walk(*linked.pop(0))
    found.sort(key=lambda f: f.rel)
    return found
