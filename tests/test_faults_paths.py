"""Hostile file names and symbolic links, through the real command line.

Names with spaces, newlines, tabs, carriage returns, quotes, commas, backslashes, unicode, 255
bytes, and ones a spreadsheet would run as formulas (``=cmd|' /C calc'!A0``, ``+1``, ``@x``)
must come back from ``assign``'s CSV exactly, and ``evaluate`` must match every row. A name that
is not UTF-8 is skipped with a reason, escaped in ``skipped.csv``. Links outside the folder are
followed only with ``--follow-symlinks``; link loops end.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from faults import record, untrained_head
from imagefolders import CLASSES, SAMPLE
from typer.testing import CliRunner

from imgcluster.cache import read_shard
from imgcluster.cli import app
from imgcluster.csvfile import unescape_cell

EMBED = ["--model", "efficientnet-lite0", "--workers", "0", "--embed-batch-size", "8"]
LONG = "é" * 125 + "x.png"  # 255 bytes in UTF-8: NAME_MAX
HOSTILE = {
    CLASSES[0]: ["with space.png", "new\nline.png", "tab\tname.png", "cr\rname.png", " leading space.png", LONG],
    CLASSES[1]: ['"quoted".png', "comma,name.png", "back\\slash.png", "ünïcødé 名前.png", "semi;colon.png", "+1.png"],
    "=cmd|' ": ["C calc'!A0.png", "@x.png", "-1+1.png", "=HYPERLINK(x).png", "%0A.png", "normal.png"],
}
NOT_UTF8 = b"bad\xff\xfename.png"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def images(cls: str) -> list[Path]:
    return sorted((SAMPLE / cls).glob("*.png"))


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    root = tmp_path / "hostile"
    for n, (label, names) in enumerate(HOSTILE.items()):
        (root / label).mkdir(parents=True)
        for name, src in zip(names, images(CLASSES[n])):
            shutil.copy2(src, root / label / name)
    shutil.copy2(images(CLASSES[3])[0], os.path.join(os.fsencode(root / CLASSES[0]), NOT_UTF8))
    return root


def expected_paths() -> set[str]:
    return {f"{label}/{name}" for label, names in HOSTILE.items() for name in names}


def test_hostile_names_round_trip_through_csv_and_evaluate(hostile_folder: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert len(LONG.encode()) == 255
    cache = tmp_path / "cache"
    embedded = invoke("embed", hostile_folder, "--cache-dir", cache, *EMBED)
    assert embedded.exit_code == 0, embedded.stderr
    assert "embedded 18, reused 0, skipped 1" in embedded.stderr
    assert "1 file name(s) are not valid UTF-8 and will be skipped" in embedded.stderr  # before "18 images: ..."
    assert embedded.stderr.index("not valid UTF-8") < embedded.stderr.index("18 images: 0 cached, 18 to embed")
    head = untrained_head(tmp_path / "head.safetensors", cache)
    out = tmp_path / "out" / "clusters.csv"
    result = invoke("assign", hostile_folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED)
    assert result.exit_code == 0, result.stderr
    assert "skipped 1 unreadable file;" in result.stderr

    rows = list(csv.reader(out.open(encoding="utf-8", newline="")))
    assert rows[0][:3] == ["path", "cluster", "confidence"] and all(len(r) == len(rows[0]) for r in rows)
    assert {unescape_cell(r[0]) for r in rows[1:]} == expected_paths() and len(rows) == 19  # every name exactly, once
    assert not any(cell[:1] in "=+-@\t\r" for r in rows for cell in r if cell)  # no cell a spreadsheet would run

    raw = tmp_path / "out" / "raw.csv"  # --raw-csv: the names as they are, and evaluate reads them too
    assert invoke("assign", hostile_folder, "--cache-dir", cache, "--head", head, "--out", raw, "--raw-csv", *EMBED).exit_code == 0
    assert {r[0] for r in list(csv.reader(raw.open(encoding="utf-8", newline="")))[1:]} == expected_paths()
    assert json.loads(invoke("evaluate", raw, hostile_folder, "--json").stdout)["matched"] == 18
    assert json.loads(raw.with_name("raw.csv.json").read_text())["assign"]["raw_csv"] is True  # how evaluate knows

    stdout = invoke("assign", hostile_folder, "--cache-dir", cache, "--head", head, "--out", "-", "--quiet", *EMBED)
    assert stdout.exit_code == 0 and stdout.stdout_bytes == out.read_bytes()
    assert list(csv.reader(io.StringIO(stdout.stdout, newline=""))) == rows

    evaluated = invoke("evaluate", out, hostile_folder, "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)
    assert scores["matched"] == 18 and scores["unmatched_assignments"] == 0
    assert scores["classes"] == 3  # the "=cmd|' " folder is a label like any other

    skipped = (out.parent / "clusters-skipped.csv").read_bytes().decode("utf-8")  # valid UTF-8 despite the name
    skipped_rows = list(csv.reader(io.StringIO(skipped, newline="")))
    assert skipped_rows[1] == [f"{CLASSES[0]}/bad\\xff\\xfename.png", "file name is not valid UTF-8; rename the file"]
    record(request.config, "hostile_paths", {"names": len(expected_paths()) + 1, "round_tripped": len(rows) - 1, "failures": 0})


@pytest.fixture
def linked_folder(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    for src in images(CLASSES[4])[:2]:
        shutil.copy2(src, outside / src.name)
    root = tmp_path / "root"
    for cls in CLASSES[:3]:
        (root / cls).mkdir(parents=True)
        for src in images(cls)[:2]:
            shutil.copy2(src, root / cls / src.name)
    os.symlink(outside, root / "ext")  # a folder outside
    os.symlink(outside / images(CLASSES[4])[0].name, root / "file-link.png")  # a file outside
    os.symlink(root, root / CLASSES[0] / "loop")  # back to the top
    os.symlink("..", root / CLASSES[1] / "up")  # relative loop
    os.symlink(root / CLASSES[2], root / "inside-link")  # inside: followed, but each folder once
    os.symlink(tmp_path / "nowhere", root / "dangling.png")  # broken
    return root


def cached_paths(cache: Path) -> set[str]:
    (directory,) = cache.glob("folders/*/embeddings/efficientnet-lite0-*")
    (shard,) = (directory / "shards").glob("*.safetensors")
    return {rel for rel, _, _ in read_shard(shard)[1]}


@pytest.mark.timeout(300)
def test_symlinks_through_the_cli(linked_folder: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    inside = {f"{cls}/{p.name}" for cls in CLASSES[:3] for p in images(cls)[:2]}
    plain = invoke("embed", linked_folder, "--cache-dir", tmp_path / "c1", *EMBED)
    assert plain.exit_code == 0, plain.stderr
    assert "6 images: 0 cached, 6 to embed" in plain.stderr
    assert cached_paths(tmp_path / "c1") == inside

    followed = invoke("embed", linked_folder, "--cache-dir", tmp_path / "c2", "--follow-symlinks", *EMBED)
    assert followed.exit_code == 0, followed.stderr
    outside = {f"ext/{p.name}" for p in images(CLASSES[4])[:2]} | {"file-link.png"}
    assert cached_paths(tmp_path / "c2") == inside | outside
    record(request.config, "symlinks", {"inside": len(inside), "outside_followed_with_flag": len(outside), "loops": 2, "failures": 0})
