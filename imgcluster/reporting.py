"""``imgcluster.write_report``: the HTML report of an assignment CSV, with progress as events."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from imgcluster.atomic import is_stream
from imgcluster.config import sidecar_path
from imgcluster.csvfile import assignments_path
from imgcluster.errors import ParameterError, literal
from imgcluster.head_config import check_flags
from imgcluster.outputs import refuse_folder_name, refuse_inputs, refuse_long_names
from imgcluster.progress import ProgressFn, Reporter, check_progress
from imgcluster.report import ReportHooks, ReportResult
from imgcluster.report import write_report as _write_report
from imgcluster.userpath import expand_home, path_argument

__all__ = ["ReportResult", "write_report"]

PathLike = str | os.PathLike[str]


def write_report(
    assignments: PathLike,
    out: PathLike | None = None,
    *,
    labels: PathLike | None = None,
    folder: PathLike | None = None,
    montage: bool = False,
    per_cluster: int = 48,
    follow_symlinks: bool = False,
    features: tuple[list[str], np.ndarray] | None = None,
    progress: ProgressFn | None = None,
) -> ReportResult:
    """Write one self-contained HTML page of thumbnails per cluster of ``assignments`` (a CSV
    from ``assign``), by default beside it as ``<csv stem>.html``.

    ``labels`` (a folder whose sub-folder names are labels) adds each cluster's label mix and
    the scores; ``folder`` is the image folder when the CSV's sidecar does not say or the images
    moved; a row that leads outside that folder (absolute, ``..``, or a link unless
    ``follow_symlinks``) is refused and shown as a placeholder; ``montage`` also writes a PNG
    contact sheet per cluster; ``features`` (paths, matrix) spares reading the cache. ``out``
    may not be a file the report reads (the CSV, its sidecar, an image). ``progress`` hears the thumbnails (stage ``report``) and warnings.
    """
    check_progress(progress)
    check_flags(montage=montage, follow_symlinks=follow_symlinks)
    csv_path = assignments_path(assignments)
    out = expand_home(out)
    if out is not None:
        refuse_folder_name(out)
    labels = None if labels is None else path_argument(labels, "labels", "a folder whose sub-folders are the labels")
    folder = None if folder is None else path_argument(folder, "folder", "the image folder")
    target = Path(out) if out is not None else csv_path.with_suffix(".html")
    refuse_long_names(target, [target])
    if montage:
        refuse_long_names(csv_path, [target.parent / f"{csv_path.stem}-montage"], "montage")
    if out is not None and (os.fspath(out) == "-" or is_stream(target)):
        raise ParameterError("the report is a file with pictures beside it: give {out} FILE.html")
    if is_stream(csv_path):  # a piped CSV: the report went beside it (/dev/stdin.html), and --labels read it twice
        message = f"{{assignments}} {literal(csv_path)} is not a regular file: the report reads it more than once; save it first"
        raise ParameterError(message)
    eval_json = csv_path.with_name(csv_path.name + ".eval.json")
    inputs = {csv_path: "the assignments CSV", sidecar_path(csv_path): "the CSV's sidecar", eval_json: "the CSV's scores"}
    refuse_inputs(target, inputs, Path(folder) if folder is not None else _image_folder(csv_path))
    report = Reporter(progress, "report")
    hooks = ReportHooks(on_start=report.start, on_advance=report.advance, on_warning=report.warning)
    return _write_report(
        csv_path,
        out=Path(out) if out is not None else None,
        labels=Path(labels) if labels is not None else None,
        folder=Path(folder) if folder is not None else None,
        montage=montage,
        per_cluster=per_cluster,
        follow_symlinks=follow_symlinks,
        features=features,
        hooks=hooks,
    )


def _image_folder(csv_path: Path) -> Path | None:
    """The image folder the CSV's sidecar names, if it can be read (the report itself says when not)."""
    try:
        folder = json.loads(sidecar_path(csv_path).read_text())["assign"]["folder"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(folder) if isinstance(folder, str) else None
