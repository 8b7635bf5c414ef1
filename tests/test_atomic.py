"""Atomic writes: complete or untouched, never a temporary left behind, and the usual file mode."""

import os
import stat
from pathlib import Path

import pytest

from imgcluster.atomic import atomic_open, atomic_write_text


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
