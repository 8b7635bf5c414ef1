"""Checks on where a run writes, made before any work: an output must never replace an input."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from imgcluster.errors import ParameterError, literal
from imgcluster.listing import IMAGE_EXTENSIONS


def _same(a: Path, b: Path) -> bool:
    """One file under two names: the same path after links, or (when both exist) a hard link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_inputs(out: Path, inputs: Mapping[Path, str] = {}, folder: Path | None = None, parameter: str = "out") -> None:
    """Raise a :class:`ParameterError` naming ``parameter`` when writing ``out`` would replace an input.

    ``inputs`` maps files the run reads to what they are ("the assignments CSV"); ``folder`` is
    an image folder the run scans: any image file inside it counts as an input too.
    """
    for path, what in inputs.items():
        if _same(out, path):
            raise ParameterError(
                f"{{{parameter}}} {literal(out)} is {what}, which this run reads; writing there would replace it: give another file"
            )
    if folder is not None and out.suffix.lower() in IMAGE_EXTENSIONS:
        try:
            inside = out.resolve().relative_to(folder.resolve())
        except ValueError:
            return
        if not any(part.startswith(".") for part in inside.parts):  # hidden files are never scanned
            raise ParameterError(
                f"{{{parameter}}} {literal(out)} is an image in {literal(folder)}, which this run reads; "
                "writing there would replace it: give another file"
            )


def refuse_stdout(out: str | os.PathLike[str], parameter: str, what: str) -> None:
    """``-`` is standard output to ``assign``; an output that cannot go there (``what``) refuses it,
    rather than writing a file or folder named ``-`` (``train`` and ``export`` did)."""
    if os.fspath(out) == "-":
        raise ParameterError(f"{{{parameter}}} -: {what} cannot go to standard output; give a name")


def refuse_folder_name(out: str | os.PathLike[str], parameter: str = "out") -> None:
    """An output named like a folder (``results/``): its slash was dropped and a file named
    ``results`` written (with ``results.json`` beside it)."""
    text = os.fspath(out)
    if text.endswith(("/", os.sep)) and text.strip("/" + os.sep):
        raise ParameterError(f"{{{parameter}}} {literal(text)} ends in {text[-1]}, as a folder's name does: give a file name")


def check_head_name(path: str | os.PathLike[str], parameter: str | None = None) -> None:
    """A head checkpoint is read back only from a ``.safetensors`` name (its ``.json`` goes beside
    it): one saved under another was refused by ``load_checkpoint`` after it had been trained."""
    if Path(path).suffix != ".safetensors":
        named = f"{{{parameter}}} " if parameter else ""
        raise ParameterError(f"{named}{literal(os.fspath(path))} does not end in .safetensors, the only name a head is read back from")


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (255 on the usual ones)."""
    for existing in (folder, *folder.parents):
        if existing.is_dir():
            try:
                return os.pathconf(existing, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def refuse_long_names(out: str | os.PathLike[str], files: Iterable[Path], parameter: str = "out") -> None:
    """Refuse ``out`` when a file the run writes under it (``files``: itself, or one beside it), or a
    folder on its way, has a name longer than the file system takes: ``NAME-skipped.csv`` failed after
    the whole run, the CSV written, and a longer ``out`` failed in ``is_dir()`` as an unexpected error."""
    text = os.fspath(out)
    for path in files:
        limit = _name_max(path.parent)
        for part in path.parts:
            size = len(os.fsencode(part))
            if size > limit:
                which = "" if part in Path(text).parts else f": {literal(part)}, which goes beside it,"
                raise ParameterError(
                    f"{{{parameter}}} {literal(text)}{which} holds a name of {size} bytes, longer than the {limit} "
                    "this file system takes: give a shorter name"
                )
