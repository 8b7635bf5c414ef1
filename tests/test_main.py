"""The command's entry point: how the process ends once the run is over."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import imgcluster.__main__ as entry

ROOT = Path(__file__).resolve().parents[1]


def ended(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


SCRIPT = (
    "import atexit, sys\n"
    "from imgcluster.__main__ import leave\n"
    "class Torn:\n"
    "    def __del__(self): sys.stderr.write('torn down')\n"
    "kept = Torn()\n"  # a module global: only the interpreter's finalising deletes it
    "atexit.register(lambda: print(' atexit ran'))\n"
    "print('written', end='')\n"  # still in stdout's buffer
    "leave({code!r})\n"
)


@pytest.mark.parametrize(("code", "status", "stderr"), [(None, 0, ""), (0, 0, ""), (3, 3, ""), ("error: why", 1, "error: why\n")])
def test_leave_runs_the_exit_callbacks_and_flushes_but_does_not_finalise(code: int | str | None, status: int, stderr: str) -> None:
    """Finalising torch and timm took 1.2 CPU s and 127 MB more memory than the run had used."""
    done = ended(SCRIPT.format(code=code))
    assert (done.returncode, done.stdout, done.stderr) == (status, "written atexit ran\n", stderr)


def test_the_command_ends_through_leave(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    left: list[object] = []

    def leave(code: object) -> None:
        left.append(code)

    monkeypatch.setattr(entry, "leave", leave)
    monkeypatch.setattr(sys, "argv", ["imgcluster", "--version"])
    entry.main()
    assert left == [0] and capsys.readouterr().out.startswith("imgcluster ")
    monkeypatch.setattr(sys, "argv", ["imgcluster", "assign", "--clusters", "x", "."])
    entry.main()
    assert left == [0, 2]


def test_text_stdout_cannot_show_is_escaped_not_a_crash(tmp_path: Path) -> None:
    """A label "bäg ☂" under PYTHONIOENCODING=ascii (or a Latin-1 locale) ended evaluate in "unexpected
    UnicodeEncodeError"; the table is drawn in ASCII and the label escaped, as Python writes stderr."""
    for label in ("bäg ☂", "shoe"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        (tmp_path / "photos" / label / "a.png").write_bytes(b"x")
    csv = tmp_path / "clusters.csv"
    csv.write_text('"path","cluster"\n"bäg ☂/a.png",0\n"shoe/a.png",1\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "imgcluster", "evaluate", str(csv), str(tmp_path / "photos")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "| ACC (Hungarian)        | 1.0000 |" in done.stdout and "b\\xe4g \\u2602" in done.stdout
