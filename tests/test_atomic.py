"""Atomic writes: complete or untouched, never a temporary left behind, and the usual file mode."""

import os
import stat
import threading
from pathlib import Path

import pytest

from imgcluster.atomic import atomic_open, atomic_write_text, is_stream
from imgcluster.errors import ImgclusterError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_file_gets_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.csv") == 0o640
    assert os.umask(old) == old  # the probe put the caller's umask back


def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "b.csv"
    target.write_text("old")
    target.chmod(0o604)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o604


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "c.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("stopped mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["c.csv"]


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "linked.csv"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"


def test_a_named_pipe_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    """Renaming a file over a device or pipe destroys it (seen with --out /dev/null as root)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert is_stream(fifo) and not is_stream(tmp_path) and not is_stream(tmp_path / "absent")
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    atomic_write_text(fifo, "path,cluster\n")
    reader.join(timeout=10)
    assert received == [b"path,cluster\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary, nothing beside it


def test_a_full_device_is_a_one_line_error() -> None:
    if not Path("/dev/full").exists() or not is_stream(Path("/dev/full")):
        pytest.skip("no /dev/full character device here")
    with pytest.raises(ImgclusterError, match=r"cannot write /dev/full: No space left on device"):
        atomic_write_text(Path("/dev/full"), "x" * 100_000)
    assert stat.S_ISCHR(Path("/dev/full").stat().st_mode)


def test_a_loop_of_links_is_a_one_line_error_and_stays(tmp_path: Path) -> None:
    (tmp_path / "a.csv").symlink_to(tmp_path / "b.csv")
    (tmp_path / "b.csv").symlink_to(tmp_path / "a.csv")
    with pytest.raises(ImgclusterError, match=r"cannot write .*a\.csv: Too many levels of symbolic links"):
        atomic_write_text(tmp_path / "a.csv", "x")
    assert (tmp_path / "a.csv").is_symlink() and (tmp_path / "b.csv").is_symlink()


def test_a_dangling_link_creates_the_file_it_names(tmp_path: Path) -> None:
    (tmp_path / "link.csv").symlink_to(tmp_path / "sub" / "new.csv")
    atomic_write_text(tmp_path / "link.csv", "x")
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "sub" / "new.csv").read_text() == "x"
