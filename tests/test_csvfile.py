"""The assignments CSV: written once, read back exactly by evaluate and report, odd values refused in one line."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgcluster.assign import Assignment
from imgcluster.cli import app
from imgcluster.csvfile import Row, escape_cell, names_of_clusters, read_assignments, unescape_cell, write_assignments
from imgcluster.duplicates import DuplicateGroup, write_duplicates
from imgcluster.errors import ImgclusterError
from imgcluster.pipeline import write_skipped

runner = CliRunner()


def assignment(n: int, outlier: bool = False) -> Assignment:
    extra = {"outlier": np.array([i % 2 for i in range(n)]), "outlier_reason": np.array(["low-confidence"] * n)} if outlier else {}
    return Assignment(np.arange(n) % 3, np.linspace(0.2, 0.9, n, dtype=np.float32), extra)


def test_round_trip(tmp_path: Path) -> None:
    names = ["a.png", 'q "x", y.png', "new\nline.png", "ünï 名.webp"]
    out = tmp_path / "c.csv"
    write_assignments(str(out), names, assignment(len(names), outlier=True))
    rows = read_assignments(out)
    assert [r.path for r in rows] == names
    assert [r.cluster for r in rows] == [0, 1, 2, 0] and [r.outlier for r in rows] == [False, True, False, True]
    assert rows[0].confidence == pytest.approx(0.2)


def write_clusters(path: Path, clusters: list[str]) -> Path:
    path.write_text('"path","cluster","confidence"\n' + "".join(f'"img{i}.png",{c},0.5\n' for i, c in enumerate(clusters)))
    return path


@pytest.mark.parametrize("value", ["0.7", "inf", "-inf", "nan", "x", ""])
def test_cluster_ids_that_are_not_whole_numbers_are_refused(tmp_path: Path, value: str) -> None:
    """``int(float(...))`` truncated 0.7 to 0, and inf became -9223372036854775808 or an OverflowError."""
    csv = write_clusters(tmp_path / "odd.csv", ["1", value])
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(csv)
    assert str(caught.value) == f"{csv}, line 3 ('img1.png'): cluster {value!r} is not a whole number"


@pytest.mark.parametrize("value", ["9223372036854775808", "1e300", "18446744073709551616"])
def test_cluster_ids_above_64_bits_are_out_of_range_not_fractions(tmp_path: Path, value: str) -> None:
    """2**63 and 1e300 are whole numbers, and were reported as "not a whole number"."""
    csv = write_clusters(tmp_path / "odd.csv", ["1", value])
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(csv)
    assert str(caught.value) == (
        f"{csv}, line 3 ('img1.png'): cluster {value!r} is out of range; cluster ids are whole numbers from 0 to 2**63 - 1"
    )


@pytest.mark.parametrize(("value", "what"), [("7" * 5000, "is out of range; cluster ids are whole numbers from 0 to 2**63 - 1"),
                                           ("-" + "7" * 5000, "is negative; cluster ids are whole numbers from 0")])
def test_cluster_ids_beyond_pythons_digit_limit_are_out_of_range_in_a_short_line(tmp_path: Path, value: str, what: str) -> None:
    """int() refuses more than 4,300 digits, so such an id was "not a whole number", and the line showed all 5,000 of them."""
    csv = write_clusters(tmp_path / "odd.csv", ["1", value])
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(csv)
    assert str(caught.value) == f"{csv}, line 3 ('img1.png'): cluster {value[:40]!r}... ({len(value):,} characters) {what}"
    write_clusters(csv, ["1", "0" * 5000])  # leading zeros: a whole number all the same
    assert [r.cluster for r in read_assignments(csv)] == [1, 0]


def test_whole_cluster_ids_in_any_spelling_are_kept(tmp_path: Path) -> None:
    csv = write_clusters(tmp_path / "ok.csv", ["3", "3.0", " 4 ", "-0", "9007199254740993", "9223372036854775807"])
    assert [r.cluster for r in read_assignments(csv)] == [3, 3, 4, 0, 2**53 + 1, 2**63 - 1]


@pytest.mark.parametrize("command", ["evaluate", "report", "export"])
@pytest.mark.parametrize("value", ["-1", "-2.0"])
def test_negative_cluster_ids_are_refused_naming_the_row(tmp_path: Path, command: str, value: str) -> None:
    """A hand-edited -1 made export write a folder named "-1", which commands take for an option."""
    folder = tmp_path / "photos" / "cat"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"img{i}.png").write_bytes(b"x")
    csv = tmp_path / "odd.csv"
    csv.write_text(f'"path","cluster"\n"cat/img0.png",0\n"cat/img1.png",{value}\n')
    where = ["--folder", str(tmp_path / "photos")]
    args = {"evaluate": [str(tmp_path / "photos")], "report": where, "export": ["--to", str(tmp_path / "sorted"), *where]}[command]
    result = runner.invoke(app, [command, str(csv), *args])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"error: {csv}, line 3 ('cat/img1.png'): cluster {value!r} is negative; cluster ids are whole numbers from 0\n"
    assert not (tmp_path / "sorted").exists() and not (tmp_path / "odd.html").exists()


@pytest.mark.parametrize("command", ["evaluate", "report", "export"])
def test_a_csv_written_on_windows_is_read_with_its_backslashes_as_folders(tmp_path: Path, command: str) -> None:
    """A CSV made or edited on Windows names "cat\\img0.png": evaluate said "no path matches", report showed every image
    as missing, export left every one out."""
    from imagefolders import sample_image

    photos = tmp_path / "photos"
    for rel in ("cat/img0.png", "cat/img1.png", "dog/img2.png"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        sample_image().save(photos / rel)
    csv = tmp_path / "windows.csv"
    csv.write_text('"path","cluster","confidence"\r\n"cat\\img0.png",0,0.9\r\n"cat\\img1.png",0,0.8\r\n"dog\\img2.png",1,0.7\r\n')
    where = ["--folder", str(photos)]
    args = {"evaluate": [str(photos)], "report": where, "export": ["--to", str(tmp_path / "sorted"), *where]}[command]
    result = runner.invoke(app, [command, str(csv), *args])
    assert result.exit_code == 0, result.stderr
    assert "missing" not in result.stderr and "not found" not in result.stderr
    if command == "evaluate":
        assert "ACC (Hungarian)" in result.stdout and "1.0000" in result.stdout
    if command == "export":
        assert sorted(p.relative_to(tmp_path / "sorted").as_posix() for p in (tmp_path / "sorted").rglob("*.png")) == [
            "00/cat/img0.png", "00/cat/img1.png", "01/dog/img2.png",
        ]  # fmt: skip


def test_backslashes_and_a_leading_dot_slash_are_read_as_imgcluster_spells_paths_only_when_unambiguous(tmp_path: Path) -> None:
    """On Linux "\\" may be part of a file's name: such a file, a path also listed with "/", or two rows that would become
    one, stay as written; a CSV whose paths match nothing either way says what its paths look like."""
    from imgcluster.csvfile import as_folder_paths
    from imgcluster.scoring import evaluate

    (tmp_path / "a").mkdir()
    for name in ("a/b.png", "a/c.png", "a/e.png", "x\\y.png", "x"):
        (tmp_path / name).touch() if name != "x" else (tmp_path / name).mkdir()
    (tmp_path / "x" / "y.png").touch()
    rows = [Row(p, 0, 0.5, False) for p in ["a\\b.png", "x\\y.png", "a\\c.png", "a/c.png", "a/e\\", "\\\\a\\b.png"]]
    assert [r.path for r in as_folder_paths(rows, tmp_path)] == [
        "a/b.png", "x\\y.png", "a\\c.png", "a/c.png", "a/e\\", "\\\\a\\b.png",
    ]  # fmt: skip
    twice = [Row("a\\b/c.png", 0, 0.5, False), Row("a/b\\c.png", 0, 0.5, False)]
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "a" / "b" / "c.png").touch()
    assert as_folder_paths(twice, tmp_path) == twice  # "a/b/c.png" twice: left as written
    found = [Row(p, 0, 0.5, False) for p in ["./a/e.png", ".\\a\\b.png", ".//x/y.png", "./"]]  # a list made by `find .`
    assert [r.path for r in as_folder_paths(found, tmp_path)] == ["a/e.png", "a/b.png", ".//x/y.png", "./"]  # never "/x/y.png"
    labelled = tmp_path / "labelled" / "cat"
    labelled.mkdir(parents=True)
    (labelled / "img0.png").touch()
    csv = tmp_path / "gone.csv"
    csv.write_text('"path","cluster"\n"cat\\img9.png",0\n')
    with pytest.raises(ImgclusterError) as info:
        evaluate(csv, tmp_path / "labelled")
    assert str(info.value) == (
        f"no path in gone.csv matches an image in {tmp_path / 'labelled'}; its paths separate folders with '\\' (written on Windows?), "
        "imgcluster's with '/'; were they made from the same folder?"
    )


def test_missing_confidence_is_nan_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text('"path","cluster"\n"a.png",1\n')
    assert math.isnan(read_assignments(tmp_path / "a.csv")[0].confidence)
    (tmp_path / "b.csv").write_text('"path","cluster","confidence"\n"a.png",1,"high"\n')
    with pytest.raises(ImgclusterError, match=r"line 2 \('a.png'\): confidence 'high' is not a number"):
        read_assignments(tmp_path / "b.csv")


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_odd_cluster_ids_are_one_line_errors_in_the_cli(tmp_path: Path, command: str) -> None:
    labelled = tmp_path / "labelled" / "cat"
    labelled.mkdir(parents=True)
    (labelled / "img0.png").write_bytes(b"x")
    csv = write_clusters(tmp_path / "odd.csv", ["0", "inf"])
    args = [command, str(csv), str(tmp_path / "labelled")] if command == "evaluate" else [command, str(csv), "--folder", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"error: {csv}, line 3 ('img1.png'): cluster 'inf' is not a whole number\n"


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\").png", "+SUM(1).png", "@SUM(1).png", "-cmd.png", "\tx.png", "\rx.png"]
APOSTROPHES = ["'quoted.png", "'", "''", "'=x.png", "''=x.png", "'-1.png"]
PLAIN = ["a.png", "x=1.png", "dir/=y.png", "-", "="]


def cells(path: Path) -> list[str]:
    return [row[0] for row in csv.reader(path.open(encoding="utf-8", newline=""))][1:]


def test_a_csv_cut_short_inside_a_quoted_cell_is_refused(tmp_path: Path) -> None:
    """A copy cut short in a cluster name read back without a word: the name short, the rows after it gone."""
    whole = tmp_path / "whole.csv"
    named = Assignment(np.array([0, 1]), np.array([0.5, 0.5]), {"cluster_name": np.array(["sandal", "bag"])})
    write_assignments(str(whole), ["a.png", "b.png"], named)
    text = whole.read_text()
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: text.index('"sandal"') + 4])
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(cut)
    assert str(caught.value) == f"cannot read assignments {cut}: unexpected end of data"
    assert [r.name for r in read_assignments(whole)] == ["sandal", "bag"]


def test_the_csv_to_a_full_standard_output_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`assign --out - > /dev/full` ended with `unexpected OSError`; a closed pipe stays a BrokenPipeError (exit 141)."""
    import errno

    class Refusing(io.StringIO):
        def __init__(self, error: OSError) -> None:
            super().__init__()
            self.error = error

        def flush(self) -> None:
            raise self.error

    monkeypatch.setattr(sys, "stdout", Refusing(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(ImgclusterError) as caught:
        write_assignments("-", ["a.png"], assignment(1))
    assert str(caught.value) == "cannot write to standard output: No space left on device"
    monkeypatch.setattr(sys, "stdout", Refusing(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    with pytest.raises(BrokenPipeError):
        write_assignments("-", ["a.png"], assignment(1))


def test_a_csv_on_a_stdout_that_is_not_utf8_is_written_in_utf8(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under PYTHONIOENCODING=ascii (or a Latin-1 locale) `assign --out -` ended its whole run in "unexpected
    UnicodeEncodeError" at the first accented name; the CSV is UTF-8 wherever it goes."""
    names = ["bäg ☂/a.png", "plain.png"]
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    stdout.write("before ")
    write_assignments("-", names, assignment(2))
    stdout.write("after")  # the stream keeps working: the UTF-8 writer let go of its buffer
    stdout.flush()
    text = raw.getvalue().decode("utf-8")
    assert text.startswith("before ") and text.endswith("after")
    (tmp_path / "out.csv").write_text(text[len("before ") : -len("after")], encoding="utf-8")
    assert [row.path for row in read_assignments(tmp_path / "out.csv")] == names


def test_escaping_is_unambiguous() -> None:
    for name in FORMULAS + APOSTROPHES + PLAIN:
        escaped = escape_cell(name)
        assert unescape_cell(escaped) == name and escaped[:1] not in "=+-@\t\r"
    assert escape_cell("=1") == "'=1" and escape_cell("'a") == "''a" and escape_cell("a=1") == "a=1"
    assert unescape_cell("'abc") == "'abc"  # an apostrophe the writer did not add is kept


def test_formula_cells_are_escaped_and_read_back_exactly(tmp_path: Path) -> None:
    """Quoting alone left `=HYPERLINK(...)` for a spreadsheet to run (OWASP: prefix such cells with ')."""
    names = FORMULAS + APOSTROPHES + PLAIN
    out = tmp_path / "c.csv"
    write_assignments(str(out), names, assignment(len(names), outlier=True))
    assert cells(out) == [escape_cell(n) for n in names] and not any(c[:1] in "=+-@\t\r" for c in cells(out))
    assert [r.path for r in read_assignments(out)] == names


def test_raw_csv_writes_cells_as_they_are_and_reads_back_exactly(tmp_path: Path) -> None:
    names = FORMULAS + APOSTROPHES + PLAIN
    out = tmp_path / "raw.csv"
    write_assignments(str(out), names, assignment(len(names)), raw_csv=True)
    assert cells(out) == names
    assert [r.path for r in read_assignments(out, raw_csv=True)] == names
    (tmp_path / "raw.csv.json").write_text(json.dumps({"assign": {"raw_csv": True}}))  # what assign records
    assert [r.path for r in read_assignments(out)] == names
    (tmp_path / "raw.csv.json").unlink()  # without a sidecar only a leading ' before = + - @ ' is ambiguous
    with pytest.raises(ImgclusterError, match=r"lists 1 path\(s\) more than once \(e.g. \"'\"\)"):
        read_assignments(out)  # '' read as ' is then the name ' twice
    names.remove("'")
    write_assignments(str(out), names, assignment(len(names)), raw_csv=True)
    assert [r.path for r in read_assignments(out)] == [n[1:] if n in ("''", "'=x.png", "''=x.png", "'-1.png") else n for n in names]


def test_skipped_list_and_duplicates_are_escaped_too(tmp_path: Path) -> None:
    write_skipped(tmp_path / "s.csv", [("=cmd.png", "not an image")])
    assert cells(tmp_path / "s.csv") == ["'=cmd.png"] and (tmp_path / "s.csv").read_bytes().endswith(b'"not an image"\r\n')
    write_skipped(tmp_path / "r.csv", [("=cmd.png", "not an image")], raw_csv=True)
    assert cells(tmp_path / "r.csv") == ["=cmd.png"]
    groups = [DuplicateGroup([0, 1], [1.0, 0.99], ["", "exact"])]
    rows = lambda p: list(csv.reader(p.open(encoding="utf-8", newline="")))[1:]  # noqa: E731
    write_duplicates(tmp_path / "d.csv", ["@a.png", "b.png"], groups)
    assert [r[1] for r in rows(tmp_path / "d.csv")] == ["'@a.png", "b.png"]
    write_duplicates(tmp_path / "e.csv", ["@a.png", "b.png"], groups, raw_csv=True)
    assert [r[1] for r in rows(tmp_path / "e.csv")] == ["@a.png", "b.png"]


KILLED_WRITER = """
import sys, types
import numpy as np
from imgcluster.csvfile import write_assignments

n = int(sys.argv[2])
paths = [f"folder {i % 97}/image {i:08d} with a long enough name.png" for i in range(n)]
assignment = types.SimpleNamespace(cluster=np.arange(n) % 10, confidence=np.full(n, 0.5, np.float32), extra={})
write_assignments(sys.argv[1], paths, assignment)
"""
ROWS = 600_000


def write_in_child(target: Path, rows: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(rows)])


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_bytes", [1, 8_000_000])
@pytest.mark.parametrize("old", [True, False])
def test_sigkill_while_the_csv_is_written_leaves_the_old_file_or_none(tmp_path: Path, kill_after_bytes: int, old: bool) -> None:
    """Killed inside the write window (the temporary file half-written), the CSV is the old one, or absent."""
    target = tmp_path / "clusters.csv"
    if old:
        write_in_child(target, 5).wait(timeout=120)
    before = target.read_bytes() if old else None
    proc = write_in_child(target, ROWS)
    deadline = time.monotonic() + 120
    temp: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        temp = list(tmp_path.glob(".clusters.csv.*.tmp"))
        if temp and temp[0].stat().st_size >= kill_after_bytes:
            break
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (left,) = temp
    partial = left.stat().st_size
    assert kill_after_bytes <= partial < ROWS * 50  # killed inside the window: the new file was far from complete
    if old:
        assert target.read_bytes() == before and len(read_assignments(target)) == 5
    else:
        assert not target.exists()


@pytest.mark.slow
def test_a_csv_write_that_is_not_killed_is_complete(tmp_path: Path) -> None:
    """The control for the kill test: the same writer, left alone, leaves the whole new file and no temporary one."""
    target = tmp_path / "clusters.csv"
    write_in_child(target, 5).wait(timeout=120)
    assert write_in_child(target, 200_000).wait(timeout=300) == 0
    assert len(read_assignments(target)) == 200_000 and list(tmp_path.iterdir()) == [target]


def test_each_cluster_has_one_name_its_rows_most_common() -> None:
    named = [("a", 0, ""), ("b", 0, "shoe"), ("c", 0, "boot"), ("d", 0, "boot"), ("e", 1, "x"), ("f", 1, "y"), ("g", 2, "")]
    rows = [Row(path, cluster, 0.5, False, name) for path, cluster, name in named]
    assert names_of_clusters(rows) == {0: "boot", 1: "x"}  # a tie goes to the first seen; a cluster without names has none


def test_a_csv_saved_by_a_spreadsheet_reads_back_or_says_what_is_wrong(tmp_path: Path) -> None:
    """A spreadsheet's "CSV UTF-8" starts with a byte-order mark: 'missing column(s) path'. One saved with ';' said the same."""
    text = '"path","cluster"\r\n"a.png",1\r\n"=b.png",0\r\n'
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [(r.path, r.cluster) for r in read_assignments(tmp_path / "bom.csv")] == [("a.png", 1), ("=b.png", 0)]
    (tmp_path / "semicolons.csv").write_text("path;cluster\na.png;1\n")
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(tmp_path / "semicolons.csv")
    expected = "is not an assignment CSV: missing column(s) path, cluster (its columns are separated by ';': save it with commas)"
    assert str(caught.value) == f"{tmp_path / 'semicolons.csv'} {expected}"


@pytest.mark.parametrize("command", [["evaluate", "-", "{folder}"], ["report", "-"], ["export", "-", "--to", "{to}"]])
def test_a_csv_named_dash_points_to_dev_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    """`assign --out -` writes the CSV to stdout, so `... | imgcluster evaluate - FOLDER` was tried: "assignments file not found: -"."""
    from typer.testing import CliRunner

    from imgcluster.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    args = [a.format(folder=tmp_path / "photos", to=tmp_path / "sorted") for a in command]
    result = CliRunner().invoke(app, args, input='"path","cluster"\n"a.png",0\n')
    assert result.exit_code == 2, result.stderr
    assert result.stderr == (
        "error: CSV - is not standard input here: evaluate reads a pipe given as /dev/stdin; report and export read a saved CSV\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'"path","cluster","confidence"\n"a.png",0,0.5\n"b.png"\n', "{csv}, line 3 ('b.png'): the row ends before its cluster column, "
         "with fewer cells than the header"),
        (b'"path","cluster","cluster"\n"a.png",0,0.5\n', "{csv} has column(s) cluster more than once in its header; keep one of each"),
        (b"", "{csv} is empty; give the CSV that assign wrote"),  # "missing column(s) path, cluster" (a `> x.csv` onto it)
        (b'"path","cluster"\n"caf\xe9.png",0\n', "cannot read assignments {csv}: it is not UTF-8 text (a byte 0xe9); save it as CSV UTF-8"),
    ],
)  # fmt: skip
def test_a_hand_edited_csv_says_what_is_wrong_with_it(tmp_path: Path, content: bytes, message: str) -> None:
    """A short row was "cluster None is not a whole number"; a second cluster column was read instead of the first,
    silently; a Latin-1 file was "'utf-8' codec can't decode byte 0xe9 in position 20: invalid continuation byte"."""
    csv = tmp_path / "edited.csv"
    csv.write_bytes(content)
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(csv)
    assert str(caught.value) == message.format(csv=csv)
    result = runner.invoke(app, ["evaluate", str(csv), str(tmp_path)])
    assert result.exit_code == 1 and result.stderr == f"error: {message.format(csv=csv)}\n"
