"""Every command's --help: its examples run as written, and its options say what to type."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from imagefolders import CLASSES, copy_sample
from typer.testing import CliRunner

from imgcluster.cli import app

runner = CliRunner()
COMMANDS = ["embed", "train", "assign", "evaluate", "report", "export", "objectives"]  # in the order a user meets them


def help_text(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.stderr
    return result.stdout


def examples(command: str) -> list[str]:
    """The command lines under "Examples:" of ``imgcluster COMMAND --help``."""
    text = help_text(command).split("Examples:", 1)[1]
    return [line.strip() for line in text.splitlines() if line.strip().startswith("imgcluster ")]


def option_row(help: str, option: str) -> str:
    """The help table's row of ``option`` (its first line: name, placeholder, start of its text)."""
    return next(line for line in help.splitlines() if re.match(rf"[│|]\s+(\*\s+)?{re.escape(option)}\s", line))


@pytest.mark.parametrize(
    ("command", "option", "placeholder"),
    [
        ("assign", "--option", "KEY=VALUE"),  # was <list[str]>
        ("train", "--option", "KEY=VALUE"),
        ("assign", "--out", "FILE|-"),  # was <str>, though - means stdout
        ("assign", "--head", "FILE"),
        ("train", "--out", "FILE"),
        ("assign", "--model", "NAME"),
        ("assign", "--objective", "NAME"),
        ("assign", "--device", "auto|cpu|cuda"),
        ("embed", "--dtype", "float16|float32"),
        ("embed", "--engine", "local|ray"),
        ("assign", "--engine", "local|ray"),
        ("export", "--mode", "link|symlink|copy"),
        ("export", "--to", "DIR"),
    ],
)
def test_options_show_what_to_type(command: str, option: str, placeholder: str) -> None:
    """Typer showed Python types (``<list[str]>`` for --option KEY=VALUE, ``<str>`` for a choice of
    three words) where a user needs the form of the value."""
    row = option_row(help_text(command), option)
    assert f" {placeholder} " in row, row


@pytest.mark.parametrize("command", COMMANDS)
def test_no_python_type_names_in_help(command: str) -> None:
    assert "<list[str]>" not in help_text(command)


def test_option_texts_say_the_defaults_a_user_meets() -> None:
    """--out of train gave no default, --workers said "from the CPU count", --batch-size hid that
    small folders train on smaller batches, --seed gave no range (a negative seed is refused)."""
    train = " ".join(help_text("train").split())
    assert "Default: in the folder's cache (the run says where)" in train
    assert "one per CPU core but one, at most 8 (16 with CUDA); none for folders under 64 images" in train
    assert "at most a quarter of the images, but 16 or a smaller folder's all" in train
    assert "Random seed, 0 to 2**64 - 1" in train


@pytest.fixture
def user_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folders the examples name, in a fresh working directory: ./photos (5 labelled kinds),
    ./labelled-photos and sample_data (the same images), ./new-photos (a few more)."""
    for name in ("photos", "labelled-photos", "sample_data"):
        copy_sample(tmp_path / name, per_class=8)
    copy_sample(tmp_path / "new-photos", CLASSES[:3], per_class=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # model auto: the bundled Lite0 at once, never a download
    monkeypatch.setenv("IMGCLUSTER_CACHE", str(tmp_path / "cache"))
    return tmp_path


def run_as_written(line: str, root: Path) -> None:
    """Run one example in process: the shell's part (a comment, ``> FILE``) done here; paths of the
    machine (/tmp, /mnt/usb) moved into the test's folder."""
    moved = {"/mnt/usb/": f"{root}/usb/", "/tmp/": f"{root}/tmp/"}
    words = [next((w.replace(a, b, 1) for a, b in moved.items() if w.startswith(a)), w) for w in shlex.split(line, comments=True)]
    assert words[0] == "imgcluster", line
    words, redirect = (words[: words.index(">")], words[words.index(">") + 1]) if ">" in words else (words, None)
    result = runner.invoke(app, words[1:])
    assert result.exit_code == 0, f"{line}\n{result.stderr}"
    if redirect is not None:
        Path(redirect).write_text(result.stdout)


@pytest.mark.slow
def test_every_help_example_runs_as_written(user_folders: Path) -> None:
    """The examples ran only in a reader's head: `assign --head` pointed at a glob into the default
    cache that matched one head or several, and `evaluate --json > scores.json` wrote a file the
    report never reads. Each one now runs, in the order of the commands, on the folders it names."""
    lines = [line for command in COMMANDS for line in examples(command)]
    assert len(lines) >= 14
    quick_start = re.search(r"Quick start: (imgcluster [^\n]+)", help_text()).group(1)  # type: ignore[union-attr]
    for line in [quick_start.strip(), *lines]:
        run_as_written(line, user_folders)
    root = user_folders
    for made in (
        "clusters.csv", "photos-clusters.csv", "head.safetensors", "clusters.csv.eval.json", "photos-clusters.html",
        "tmp/clusters.html", "clusters-montage", "sorted", "usb/sorted", "tmp/cache",
    ):  # fmt: skip
        assert (root / made).exists(), made
    assert '<p>mostly ' in (root / "tmp/clusters.html").read_text()  # the report read the evaluation the example saved


@pytest.mark.parametrize("command", ["train", "assign"])
def test_the_option_example_works_with_the_default_objective(command: str) -> None:
    """--option's help gave entropy_weight=5 as its example, which the default objective (secu) refuses."""
    from imgcluster import ClusterHead
    from imgcluster.cli import _parse_options

    text = " ".join(option_row_text(help_text(command), "--option").split())
    example = re.search(r"e\.g\. (\w+=\S+?)[;,.]", text).group(1)  # type: ignore[union-attr]
    ClusterHead(**_parse_options([example])).train_config()  # refuses an option the objective does not have


def option_row_text(help: str, option: str) -> str:
    """The whole help text of ``option``, over its wrapped lines."""
    lines = help.splitlines()
    start = lines.index(option_row(help, option))
    rows = [lines[start]]
    for line in lines[start + 1 :]:
        if re.match(r"[│|]\s+(\*\s+)?-", line) or not line.startswith(("│", "|")):
            break
        rows.append(line)
    return " ".join(row.strip("│| ") for row in rows)


@pytest.mark.parametrize("command", ["report", "export"])
def test_follow_symlinks_names_a_folder_the_command_has(command: str) -> None:
    """report and export take a CSV, not a FOLDER, yet --follow-symlinks spoke of "outside FOLDER"."""
    text = option_row_text(help_text(command), "--follow-symlinks")
    assert "FOLDER" not in text and "outside the image folder" in text
