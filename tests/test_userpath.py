"""``~`` in a path given to the Python API means the home folder, as it does on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagefolders import CLASSES, copy_sample
from test_exporting import write_csv

import imgcluster
from imgcluster.userpath import expand_home


def test_expand_home_keeps_the_type_and_leaves_other_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_home("~/x") == f"{tmp_path}/x"
    assert expand_home(Path("~/x")) == tmp_path / "x" and isinstance(expand_home(Path("~/x")), Path)
    for same in (None, "-", "s3://bucket/~x", "a/~/b", b"~/x", "x~"):
        assert expand_home(same) == same  # type: ignore[call-overload]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder in tmp_path, and a current folder where a literal ``~`` would appear."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "home"


def test_embed_cache_dir_under_home(home: Path, tmp_path: Path) -> None:
    """`cache_dir="~/x"` made a folder named "~" in the current folder; the CLI expanded it."""
    copy_sample(home / "photos", CLASSES[:1], per_class=2)
    embeddings = imgcluster.embed(home / "photos", "efficientnet-lite0", cache_dir="~/cache", device="cpu", workers=0)
    assert len(embeddings.paths) == 2 and (home / "cache").is_dir() and list((tmp_path / "cwd").iterdir()) == []
    again = imgcluster.embed("~/photos", "efficientnet-lite0", cache_dir="~/cache", device="cpu", workers=0)
    assert again.folder == home / "photos" and again.reused == 2  # the same cache, found from the same folder


def test_export_and_evaluate_take_home_paths(home: Path, tmp_path: Path) -> None:
    folder = copy_sample(home / "photos", CLASSES[:2], per_class=1)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    write_csv(home / "out.csv", [(p, i, "", 0) for i, p in enumerate(paths)])
    result = imgcluster.export("~/out.csv", "~/sorted", folder="~/photos")
    assert result.placed == 2 and (home / "sorted").is_dir()
    assert imgcluster.evaluate("~/out.csv", "~/photos").acc == 1.0
    assert list((tmp_path / "cwd").iterdir()) == []


def test_a_path_that_is_none_or_empty_is_refused_by_name(home: Path, tmp_path: Path) -> None:
    """`export(csv, to="")` exported into the current folder; `to=None` and `evaluate(None, ...)` were TypeErrors."""
    from imgcluster import ParameterError

    folder = copy_sample(home / "photos", CLASSES[:2], per_class=1)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    csv_path = write_csv(home / "out.csv", [(p, i, "", 0) for i, p in enumerate(paths)])
    cases = [
        (lambda: imgcluster.export(csv_path, "", folder=folder), "to is empty: give a folder", "to"),
        (lambda: imgcluster.export(csv_path, None, folder=folder), "to takes a folder, not None", "to"),  # type: ignore[arg-type]
        (lambda: imgcluster.evaluate(None, folder), "assignments takes the assignment CSV, not None", "assignments"),  # type: ignore[arg-type]
        (
            lambda: imgcluster.evaluate(csv_path, ""),
            "labelled_folder is empty: give a folder whose sub-folders are the labels",
            "labelled_folder",
        ),
        (lambda: imgcluster.write_report(""), "assignments is empty: give the assignment CSV", "assignments"),
        (lambda: imgcluster.export(csv_path, home / "sorted", folder=""), "folder is empty: give the image folder", "folder"),
        (lambda: imgcluster.write_report(csv_path, folder=""), "folder is empty: give the image folder", "folder"),
        (lambda: imgcluster.write_report(csv_path, labels=""), "labels is empty: give a folder whose sub-folders are the labels", "labels"),
        (lambda: imgcluster.cluster_folder("", model="efficientnet-lite0"), "folder is empty: give a folder", "folder"),
        (lambda: imgcluster.train_folder(3, model="efficientnet-lite0"), "folder takes a folder, not 3", "folder"),  # type: ignore[arg-type]
        (lambda: imgcluster.embed("", "efficientnet-lite0"), "folder_or_paths is empty: give a folder or a list of image files",
         "folder_or_paths"),
    ]
    for call, message, parameter in cases:
        with pytest.raises(ParameterError) as info:
            call()
        assert str(info.value) == message and info.value.parameters == (parameter,)
    assert list((tmp_path / "cwd").iterdir()) == []


def test_a_tilde_that_names_no_home_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out ~nosuchuser/x.csv` wrote into a new folder named ~nosuchuser in the current folder; with HOME set to "",
    `--out ~/x.csv` wrote /x.csv at the root."""
    from typer.testing import CliRunner

    from imgcluster import ParameterError
    from imgcluster.cli import app

    monkeypatch.chdir(tmp_path)
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    no_user = "~no-such-user-imgcluster/x.csv"
    said = f"{no_user}: there is no user no-such-user-imgcluster, so ~no-such-user-imgcluster names no home folder; write ./{no_user} "
    with pytest.raises(ParameterError) as info:
        imgcluster.cluster_folder(folder, out=no_user)
    assert str(info.value) == said + "for a folder of that name"
    for args in (["--out", no_user], [f"--out={no_user}"]):
        result = CliRunner().invoke(app, ["assign", str(folder), "-k", "2", *args])
        assert result.exit_code == 2 and result.stderr == f"error: {said}for a folder of that name\n"
    monkeypatch.setenv("HOME", "")
    result = CliRunner().invoke(app, ["export", "x.csv", "--to", "~/sorted"])
    assert result.exit_code == 2
    assert result.stderr == "error: ~/sorted: HOME is empty, so ~ names no folder; set HOME or give the whole path\n"
    assert list(tmp_path.iterdir()) == [folder]  # no ~no-such-user-imgcluster folder, nothing else
