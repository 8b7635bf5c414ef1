"""Which CSV rows a report may open: only files inside the image folder, as the scan finds them.

A CSV and its sidecar may come from someone else. A row such as ``../secret/secret.png`` or an
absolute path would otherwise be read and thumbnailed into the page; such rows are refused
with a reason. A symbolic link inside the folder that leads outside it is refused unless
``follow_symlinks``, as the scan refuses it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def lexical_refusal(rel: str) -> str:
    """Why ``rel`` cannot name a file inside any folder, or ``""``; needs no file system."""
    if not rel or "\0" in rel:
        return "not a file name"
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or os.path.isabs(rel):
        return "an absolute path"
    if ".." in parts:
        return "leads out of the image folder (..)"
    return ""


def refusal(folder: Path, rel: str, follow_symlinks: bool = False) -> str:
    """Why the report must not open ``folder / rel``, or ``""`` when it may."""
    reason = lexical_refusal(rel)
    if reason or follow_symlinks:
        return reason
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(folder / rel)
    if os.path.commonpath([real_folder, real]) != real_folder:
        return "a link that leads out of the image folder"
    return ""
