"""``imgcluster.export``: an assignment as folders, one per cluster, of links to (or copies of) the images.

The user's files are only ever read: each image appears in ``DIR/<cluster>-<name>/<its path>``
as a hard link, a symbolic link or a copy. A file already in DIR is never replaced: one that is
this export's own (the same file, a link to it, an identical copy) is kept as it is, so a rerun
does nothing; any other is left alone and counted as a conflict. Copies are written to a hidden
temporary name and linked into place, which fails instead of overwriting, so an interrupted or
concurrent run never leaves a half-written image under a real name. (The module is not called
``export``: it would shadow the function of that name in the package.)
"""

from __future__ import annotations

import errno
import filecmp
import os
import re
import shutil
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgcluster.csvfile import (
    as_folder_paths,
    assignments_path,
    check_assignments_file,
    names_of_clusters,
    read_assignments,
    separator_hint,
)
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.head_config import check_flags
from imgcluster.outputs import refuse_long_names, refuse_stdout
from imgcluster.progress import ProgressFn, Reporter, check_progress, count
from imgcluster.report.paths import refusal
from imgcluster.report.sidecar import read_sidecar, resolve_folder
from imgcluster.userpath import path_argument

__all__ = ["ExportResult", "export"]

MODES = ("link", "symlink", "copy")
OUTLIERS = "outliers"
DUPLICATES = "duplicates"
NAME_LIMIT = 60  # characters of a cluster's name kept in its folder name


@dataclass
class ExportResult:
    """What :func:`export` did: files placed now, already in place, refused rows and conflicts."""

    folder: Path  # the export
    placed: int = 0
    kept: int = 0  # already there from an earlier export of the same files
    conflicts: list[Path] = field(default_factory=list)  # foreign files left as they were
    refused: list[tuple[str, str]] = field(default_factory=list)  # (CSV path, why it was not opened)
    symlinked: int = 0  # mode "link" on a file system without hard links between these folders
    # files an earlier export of another assignment left in other cluster folders, which this one does not name: an
    # image exported again after a new assign sat in its old cluster's folder and its new one, without a word
    stale: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # images not in the image folder (any more), or not regular files


