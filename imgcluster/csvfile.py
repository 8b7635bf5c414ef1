"""The CSVs imgcluster writes, and the assignments CSV read back, in one place.

``assign`` writes the assignments CSV, ``evaluate`` and ``report`` read it; the skipped list and
the near-duplicate groups are written with the same cell rules. Strings are quoted
(``QUOTE_NONNUMERIC``), so any file name (commas, quotes, newlines) reads back exactly.

Spreadsheets run a cell that starts with ``= + - @``, a tab or a carriage return as a formula,
quoted or not (``=HYPERLINK(...)`` in a file name is enough). Following OWASP's advice for CSV
export, such a text cell gets a leading ``'`` unless ``raw_csv``; a cell that already starts with
``'`` gets one too, so the reader strips exactly one ``'`` from a cell that starts with ``'`` and one
of those characters, and every name reads back as it was.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from imgcluster.atomic import atomic_open, writing_stdout
from imgcluster.errors import ImgclusterError, ParameterError, literal

if TYPE_CHECKING:
    from imgcluster.assign import Assignment

BASE_COLUMNS = ["path", "cluster", "confidence"]
READ_COLUMNS = (*BASE_COLUMNS, "cluster_name", "outlier", "outlier_reason")  # what evaluate, report and export read
WHOLE = re.compile(r"\s*([+-]?)([0-9]+(?:_[0-9]+)*)\s*")  # a whole number as int() spells it (ASCII digits; int() takes others too)
SHOWN = 40  # characters of a cell an error line shows
ESCAPE = "'"
FORMULA_STARTS = frozenset("=+-@\t\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def escape_cell(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would run it, or when it starts with ``'``."""
    return ESCAPE + text if text[:1] in FORMULA_STARTS or text.startswith(ESCAPE) else text


def unescape_cell(text: str) -> str:
    """The text :func:`escape_cell` was given (for a cell it did not change, the cell itself)."""
    if len(text) > 1 and text[0] == ESCAPE and (text[1] in FORMULA_STARTS or text[1] == ESCAPE):
        return text[1:]
    return text


class CsvWriter:
    """``csv.writer`` with every string quoted and, unless ``raw_csv``, escaped against formulas."""

    def __init__(self, handle: IO[str], raw_csv: bool = False, lineterminator: str = "\n") -> None:
        self._writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC, lineterminator=lineterminator)
        self._raw = raw_csv

    def writerow(self, row: Sequence[object]) -> None:
        self._writer.writerow(row if self._raw else [escape_cell(v) if isinstance(v, str) else v for v in row])

    def writerows(self, rows: Iterable[Sequence[object]]) -> None:
        for row in rows:
            self.writerow(row)


@dataclass
class Row:
    """One image's line of the assignments CSV, as ``evaluate`` and ``report`` use it."""

    path: str  # relative to the image folder, exactly as assigned
    cluster: int
    confidence: float  # NaN when the CSV has no confidence column
    outlier: bool
    name: str = ""  # the cluster's name (cluster_name column), "" when the CSV has none
    reason: str = ""  # why it is an outlier (outlier_reason column: far-from-centre, isolated, ...)


def names_of_clusters(rows: list[Row]) -> dict[int, str]:
    """Each cluster's one name: the most common non-empty ``cluster_name`` of its rows (the first
    seen on a tie). An edited or concatenated CSV can name one cluster differently on some rows;
    export, report and evaluate must still show it once, under one name."""
    tally: dict[int, dict[str, int]] = {}
    for row in rows:
        if row.name:
            seen = tally.setdefault(row.cluster, {})
            seen[row.name] = seen.get(row.name, 0) + 1
    return {k: max(seen, key=lambda name: seen[name]) for k, seen in tally.items()}


@contextmanager
def _output(out: str) -> Iterator[IO[str]]:
    if out == "-":
        with writing_stdout(), utf8(sys.stdout) as stdout:
            yield stdout
    else:
        with atomic_open(Path(out), "w", newline="") as handle:
            yield handle


def _is_utf8(encoding: str | None) -> bool:
    """Whether ``encoding`` (any of Python's names for it: ``UTF-8``, ``utf8``, ``U8``...) is UTF-8."""
    try:
        return encoding is not None and codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


@contextmanager
def utf8(stream: IO[str]) -> Iterator[IO[str]]:
    """``stream`` writing UTF-8, as every CSV imgcluster writes is: under ``PYTHONIOENCODING=ascii`` or a Latin-1
    locale, ``assign --out -`` ended its whole run in "unexpected UnicodeEncodeError" at the first accented name."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None or _is_utf8(getattr(stream, "encoding", None)):
        yield stream
        return
    stream.flush()
    wrapper = io.TextIOWrapper(buffer, encoding="utf-8", newline="")
    try:
        yield wrapper
        wrapper.flush()
    finally:
        wrapper.detach()  # the stream keeps its buffer


def write_assignments(out: str, paths: list[str], assignment: Assignment, raw_csv: bool = False) -> None:
    """Write the CSV to ``out`` (``-`` for stdout); strings are quoted, so any file name is safe."""
    with _output(out) as handle:
        writer = CsvWriter(handle, raw_csv)
        writer.writerow(assignment_header(assignment))
        writer.writerows(assignment_rows(paths, assignment))


def assignment_header(assignment: Assignment) -> list[str]:
    """The CSV's columns: path, cluster, confidence, then the extra columns by name."""
    return BASE_COLUMNS + sorted(assignment.extra)


