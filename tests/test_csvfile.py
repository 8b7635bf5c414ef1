"""The assignments CSV: written once, read back exactly by evaluate and report, odd values refused in one line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgcluster.assign import Assignment
from imgcluster.cli import app
from imgcluster.csvfile import read_assignments, write_assignments
from imgcluster.errors import ImgclusterError

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


@pytest.mark.parametrize("value", ["0.7", "inf", "-inf", "nan", "1e300", "9223372036854775808", "x", ""])
def test_cluster_ids_that_are_not_whole_numbers_are_refused(tmp_path: Path, value: str) -> None:
    """``int(float(...))`` truncated 0.7 to 0, and inf became -9223372036854775808 or an OverflowError."""
    csv = write_clusters(tmp_path / "odd.csv", ["1", value])
    with pytest.raises(ImgclusterError) as caught:
        read_assignments(csv)
    assert str(caught.value) == f"{csv}, line 3 ('img1.png'): cluster {value!r} is not a whole number"


def test_whole_cluster_ids_in_any_spelling_are_kept(tmp_path: Path) -> None:
    csv = write_clusters(tmp_path / "ok.csv", ["3", "3.0", " 4 ", "-2", "9007199254740993", "9223372036854775807"])
    assert [r.cluster for r in read_assignments(csv)] == [3, 3, 4, -2, 2**53 + 1, 2**63 - 1]


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
