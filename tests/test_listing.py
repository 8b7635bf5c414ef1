import os
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
    assert [f.rel for f in list_images(root)] == ["in.png"]
    assert [f.rel for f in list_images(root, follow_symlinks=True)] == ["ext/o.png", "file-link.png", "in.png"]


def test_unicode_and_spaces(tmp_path: Path) -> None:
    touch(tmp_path / "dossier été" / "photo 名前.jpg")
    assert [f.rel for f in list_images(tmp_path)] == ["dossier été/photo 名前.jpg"]


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "missing")