def assignment_rows(paths: list[str], assignment: Assignment) -> Iterator[list[object]]:
    """The CSV's rows for ``paths`` (one block of them, for writers that stream), cells as :func:`write_assignments` writes them."""
    extras = [assignment.extra[c] for c in assignment_header(assignment)[len(BASE_COLUMNS) :]]
    for i, rel in enumerate(paths):
        row: list[object] = [rel, int(assignment.cluster[i]), round(float(assignment.confidence[i]), 6)]
        for values in extras:
            v = values[i]
            if values.dtype.kind in "USO":  # text columns (outlier_reason) are quoted like paths
                row.append(str(v))
            else:
                row.append(round(float(v), 6) if np.issubdtype(values.dtype, np.floating) else int(v))
        yield row


def assignments_path(value: object) -> Path:
    """``value``, the CSV's path, as a Path (``~`` expanded; bytes decoded). An in-memory result is
    refused with what to pass: ``write_report(result)`` failed inside ``pathlib`` ("expected str,
    bytes or os.PathLike"); None or an empty path by :func:`imgcluster.userpath.path_argument`."""
    from imgcluster.userpath import path_argument

    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if value is None or isinstance(value, (str, os.PathLike)):
        return Path(path_argument(value, "assignments", "the assignment CSV"))
    written = getattr(value, "written", None)
    if isinstance(written, dict) and "csv" in written:
        hint = f"pass the CSV it wrote, {literal(written['csv'])}"
    else:
        hint = "write it first (its write('clusters.csv')) and pass that path"
    raise ParameterError(f"{{assignments}} takes the path of a CSV that assign wrote, not {type(value).__name__}: {hint}")


def check_assignments_file(path: Path) -> None:
    """Refuse, naming the parameter, an assignments CSV that is missing or is a folder (evaluate,
    report and export; a folder was said to be "not found"); a pipe or a device is read once."""
    if path.is_dir():
        raise ParameterError(f"{{assignments}} {literal(path)} is a folder; give the CSV that assign wrote")
    if str(path) == "-" and not path.exists():  # assign writes its CSV to stdout as `-`, so `-` looked like stdin here
        raise ParameterError(
            "{assignments} - is not standard input here: evaluate reads a pipe given as /dev/stdin; "
            "report and export read a saved CSV"
        )
    if not path.exists():  # a pipe is read as it comes (`assign --out - | imgcluster evaluate /dev/stdin ...` was "not found")
        raise ParameterError(f"assignments file not found: {literal(path)}", "assignments")


def read_assignments(path: Path, raw_csv: bool | None = None) -> list[Row]:
    """Every row of the CSV at ``path``, file names exactly as written; any fault is one clear error.

    ``raw_csv`` says whether the cells were written unescaped; None reads it from the CSV's
    sidecar, and without one takes the cells as escaped (a raw CSV then reads back exactly unless
    a name starts with ``'`` followed by ``= + - @ '``, a tab or a carriage return).
    """
    raw = written_raw(path) if raw_csv is None else raw_csv
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, which made the header "\ufeffpath"
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, strict=True)  # a file cut short inside a quoted cell is an error, not a short cell
            columns = reader.fieldnames or []
            if not columns:  # `imgcluster evaluate x.csv ... > x.csv` empties the CSV before evaluate reads it
                raise ImgclusterError(f"{path} is empty; give the CSV that assign wrote")
            missing = [c for c in ("path", "cluster") if c not in columns]
            if missing:
                other = next((sep for sep in (";", "\t") if any(sep in c for c in columns)), None)  # a spreadsheet's other CSV
                hint = f" (its columns are separated by {other!r}: save it with commas)" if other else ""
                raise ImgclusterError(f"{path} is not an assignment CSV: missing column(s) {', '.join(missing)}{hint}")
            twice = [c for c, n in Counter(columns).items() if n > 1 and c in READ_COLUMNS]  # the reader kept the last
            if twice:
                raise ImgclusterError(f"{path} has column(s) {', '.join(twice)} more than once in its header; keep one of each")
            rows = [_row(path, number, record if raw else _unescaped(record)) for number, record in enumerate(reader, start=2)]
    except UnicodeDecodeError as exc:  # "'utf-8' codec can't decode byte 0xe9 in position 2: invalid continuation byte"
        raise ImgclusterError(
            f"cannot read assignments {path}: it is not UTF-8 text (a byte {exc.object[exc.start]:#04x}); save it as CSV UTF-8"
        ) from None
    except (OSError, csv.Error) as exc:
        raise ImgclusterError(f"cannot read assignments {path}: {exc}") from None
    if not rows:
        raise ImgclusterError(f"{path} has no rows")
    # An image listed twice would count twice in every score, sit in two export folders and show
    # twice in the report: evaluate refused it, export and report took it as it came.
    repeated = sorted(p for p, n in Counter(r.path for r in rows).items() if n > 1)
    if repeated:
        raise ImgclusterError(
            f"{path} lists {len(repeated)} path(s) more than once (e.g. {repeated[0]!r}); an assignment has one row per image"
        )
    return rows