def folder_name(cluster: int, name: str, width: int) -> str:
    """``03-sandal-running-shoe``: the cluster id (zero-padded, so folders sort) and its name, made
    safe for any file system (ASCII letters, digits and ``-``; a name may come from anyone's CSV)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")  # "Crème" -> "Creme", not "Cr-me"
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:NAME_LIMIT].strip("-")
    number = f"{cluster:0{width}d}"
    return f"{number}-{slug}" if slug else number


def export(
    assignments: str | os.PathLike[str],
    to: str | os.PathLike[str],
    mode: str = "link",
    *,
    folder: str | os.PathLike[str] | None = None,
    follow_symlinks: bool = False,
    progress: ProgressFn | None = None,
) -> ExportResult:
    """Put each image of the assignment CSV into ``to/<cluster>-<name>/``, outliers into
    ``to/outliers/`` and every near-duplicate group (``<csv stem>-duplicates.csv``) also into
    ``to/duplicates/<group>/``, keeping each image's path below the image folder.

    ``mode`` is ``link`` (hard links; symbolic ones where the file system cannot), ``symlink`` or
    ``copy``. ``folder`` is the image folder when the CSV's sidecar does not say it. Rows that
    name files outside the image folder are refused as the report refuses them; ``to`` may not be
    inside the image folder, where the next scan would take the links for new images.
    """
    if mode not in MODES:
        raise ParameterError(f"{{mode}} must be one of {', '.join(MODES)}, got {mode!r}")
    check_progress(progress)
    check_flags(follow_symlinks=follow_symlinks)
    csv_path = assignments_path(assignments)
    to = path_argument(to, "to", "a folder")
    folder = None if folder is None else path_argument(folder, "folder", "the image folder")
    check_assignments_file(csv_path)
    rows = read_assignments(csv_path)
    image_folder = resolve_folder(csv_path, read_sidecar(csv_path), Path(folder) if folder is not None else None)
    if not image_folder.is_dir():
        raise ImgclusterError(f"image folder {image_folder} not found; give it with {{folder}}")
    rows = as_folder_paths(rows, image_folder)
    refuse_stdout(to, "to", "an export (a folder of images)")
    target = Path(to)
    refuse_long_names(to, [target], "to")
    real_target, real_images = os.path.realpath(target), os.path.realpath(image_folder)
    if os.path.commonpath([real_target, real_images]) == real_images:
        raise ParameterError(f"{{to}} {target} is inside the image folder {image_folder}; the next scan would find its images twice")
    if target.exists() and not target.is_dir():
        raise ParameterError(f"{{to}} {target} is not a folder")
    result = ExportResult(target)
    place = _placer(mode, result, target)
    width = max(2, len(str(max(r.cluster for r in rows))))
    names = names_of_clusters(rows)  # one folder per cluster, even where rows disagree on its name
    report = Reporter(progress, "export")
    plan: list[tuple[str, Path]] = []  # (path in the image folder, the folder in the export it goes to)
    for row in rows:
        why = refusal(image_folder, row.path, follow_symlinks)
        if why:
            result.refused.append((row.path, why))
            continue
        plan.append((row.path, Path(OUTLIERS if row.outlier else folder_name(row.cluster, names.get(row.cluster, ""), width))))
    plan += _duplicates(csv_path, {rel for rel, _ in plan})
    _refuse_image_folder_clash(target, {where for _, where in plan}, image_folder)
    report.start(len(plan), "export")
    for rel, where in plan:
        place(image_folder / rel, target / where / rel)
        report.advance()
    result.stale = _earlier_exports(target, plan)
    if result.refused:
        path, why = result.refused[0]
        report.warning(f"refused {count(len(result.refused), 'row')} of {csv_path.name} (e.g. {path!r}: {why})")
    if result.conflicts:
        report.warning(
            f"left {count(len(result.conflicts), 'file')} that were already in {target} and are not these images as they were "
            f"(e.g. {result.conflicts[0]}); nothing was overwritten"
        )
    if result.missing:
        gone = count(len(result.missing), "image")
        hint = separator_hint(result.missing)
        report.warning(f"{gone} of {csv_path.name} not found or not a regular file (e.g. {result.missing[0]}){hint}; left out")
    if result.stale:
        report.warning(
            f"{count(len(result.stale), 'file')} in {target} are these images in other cluster folders, from an earlier export "
            f"(e.g. {result.stale[0]}); nothing was deleted: export into a new folder to see this assignment alone"
        )
    if result.symlinked:
        report.warning(f"{count(result.symlinked, 'image')} could not be hard-linked into {target} and got symbolic links instead")
    report.info(f"exported {count(result.placed + result.kept, 'image')} to {target} ({result.placed} new, {result.kept} already there)")
    return result


def _duplicates(csv_path: Path, allowed: set[str]) -> list[tuple[str, Path]]:
    """The near-duplicate groups beside the CSV as (row, ``duplicates/<group>``), for rows also exported."""
    from imgcluster.duplicates import duplicates_path

    path = duplicates_path(csv_path)
    if not path.is_file():
        return []
    import csv

    from imgcluster.csvfile import folder_spelling, unescape_cell, written_raw

    raw = written_raw(csv_path)
    out = []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            records = list(csv.DictReader(handle, strict=True))  # cut short inside a cell: refused, as the assignments are
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImgclusterError(f"cannot read near-duplicate groups {path}: {exc}") from None
    groups = [str(r.get("group") or "") for r in records]
    width = max(3, *(len(g) for g in groups)) if groups else 3
    for record, group in zip(records, groups):
        rel = str(record.get("path") or "")
        rel = rel if raw else unescape_cell(rel)
        if rel not in allowed and folder_spelling(rel) in allowed:  # written on Windows, as the CSV may be (as_folder_paths)
            rel = folder_spelling(rel)
        if rel in allowed and group.isdigit():  # only rows of the CSV that passed the checks above
            out.append((rel, Path(DUPLICATES) / group.zfill(width)))
    return out


def _earlier_exports(target: Path, plan: list[tuple[str, Path]]) -> list[Path]:
    """Files in ``target`` that are images of ``plan`` in a folder ``plan`` does not put them in (``<folder>/<path>``,
    ``duplicates/<group>/<path>``): what an export of an earlier assignment left there. Sorted; the folder is walked once."""
    wanted = {target / where / rel for rel, where in plan}
    rels = {rel for rel, _ in plan}
    stale = []
    for root, folders, files in os.walk(target):
        folders.sort()
        for name in files:
            path = Path(root) / name
            parts = path.relative_to(target).parts
            skip = 2 if parts[0] == DUPLICATES else 1
            if path not in wanted and len(parts) > skip and "/".join(parts[skip:]) in rels:
                stale.append(path)
    return sorted(stale)


def _refuse_image_folder_clash(target: Path, folders: set[Path], image_folder: Path) -> None:
    """An export folder that is, or holds, the image folder (``--to .`` beside a folder named
    ``00-sandal`` or ``outliers``): its images were counted "already there", being themselves."""
    real_images = os.path.realpath(image_folder)
    for where in sorted(folders):
        real = os.path.realpath(target / where)
        if os.path.commonpath([real, real_images]) == real_images:
            raise ParameterError(
                f"{{to}} {target} would export onto the image folder {image_folder} itself (as its folder {where.as_posix()}); "
                "give another folder"
            )
        if os.path.commonpath([real, real_images]) == real:
            raise ParameterError(
                f"{{to}} {target} would mix the export with the image folder {image_folder} (inside its folder {where.as_posix()}); "
                "give another folder"
            )


def _placer(mode: str, result: ExportResult, target: Path) -> Callable[[Path, Path], None]:
    def place(source: Path, dest: Path) -> None:
        if not source.is_file():  # gone since the assignment (or never there): nothing to export, nothing to stop for
            result.missing.append(source.as_posix())
            return
        if not _make_folders(target, dest.parent):
            result.conflicts.append(dest)
            return
        if os.path.lexists(dest):
            if _is_ours(source, dest, mode):
                result.kept += 1
            else:
                result.conflicts.append(dest)
            return
        try:
            if mode == "copy":
                _copy(source, dest)
            elif mode == "symlink":
                os.symlink(os.path.abspath(source), dest)
            else:
                try:
                    os.link(source, dest, follow_symlinks=True)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    os.symlink(os.path.abspath(source), dest)
                    result.symlinked += 1
        except FileExistsError:  # another run placed something there in the meantime
            if _is_ours(source, dest, mode):
                result.kept += 1
            else:
                result.conflicts.append(dest)
            return
        except OSError as exc:
            raise ImgclusterError(f"cannot export {source} to {dest}: {exc.strerror or exc}") from None
        result.placed += 1

    return place


def _make_folders(target: Path, folder: Path) -> bool:
    """Create ``folder`` below ``target`` one level at a time; False when something foreign is in
    the way: a file where a folder goes, or a link, which could lead the export out of ``target``."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        current = target
        for part in folder.relative_to(target).parts:
            current = current / part
            if current.is_symlink() or (os.path.lexists(current) and not current.is_dir()):
                return False
            current.mkdir(exist_ok=True)
    except OSError as exc:
        raise ImgclusterError(f"cannot create {folder}: {exc.strerror or exc}") from None
    return True


def _is_ours(source: Path, dest: Path, mode: str) -> bool:
    """Whether ``dest`` already is ``source`` as this export would have placed it."""
    try:
        if dest.is_symlink():
            return os.path.realpath(dest) == os.path.realpath(source)
        if os.path.samefile(source, dest):
            return True
        # An identical copy is this image in any mode: a link export after a copy export onto
        # the same folder warned of every image as a file of the user's.
        return dest.is_file() and filecmp.cmp(source, dest, shallow=False)
    except OSError:
        return False


def _copy(source: Path, dest: Path) -> None:
    """Copy to a hidden temporary name, then link it into place: never a partial or overwriting write."""
    temporary = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        shutil.copy2(source, temporary)
        try:
            os.link(temporary, dest)  # fails, instead of replacing, when dest exists
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: rename, after one more look
            if os.path.lexists(dest):
                raise FileExistsError(errno.EEXIST, "exists", str(dest)) from None
            os.rename(temporary, dest)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
