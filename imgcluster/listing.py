"""Find the images under a folder in a stable order."""

from __future__ import annotations

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


def list_images(
    root: Path, follow_symlinks: bool = False, exclude: tuple[Path, ...] = (), unsupported: list[str] | None = None
) -> list[ImageFile]:
    """Images under ``root``, sorted by relative path.

    Hidden files and folders (the default cache ``.imgcluster/`` among them), folders imgcluster
    wrote (marked with :data:`OUTPUT_MARKER`) and ``exclude`` are skipped. Files in formats it
    cannot read (:data:`UNSUPPORTED_IMAGE_EXTENSIONS`) are appended to ``unsupported`` if given.
    Symbolic links are followed only when they stay inside ``root`` or when
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
                    if path.resolve() in excluded or (path / OUTPUT_MARKER).exists():
                        continue
                    if is_link:
                        linked.append((path, (*rel_parts, entry.name)))
                    else:
                        walk(path, (*rel_parts, entry.name))
                elif entry.is_file(follow_symlinks=True):
                    suffix = Path(entry.name).suffix.lower()
                    rel = "/".join((*rel_parts, entry.name))
                    if suffix in IMAGE_EXTENSIONS:
                        st = entry.stat(follow_symlinks=True)
                        found.append(ImageFile(rel, path, st.st_size, st.st_mtime_ns))
                    elif unsupported is not None and suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
                        unsupported.append(rel)
            except (OSError, RuntimeError):  # broken link, permission, resolve() loop
                continue

    walk(root, ())
    while linked:
        walk(*linked.pop(0))
    found.sort(key=lambda f: f.rel)
    return found
