import json
import os
import shutil
from pathlib import Path

import pytest

from imgcluster.listing import OUTPUT_MARKER, list_images


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for rel in ["b/2.PNG", "a/1.jpg", "a/z/3.webp", "c.tiff", "notes.txt", ".hidden/x.png", "a/.dot.png"]:
        touch(tmp_path / rel)
    rels = [f.rel for f in list_images(tmp_path)]
    assert rels == ["a/1.jpg", "a/z/3.webp", "b/2.PNG", "c.tiff"]


def test_excluded_cache_folder_is_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "img.png")
    touch(tmp_path / "cache" / "thumb.png")
    assert [f.rel for f in list_images(tmp_path, exclude=(tmp_path / "cache",))] == ["img.png"]


def test_folders_imgcluster_wrote_are_skipped(tmp_path: Path) -> None:
    """`assign . --report` then `report --montage` inside the photo folder: the montages are output."""
    touch(tmp_path / "img.png")
    touch(tmp_path / "photos-clusters-montage" / "cluster-0.png")
    touch(tmp_path / "photos-clusters-montage" / OUTPUT_MARKER)
    assert [f.rel for f in list_images(tmp_path)] == ["img.png"]


def test_unreadable_formats_are_counted_not_passed_over(tmp_path: Path) -> None:
    for rel in ["a.jpg", "phone/IMG_1.HEIC", "raw/DSC_2.nef", "b.avif", "c.jfif", "notes.txt"]:
        touch(tmp_path / rel)
    unsupported: list[str] = []
    assert [f.rel for f in list_images(tmp_path, unsupported=unsupported)] == ["a.jpg", "b.avif", "c.jfif"]
    assert unsupported == ["phone/IMG_1.HEIC", "raw/DSC_2.nef"]


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "1.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    assert [f.rel for f in list_images(tmp_path)] == ["a/1.png"]


def test_links_outside_root_need_the_flag(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "o.png")
    root = tmp_path / "root"
    touch(root / "in.png")
    os.symlink(outside, root / "ext")
    os.symlink(outside / "o.png", root / "file-link.png")
    outside_links: list[str] = []
    assert [f.rel for f in list_images(root, outside=outside_links)] == ["in.png"]
    assert outside_links == ["ext", "file-link.png"]  # left out, and said so: a folder of links is not "empty" without a word
    followed: list[str] = []
    assert [f.rel for f in list_images(root, follow_symlinks=True, outside=followed)] == ["ext/o.png", "file-link.png", "in.png"]
    assert followed == []


def test_unicode_and_spaces(tmp_path: Path) -> None:
    touch(tmp_path / "dossier été" / "photo 名前.jpg")
    assert [f.rel for f in list_images(tmp_path)] == ["dossier été/photo 名前.jpg"]


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "missing")


def _remove_tree_without_recursion(top: Path) -> None:
    """``shutil.rmtree`` (and pytest's clean-up of old temporary folders, shared by every run on
    the machine) recurses per level and dies on a 1,300-level tree: remove it bottom-up here."""
    order: list[str] = []
    stack = [str(top)]
    while stack:
        directory = stack.pop()
        order.append(directory)
        for entry in os.scandir(directory):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for directory in reversed(order):
        os.rmdir(directory)


def test_a_tree_deeper_than_the_recursion_limit_is_walked_whole(tmp_path: Path) -> None:
    """1,300 levels: a recursive walk lost the deepest images to a swallowed RecursionError."""
    depths = [0, 1, 200, 700, 999, 1200, 1299]
    top = tmp_path / "deep"
    try:
        folder = top
        for level in range(1300):
            if level in depths:
                touch(folder / f"img{level}.png")
            folder = folder / "d"
            folder.mkdir(parents=True)
        found = list_images(top)
        assert len(found) == len(depths)
        assert sorted(f.rel.count("/") for f in found) == depths
    finally:
        if top.exists():
            _remove_tree_without_recursion(top)


def test_unreachable_folders_and_files_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgcluster.listing

    touch(tmp_path / "ok" / "1.png")
    touch(tmp_path / "locked" / "2.png")
    os.symlink(tmp_path / "ok" / "gone.png", tmp_path / "ok" / "dangling.png")
    os.symlink(tmp_path / "ok" / "gone.txt", tmp_path / "ok" / "dangling.txt")  # not an image: nothing to report
    real_scandir = os.scandir

    def scandir(path: os.PathLike[str]):  # type: ignore[no-untyped-def]
        if Path(path) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(imgcluster.listing.os, "scandir", scandir)
    unreachable: list[tuple[str, str]] = []
    assert [f.rel for f in list_images(tmp_path, unreachable=unreachable)] == ["ok/1.png"]
    assert unreachable == [
        ("locked/", "folder cannot be read: Permission denied"),
        ("ok/dangling.png", "file cannot be read: broken symbolic link"),
    ]


def test_a_really_unreadable_folder_is_reported(tmp_path: Path) -> None:
    """Real permissions: as root, the scan runs without the capabilities that bypass them
    (:mod:`unprivileged`), in a world-readable folder. Python 3.11's ``Path.exists`` raised there, and the
    folder was dropped without a word."""
    import subprocess
    import sys
    import tempfile

    from unprivileged import prefix

    base = Path(tempfile.mkdtemp(prefix="imgcluster-perm-"))
    try:
        base.chmod(0o755)
        touch(base / "open" / "1.png")
        touch(base / "closed" / "2.png")
        for p in (base / "open", base / "closed"):
            p.chmod(0o755)
        (base / "open" / "1.png").chmod(0o644)
        (base / "closed").chmod(0o000)
        code = (
            "import json, sys; from pathlib import Path; from imgcluster.listing import list_images; u = []; "
            "found = [f.rel for f in list_images(Path(sys.argv[1]), unreachable=u)]; print(json.dumps([found, u]))"
        )
        command = [*prefix(), sys.executable, "-c", code, str(base)]  # as root: without the capabilities that bypass them
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
        found, unreachable = json.loads(done.stdout)
        assert found == ["open/1.png"]
        assert unreachable == [["closed/", "folder cannot be read: Permission denied"]]
    finally:
        (base / "closed").chmod(0o755)
        shutil.rmtree(base)


def test_links_in_a_loop_pipes_and_devices_named_as_images_are_reported(tmp_path: Path) -> None:
    """Each is listed with its own reason, not passed over (loops were) or called a broken link (a device was)."""
    touch(tmp_path / "ok" / "1.png")
    os.symlink("self.png", tmp_path / "self.png")
    os.symlink("b.png", tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "b.png")
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink(os.devnull, tmp_path / "null.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    unreachable: list[tuple[str, str]] = []
    assert [f.rel for f in list_images(tmp_path, follow_symlinks=True, unreachable=unreachable)] == ["ok/1.png"]
    loop = "file cannot be read: loop of symbolic links"
    assert unreachable == [
        ("a.png", loop),
        ("b.png", loop),
        ("dangling.png", "file cannot be read: broken symbolic link"),
        ("null.png", "file cannot be read: not a regular file"),
        ("pipe.png", "file cannot be read: not a regular file"),
        ("self.png", loop),
    ]
