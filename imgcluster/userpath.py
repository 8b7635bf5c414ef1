"""``~`` in a path a user gave, expanded as the shell expands a separate word.

The shell leaves ``--out=~/x.csv`` as it is, and Python has no shell at all: ``cache_dir="~/x"``
made a folder named ``~`` in the current folder (which ``rm -rf ~`` would then remove the user's
home for). The CLI and every API entry that takes a path pass it through :func:`expand_home`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

from imgcluster.errors import ParameterError, literal


@overload
def expand_home(path: None) -> None: ...
@overload
def expand_home(path: str) -> str: ...
@overload
def expand_home(path: str | os.PathLike[str]) -> str | os.PathLike[str]: ...


def expand_home(path: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``path`` with a leading ``~`` or ``~user`` made the home folder; anything else (None, a URI,
    ``-`` for standard output, bytes) unchanged, of the same type. A ``~`` that names no home folder
    (``~nosuchuser``, or ``~`` with HOME set to "") is a :class:`ParameterError`: the first wrote into a
    new folder named ``~nosuchuser`` in the current folder, the second at the root (``/x.csv``)."""
    if path is None or isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        return path  # the callers' own checks name what is wrong with other types
    text = os.fspath(path)
    if not isinstance(text, str) or not text.startswith("~"):
        return path
    home = text.split("/", 1)[0]
    if home == "~" and os.environ.get("HOME") == "":
        raise ParameterError(f"{literal(text)}: HOME is empty, so ~ names no folder; set HOME or give the whole path")
    expanded = os.path.expanduser(text)
    if expanded == text:
        raise ParameterError(
            f"{literal(text)}: there is no user {literal(home[1:])}, so {literal(home)} names no home folder; "
            f"write ./{literal(text)} for a folder of that name"
        )
    return type(path)(expanded) if isinstance(path, Path) else expanded


def path_argument(value: object, parameter: str, what: str) -> str | os.PathLike[str]:
    """``value``, a path the caller must give, with ``~`` expanded: refused by name when it is not a
    path (None was a TypeError) or is empty. ``"$DIR"`` with DIR unset is ``""``, which meant the
    current folder: ``export --to ""`` exported into it, ``assign ""`` clustered it."""
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise ParameterError(f"{{{parameter}}} takes {what}, not {literal(repr(value)[:80])}")
    if not os.fspath(value):
        raise ParameterError(f"{{{parameter}}} is empty: give {what}")
    return expand_home(value)
