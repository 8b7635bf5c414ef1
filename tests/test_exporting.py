"""``imgcluster.export`` and ``imgcluster export``: folders per cluster that never touch the user's files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from imagefolders import CLASSES, copy_sample
from typer.testing import CliRunner

import imgcluster
from imgcluster.cli import app
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.exporting import folder_name


def write_csv(path: Path, rows: list[tuple[str, int, str, int]]) -> Path:
    lines = ['"path","cluster","confidence","cluster_name","outlier"\n']
    lines += [f'"{p}",{c},0.9,"{n}",{o}\n' for p, c, n, o in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def assigned(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """An image folder (two classes, three images each) and a CSV naming its two clusters; one image is an outlier."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    rows = [(p, i // 3, "sandal, running shoe" if i < 3 else "mailbag", int(i == 5)) for i, p in enumerate(paths)]
    return folder, write_csv(tmp_path / "out.csv", rows), paths


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_link_export_and_rerun(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, csv_path, paths = assigned
    before = {p: (os.stat(folder / p).st_ino, (folder / p).read_bytes()) for p in paths}
    to = tmp_path / "sorted"
    result = imgcluster.export(csv_path, to, folder=folder)
    assert sorted(p.name for p in to.iterdir()) == ["00-sandal-running-shoe", "01-mailbag", "outliers"]
    assert (result.placed, result.kept, result.conflicts, result.refused) == (6, 0, [], [])
    for i, p in enumerate(paths):
        where = "outliers" if i == 5 else ("00-sandal-running-shoe" if i < 3 else "01-mailbag")
        placed = to / where / p
        assert placed.is_file() and not placed.is_symlink() and os.path.samefile(placed, folder / p)  # a hard link
    again = imgcluster.export(csv_path, to, folder=folder)
    assert (again.placed, again.kept, again.conflicts) == (0, 6, [])
    assert {p: (os.stat(folder / p).st_ino, (folder / p).read_bytes()) for p in paths} == before  # nothing moved or changed


def test_an_export_over_an_earlier_one_of_other_clusters_says_what_it_left(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    """Export, assign again (other clusters), export into the same folder: every moved image sat in its old cluster's
    folder and its new one (18 files for 10 images, on a real run), and the run said "exported 10 images"."""
    folder, csv_path, paths = assigned
    to = tmp_path / "sorted"
    imgcluster.export(csv_path, to, folder=folder)
    rows = [(p, 0 if i in (0, 1, 3) else 1, "sandal, running shoe" if i in (0, 1, 3) else "mailbag", 0) for i, p in enumerate(paths)]
    events: list[imgcluster.Event] = []
    again = imgcluster.export(write_csv(tmp_path / "new.csv", rows), to, folder=folder, progress=events.append)
    assert (again.placed, again.kept) == (3, 3)  # 2 and 3 changed clusters, 5 is no longer an outlier; 0, 1 and 4 stayed
    left = [to / "00-sandal-running-shoe" / paths[2], to / "01-mailbag" / paths[3], to / "outliers" / paths[5]]
    assert again.stale == sorted(left) and all(p.is_file() for p in left)  # said, and nothing deleted
    warnings = [e.message for e in events if e.kind == "warning"]
    assert warnings == [
        f"3 files in {to} are these images in other cluster folders, from an earlier export (e.g. {min(left)}); "
        "nothing was deleted: export into a new folder to see this assignment alone"
    ]
    assert imgcluster.export(write_csv(tmp_path / "new.csv", rows), tmp_path / "fresh", folder=folder).stale == []


def test_symlink_and_copy_modes(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, csv_path, paths = assigned
    imgcluster.export(csv_path, tmp_path / "links", "symlink", folder=folder)
    link = tmp_path / "links" / "00-sandal-running-shoe" / paths[0]
    assert link.is_symlink() and os.path.samefile(link, folder / paths[0])
    imgcluster.export(csv_path, tmp_path / "copies", "copy", folder=folder)
    copy = tmp_path / "copies" / "00-sandal-running-shoe" / paths[0]
    assert not copy.is_symlink() and not os.path.samefile(copy, folder / paths[0])
    assert copy.read_bytes() == (folder / paths[0]).read_bytes()
    assert not [p for p in (tmp_path / "copies").rglob(".*")]  # no temporary file left
    again = imgcluster.export(csv_path, tmp_path / "copies", "copy", folder=folder)
    assert (again.placed, again.kept) == (0, 6)
    with pytest.raises(ParameterError, match="mode"):
        imgcluster.export(csv_path, tmp_path / "x", "move", folder=folder)


@pytest.mark.parametrize("mode", ["link", "symlink"])
def test_an_export_onto_an_earlier_copy_export_keeps_the_copies(assigned: tuple[Path, Path, list[str]], tmp_path: Path, mode: str) -> None:
    """A link export after a copy export onto the same folder warned that each identical copy was a file of the user's."""
    folder, csv_path, paths = assigned
    to = tmp_path / "sorted"
    imgcluster.export(csv_path, to, "copy", folder=folder)
    events: list[imgcluster.Event] = []
    again = imgcluster.export(csv_path, to, mode, folder=folder, progress=events.append)
    assert (again.placed, again.kept, again.conflicts) == (0, 6, [])
    assert not [e for e in events if e.kind == "warning"]
    (to / "01-mailbag" / paths[3]).write_bytes(b"edited since")  # a copy that is no longer the image is not
    assert len(imgcluster.export(csv_path, to, mode, folder=folder).conflicts) == 1


@pytest.mark.parametrize("mode", ["link", "symlink", "copy"])
def test_a_foreign_file_is_never_overwritten(assigned: tuple[Path, Path, list[str]], tmp_path: Path, mode: str) -> None:
    folder, csv_path, paths = assigned
    to = tmp_path / "sorted"
    mine = to / "00-sandal-running-shoe" / paths[0]
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    (to / "01-mailbag").write_bytes(b"a file where a folder would go")
    events: list[imgcluster.Event] = []
    result = imgcluster.export(csv_path, to, mode, folder=folder, progress=events.append)
    assert mine.read_bytes() == b"the user's own file" and (to / "01-mailbag").read_bytes() == b"a file where a folder would go"
    assert result.placed == 3 and len(result.conflicts) == 3  # paths[0], and paths[3], paths[4] under the file
    assert any(e.kind == "warning" and "nothing was overwritten" in str(e) for e in events)


def test_a_foreign_link_out_of_the_export_is_not_followed(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, csv_path, _ = assigned
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    to = tmp_path / "sorted"
    to.mkdir()
    (to / "01-mailbag").symlink_to(elsewhere)
    result = imgcluster.export(csv_path, to, "copy", folder=folder)
    assert list(elsewhere.iterdir()) == [] and len(result.conflicts) == 2


def test_rows_outside_the_image_folder_are_refused(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, _, paths = assigned
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not yours")
    (folder / "escape.png").symlink_to(secret)
    rows = [(paths[0], 0, "a", 0), ("../secret.png", 0, "a", 0), (str(secret), 0, "a", 0), ("escape.png", 0, "a", 0)]
    csv_path = write_csv(tmp_path / "evil.csv", rows)
    result = imgcluster.export(csv_path, tmp_path / "sorted", folder=folder)
    assert result.placed == 1 and [why for _, why in result.refused] == [
        "leads out of the image folder (..)", "an absolute path", "a link that leads out of the image folder",
    ]  # fmt: skip
    assert tree(tmp_path / "sorted") == {f"00-a/{paths[0]}": (folder / paths[0]).read_bytes()}
    with pytest.raises(ParameterError, match="inside the image folder"):
        imgcluster.export(csv_path, folder / "sorted", folder=folder)


def test_a_cluster_named_differently_on_some_rows_gets_one_folder(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    """An edited or concatenated CSV: cluster 0's rows say "boot", "boot" and "shoe". Export made a folder per row's name
    (00-boot and 00-shoe); it is one cluster, so one folder, under its most common name (as the report and evaluate show it)."""
    folder, _, paths = assigned
    rows = [(p, i // 3, ["boot", "shoe", "boot", "", "mailbag", "mailbag"][i], 0) for i, p in enumerate(paths)]
    csv_path = write_csv(tmp_path / "mixed.csv", rows)
    to = tmp_path / "sorted"
    assert imgcluster.export(csv_path, to, folder=folder).placed == 6
    assert sorted(p.name for p in to.iterdir()) == ["00-boot", "01-mailbag"]
    assert sorted(p.relative_to(to / "00-boot").as_posix() for p in (to / "00-boot").rglob("*.png")) == paths[:3]


def test_folder_names_are_safe_for_any_file_system() -> None:
    assert folder_name(3, "sandal, running shoe", 2) == "03-sandal-running-shoe"
    assert folder_name(3, "../../Évil/na:me*?\n", 3) == "003-evil-na-me"  # accents dropped, not the letters under them
    assert folder_name(4, "footwear: sandal, clog", 2) == "04-footwear-sandal-clog" and folder_name(5, "café crème", 2) == "05-cafe-creme"
    assert folder_name(6, "日本語", 2) == "06"
    assert folder_name(12, "", 2) == "12" and folder_name(1, "///", 2) == "01"
    assert len(folder_name(0, "x" * 500, 2)) == 63


def test_near_duplicates_get_their_own_folders(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, csv_path, paths = assigned
    (tmp_path / "out-duplicates.csv").write_text(
        f'"group","path","similarity"\n0,"{paths[0]}",1.0\n0,"{paths[1]}",0.99\n1,"../x.png",1.0\n', encoding="utf-8"
    )
    imgcluster.export(csv_path, tmp_path / "sorted", folder=folder)
    group = tmp_path / "sorted" / "duplicates" / "000"
    assert sorted(p.relative_to(group).as_posix() for p in group.rglob("*.png")) == paths[:2]
    assert (tmp_path / "sorted" / "00-sandal-running-shoe" / paths[0]).is_file()  # still in its cluster too


def test_near_duplicates_written_on_windows_get_their_folders_too(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    """The CSV's Windows paths were read as folders, its duplicates' were not: the groups were left out without a word."""
    folder, _, paths = assigned
    windows = [p.replace("/", "\\") for p in paths]
    rows = [(p, i // 3, "sandal" if i < 3 else "mailbag", 0) for i, p in enumerate(windows)]
    csv_path = write_csv(tmp_path / "win.csv", rows)
    (tmp_path / "win-duplicates.csv").write_text(
        f'"group","path","similarity"\n0,"{windows[0]}",1.0\n0,"{windows[1]}",0.99\n', encoding="utf-8"
    )
    imgcluster.export(csv_path, tmp_path / "sorted", folder=folder)
    group = tmp_path / "sorted" / "duplicates" / "000"
    assert sorted(p.relative_to(group).as_posix() for p in group.rglob("*.png")) == paths[:2]


def test_a_duplicates_csv_cut_short_is_refused(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    """Cut short inside a quoted path, the last group's last image was read as a shorter path, without a word."""
    folder, csv_path, paths = assigned
    duplicates = tmp_path / "out-duplicates.csv"
    duplicates.write_text(f'"group","path","similarity"\n0,"{paths[0]}",1.0\n0,"{paths[1][:-4]}', encoding="utf-8")
    with pytest.raises(ImgclusterError) as caught:
        imgcluster.export(csv_path, tmp_path / "sorted", folder=folder)
    assert str(caught.value) == f"cannot read near-duplicate groups {duplicates}: unexpected end of data"


def test_cli_export(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, csv_path, _ = assigned
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(csv_path), "--to", str(tmp_path / "sorted"), "--folder", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "exported 6 images" in result.stderr
    bad = runner.invoke(app, ["export", str(csv_path), "--to", str(tmp_path / "s2"), "--folder", str(folder), "--mode", "move"])
    assert bad.exit_code == 2 and "--mode must be one of" in bad.stderr
    inside = runner.invoke(app, ["export", str(csv_path), "--to", str(folder / "s"), "--folder", str(folder)])
    assert inside.exit_code == 2 and "--to" in inside.stderr and not (folder / "s").exists()


def test_a_missing_image_is_left_out_and_the_rest_exported(assigned: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    folder, csv_path, paths = assigned
    (folder / paths[1]).unlink()
    events: list[imgcluster.Event] = []
    result = imgcluster.export(csv_path, tmp_path / "sorted", folder=folder, progress=events.append)
    assert result.placed == 5 and result.missing == [(folder / paths[1]).as_posix()]
    assert any(e.kind == "warning" and "1 image of out.csv not found or not a regular file" in str(e) for e in events)


@pytest.mark.parametrize("image_folder", ["00-sandal-running-shoe", "outliers/photos"])
def test_an_export_folder_that_is_or_holds_the_image_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_folder: str
) -> None:
    """`export --to .` beside an image folder named like a cluster's folder said "3 already there": the images themselves."""
    folder = copy_sample(tmp_path / image_folder, CLASSES[:2], per_class=3)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    rows = [(p, i // 3, "sandal, running shoe" if i < 3 else "mailbag", int(i == 5)) for i, p in enumerate(paths)]
    csv_path = write_csv(tmp_path / "out.csv", rows)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["export", "out.csv", "--to", ".", "--folder", image_folder])
    assert result.exit_code == 2 and result.stdout == ""
    doing = "export onto the image folder" if image_folder.startswith("00") else "mix the export with the image folder"
    where = image_folder.split("/")[0]
    assert result.stderr.startswith(f"error: --to . would {doing} {image_folder} ") and f"its folder {where})" in result.stderr
    assert result.stderr.count("\n") == 1 and sorted(tmp_path.rglob("*")) == before  # nothing exported, no folder made
    with pytest.raises(ParameterError, match=r"^to \. would"):
        imgcluster.export(csv_path, ".", folder=image_folder)
