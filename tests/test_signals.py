"""A stop by SIGHUP (terminal closed, ssh dropped) or SIGTERM keeps finished work as Ctrl-C does.

The CLI runs in a child process: the signal must reach a real process, and a hung-up terminal
needs real file descriptors.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faults import NO_TRAINING, cli_env, default_stops
from test_faults_kill import cached_features

# Runs the CLI with the 10th image's decode sending the signal; with "hangup", stderr is first a
# terminal (a pty, progress bar drawn), and the terminal is closed just before the signal.
CHILD = """
import os, signal, sys
import imgcluster.embedding
terminal, signum = sys.argv[1] == "hangup", int(sys.argv[2])
if terminal:
    master, slave = os.openpty()
    os.dup2(slave, 2)
real, calls = imgcluster.embedding.load_image, 0
def load(path, draft_size=None, grey=False):
    global calls
    calls += 1
    if calls == 10:
        if terminal:
            os.close(master)  # the terminal goes away: every write to it now fails (EIO)
        os.kill(os.getpid(), signum)
    return real(path, draft_size, grey)
imgcluster.embedding.load_image = load
from imgcluster.cli import main
sys.argv = ["imgcluster", *sys.argv[3:]]
main()
"""


def _stop(folder: Path, cache: Path, how: str, signum: int, ignored: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["embed", str(folder), "--cache-dir", str(cache), *NO_TRAINING, "--embed-batch-size", "4"]
    env = cli_env(IMGCLUSTER_FLUSH_EVERY="1000", IMGCLUSTER_FLUSH_SECONDS="1000")  # nothing saved but by the stop

    def ignore() -> None:  # what nohup does before it starts the command
        default_stops()
        signal.signal(signum, signal.SIG_IGN)

    return subprocess.run(
        [sys.executable, "-c", CHILD, how, str(int(signum)), *args], capture_output=True, text=True, env=env, timeout=300, check=False,
        preexec_fn=ignore if ignored else default_stops,
    )  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_stop_saves_the_finished_batches_and_says_so(small_folder: Path, tmp_path: Path, signum: int) -> None:
    done = _stop(small_folder, tmp_path / "cache", "log", signum)
    assert done.returncode == -signum, done.stderr  # ended by that signal, as a shell expects
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: interrupted while embedding: 8 of 24 files are saved in the cache"), done.stderr
    assert "Traceback" not in done.stderr
    assert len(cached_features(tmp_path / "cache", small_folder)) == 8


def test_a_hung_up_terminal_still_saves_the_finished_batches(small_folder: Path, tmp_path: Path) -> None:
    """The stop line and the progress bar's last frame cannot reach the closed terminal; the save must not depend on them."""
    done = _stop(small_folder, tmp_path / "cache", "hangup", signal.SIGHUP)
    assert done.returncode == -signal.SIGHUP, done.stderr
    assert len(cached_features(tmp_path / "cache", small_folder)) == 8


def test_decode_workers_leave_a_hangup_to_the_main_process() -> None:
    """A closed terminal hangs up every process of the run; a worker dying of it first turned the stop into "a decode worker died"."""
    code = (
        "import signal; from imgcluster.speed import worker_threads_init; "
        "worker_threads_init(0); print(signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=120, check=False, preexec_fn=default_stops
    )
    assert done.stdout.strip() == "True", done.stderr


def test_a_run_under_nohup_goes_on_after_a_hangup(small_folder: Path, tmp_path: Path) -> None:
    """nohup ignores SIGHUP so that a run outlives the terminal; turning every SIGHUP into a stop would end it."""
    done = _stop(small_folder, tmp_path / "cache", "log", signal.SIGHUP, ignored=True)
    assert done.returncode == 0, done.stderr
    assert "embedded 24, reused 0" in done.stderr and "interrupted" not in done.stderr


def test_a_hangup_while_the_arguments_are_parsed_ends_by_it_without_a_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its line could not be written (the terminal gone): the OSError replaced the stop, exit 1 and a traceback."""
    import typer
    from typer.core import TyperGroup
    from typer.testing import CliRunner

    from imgcluster.cli import app
    from imgcluster.signals import Interrupted

    def hung_up(*args: object, **kwargs: object) -> None:
        raise Interrupted("", signal.SIGHUP)

    def no_terminal(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(TyperGroup, "make_context", hung_up)
    monkeypatch.setattr(typer, "echo", no_terminal)
    result = CliRunner().invoke(app, ["embed", "photos"])
    assert result.exit_code == 128 + signal.SIGHUP and not isinstance(result.exception, OSError), result.exception


def test_a_hangup_sent_by_kill_keeps_the_stop_line_on_a_live_terminal(small_folder: Path, tmp_path: Path) -> None:
    """`kill -HUP` from elsewhere while the terminal is still open: the stop line must still reach it."""
    import os
    import threading

    master, slave = os.openpty()
    args = ["embed", str(small_folder), "--cache-dir", str(tmp_path / "cache"), *NO_TRAINING, "--embed-batch-size", "4"]
    env = cli_env(IMGCLUSTER_FLUSH_EVERY="1000", IMGCLUSTER_FLUSH_SECONDS="1000")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "live", str(int(signal.SIGHUP)), *args], stderr=slave, env=env, preexec_fn=default_stops
    )
    os.close(slave)
    shown: list[bytes] = []

    def read() -> None:  # the terminal's screen; a pty's buffer is small, so it is read as it comes
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the child, the last holder of the other end, is gone
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=300) == -signal.SIGHUP
    finally:
        reader.join(timeout=10)
        os.close(master)
    screen = b"".join(shown).decode("utf-8", "replace")
    assert "interrupted while embedding: 8 of 24 files are saved in the cache" in screen, screen[-2000:]