def as_folder_paths(rows: list[Row], folder: Path) -> list[Row]:
    """``rows`` with each path spelled as imgcluster spells a path below ``folder``, where that is unambiguous: Windows'
    ``\\`` between folders read as ``/`` (a CSV made or edited on Windows), a leading ``./`` left out (a list made by
    ``find .``). Only when no other file exists under ``folder`` as written (on Linux ``\\`` may be part of a file's
    name), the new spelling names one, and no other row names it. Such a CSV got the generic "no path matches" before."""
    names = {r.path for r in rows}
    targets = Counter(spelled for r in rows if (spelled := folder_spelling(r.path)) != r.path)
    out = []
    for row in rows:
        spelled = folder_spelling(row.path)
        if (
            spelled != row.path
            and all(spelled.split("/"))  # no empty folder name: not absolute, not a server's share, no doubled or trailing separator
            and targets[spelled] == 1
            and spelled not in names
            and (folder / row.path == folder / spelled or not os.path.lexists(folder / row.path))  # "./x": the same file
            and os.path.lexists(folder / spelled)
        ):
            row = dataclasses.replace(row, path=spelled)
        out.append(row)
    return out


def folder_spelling(path: str) -> str:
    """``path`` with ``/`` between folders and without a leading ``./``."""
    spelled = path.replace("\\", "/")
    while spelled.startswith("./"):
        spelled = spelled[2:]
    return spelled


def separator_hint(paths: Iterable[str]) -> str:
    """A clause for "no path matches": the CSV's paths use ``\\`` (as on Windows) and no file matched either way."""
    return "; its paths separate folders with '\\' (written on Windows?), imgcluster's with '/'" if any("\\" in p for p in paths) else ""


def written_raw(path: Path) -> bool:
    """Whether the sidecar of the CSV at ``path`` says its cells were written unescaped."""
    from imgcluster.config import sidecar_path

    try:
        sidecar = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        return sidecar["assign"]["raw_csv"] is True
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _unescaped(record: dict[str, str | None]) -> dict[str, str | None]:
    return {key: unescape_cell(value) if isinstance(value, str) else value for key, value in record.items()}


def _row(path: Path, number: int, record: dict[str, str | None]) -> Row:
    name = record["path"] or ""
    where = f"{path}, line {number} ({name!r})"
    if record["cluster"] is None:  # "cluster None is not a whole number"
        raise ImgclusterError(f"{where}: the row ends before its cluster column, with fewer cells than the header")
    cluster = _cluster(record["cluster"])
    shown = _shown(record["cluster"])
    if cluster is None:
        raise ImgclusterError(f"{where}: cluster {shown} is not a whole number")
    if cluster < 0:  # export named its folder "-1-...", which commands take for an option
        raise ImgclusterError(f"{where}: cluster {shown} is negative; cluster ids are whole numbers from 0")
    if cluster >= 2**63:  # it was called "not a whole number"
        raise ImgclusterError(f"{where}: cluster {shown} is out of range; cluster ids are whole numbers from 0 to 2**63 - 1")
    raw = record.get("confidence")
    try:
        confidence = float(raw) if raw not in (None, "") else math.nan
    except ValueError:
        raise ImgclusterError(f"{where}: confidence {raw!r} is not a number") from None
    outlier = _truthy(record.get("outlier"))
    reason = (record.get("outlier_reason") or "") if outlier else ""
    return Row(name, cluster, confidence, outlier, record.get("cluster_name") or "", reason)


def _cluster(text: str | None) -> int | None:
    """A cluster id: a whole number (``3`` or ``3.0``, of any size: the caller checks its range); None for anything else.

    ``int(float(...))`` truncated ``0.7`` to 0 and made ``inf`` an overflow, so both are refused.
    """
    try:
        exact = int(text or "")
    except ValueError:
        if whole := WHOLE.fullmatch(text or ""):  # beyond Python's limit of 4,300 digits for int(): still a whole number
            sign, digits = whole.groups()
            return 0 if not digits.replace("_", "").strip("0") else -1 if sign == "-" else 2**63
        try:
            value = float(text or "")
        except ValueError:
            return None
        if not value.is_integer():  # also refuses inf and nan
            return None
        exact = int(value)
    return exact


def _shown(text: str) -> str:
    """A cell as an error line shows it: whole when short, else its start and its length (a cluster id of 5,000 digits)."""
    return repr(text) if len(text) <= SHOWN else f"{text[:SHOWN]!r}... ({len(text):,} characters)"


def _truthy(value: str | None) -> bool:
    """``outlier`` column: 1/True/yes (any case, any number but 0) marks an outlier."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("true", "yes", "y"):
        return True
    try:
        return float(text) != 0.0
    except ValueError:
        return False
