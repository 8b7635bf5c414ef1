"""Issue 14, third round: what the hostile/new-user pass found and left, each reproduced.

Each test failed before its fix: a Ctrl-C while the clusters are named, a cached rerun on a full
disk, bad ``IMGCLUSTER_FLUSH_*`` values, a closed stdout behind ``--out -``, ``evaluate`` on a CSV
that covers a few of the images, negative cluster ids, ``--min-confidence nan``, and what the
pass after them found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from faults import tiny_tmpfs
from imagefolders import CLASSES, copy_sample
from typer.testing import CliRunner

from imgcluster.cli import app

runner = CliRunner()
FAST = ["--model", "efficientnet-lite0", "--clusters", "2", "--workers", "0"]


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("module", "function", "doing", "resumes"),
    [
        ("imgcluster.negatives", "drawing_names", "naming the clusters", "the naming"),
        ("imgcluster.assign", "mark_outliers", "assigning the clusters (confidence, outliers, near-duplicates)", "the assignment"),
    ],
)
def test_ctrl_c_after_the_training_says_that_the_features_and_head_are_kept(
    module: str, function: str, doing: str, resumes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "every finished batch is kept in the cache and the next run resumes from there", as for the embedding."""
    import importlib

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, stopped)
    result = invoke("assign", folder, *FAST, "--out", tmp_path / "clusters.csv", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 130 and result.stdout == ""
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: interrupted while {doing}: no CSV was written by this run; the features of all 6 images ")
    assert " and the head in " in last and last.endswith(f", so the same command starts again from {resumes}")
    assert not (tmp_path / "clusters.csv").exists()
    monkeypatch.undo()
    again = invoke("assign", folder, *FAST, "--out", tmp_path / "clusters.csv", "--cache-dir", tmp_path / "cache")
    assert again.exit_code == 0 and "6 cached, 0 to embed" in again.stderr and "reusing the head" in again.stderr


def test_a_cached_rerun_on_a_full_disk_writes_its_csv_elsewhere(tmp_path: Path) -> None:
    """It failed with "cannot write .../config.json: No space left on device" before reading the features it had."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)
    with tiny_tmpfs(tmp_path / "small", size="2m") as small:
        cache = small / "cache"
        first = invoke("assign", folder, *FAST, "--out", tmp_path / "first.csv", "--cache-dir", cache)
        assert first.exit_code == 0, first.stderr
        subprocess.run(["dd", "if=/dev/zero", f"of={small / 'fill'}", "bs=64k"], capture_output=True, check=False)
        for options in ([], ["--embed-batch-size", "2"]):  # the same options, and others that describe the cache otherwise
            again = invoke("assign", folder, *FAST, "--out", tmp_path / "again.csv", "--cache-dir", cache, *options)
            assert again.exit_code == 0, again.stderr
            assert "6 cached, 0 to embed" in again.stderr
            assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "first.csv").read_bytes()


@pytest.mark.parametrize(
    ("command", "variable", "value", "line"),
    [
        ("assign", "IMGCLUSTER_FLUSH_EVERY", "abc", "IMGCLUSTER_FLUSH_EVERY must be a positive number of images, not 'abc'"),
        ("embed", "IMGCLUSTER_FLUSH_SECONDS", "-1", "IMGCLUSTER_FLUSH_SECONDS must be a positive number of seconds, not '-1'"),
        ("train", "IMGCLUSTER_DECODE_TIMEOUT", "x", "IMGCLUSTER_DECODE_TIMEOUT must be a number of seconds (0 for no limit), not 'x'"),
    ],
)
def test_a_bad_variable_is_refused_before_torch_is_imported(command: str, variable: str, value: str, line: str, tmp_path: Path) -> None:
    """They were refused once the embedding started: after importing torch and loading the model."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    code = (
        "import sys, atexit; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
        "from imgcluster.cli import main; sys.argv = ['imgcluster', *sys.argv[1:]]; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), variable: value}
    argv = [command, str(folder), "--model", "efficientnet-lite0", *(["--clusters", "2"] if command != "embed" else [])]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"error: {line}", "False"]
    assert not (folder / ".imgcluster").exists()


def test_assign_to_a_closed_stdout_is_refused_before_the_work(tmp_path: Path) -> None:
    """`assign --out - >&-` said "cannot write to standard output: it is closed" only after embedding and training."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "imgcluster", "assign", str(folder), "--model", "efficientnet-lite0", "--clusters", "2", "--out", "-"]
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True, env=env, timeout=120, preexec_fn=lambda: os.close(1), check=False)
    assert done.returncode == 1
    assert done.stderr == "error: cannot write to standard output: it is closed\n"
    assert not (folder / ".imgcluster").exists()


@pytest.mark.parametrize(
    ("option", "value", "bounds"),
    [
        ("--min-confidence", "nan", "from 0 to 1"),
        ("--min-confidence", "inf", "from 0 to 1"),
        ("--min-confidence", "-0.1", "from 0 to 1"),
        ("--min-confidence", "1.5", "from 0 to 1"),
        ("--balance", "nan", "of at least 0"),
        ("--lock-timeout", "nan", "of at least 0"),
        ("--lr", "0", "above 0"),
        ("--lr", "nan", "above 0"),
    ],
)
def test_a_number_out_of_range_or_nan_says_which_numbers_the_option_takes(option: str, value: str, bounds: str, tmp_path: Path) -> None:
    """`--min-confidence nan` said "Input should be less than or equal to 1", as --balance nan said "greater than or equal to 0"."""
    result = invoke("assign", tmp_path, option, value)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {option} must be a number {bounds}, got {value} (see imgcluster assign --help)\n"


def _ranged_options() -> list[tuple[str, str, int, int | None]]:
    """(command, flag, least, most) of every option with a range in Typer's min/max, in every command."""
    import typer.main

    root = typer.main.get_command(app)
    found = []
    for name, command in getattr(root, "commands", {}).items():
        for param in command.params:
            if getattr(param, "min", None) is not None or getattr(param, "max", None) is not None:
                found.append((name, param.opts[0], param.min, param.max))
    return found


def test_every_ranged_option_names_its_flag_and_range_as_the_library_does() -> None:
    """Typer's own wording ("Invalid value for '--knn': Input should be greater than or equal to 1", "Input should be a
    valid integer, unable to parse string as an integer") for each whole-number option with a range."""
    ranged = _ranged_options()
    assert {flag for _, flag, _, _ in ranged} >= {"--knn", "--epochs", "--batch-size", "--k-min", "--per-cluster", "--actors"}
    for command, flag, least, most in ranged:
        bounds = f"of at least {least}" if most is None else f"from {least} to {most}"
        for typed in [str(least - 1), "x", "2.5"] + ([str(most + 1)] if most is not None else []):
            result = invoke(command, flag, typed)
            assert result.exit_code == 2 and result.stdout == "", (command, flag, typed)
            assert result.stderr == f"error: {flag} must be a whole number {bounds}, got {typed} (see imgcluster {command} --help)\n"


def test_a_number_option_that_is_not_a_number_says_so_in_one_line() -> None:
    for option, kind in (("--seed", "a whole number"), ("--lr", "a number"), ("--balance", "a number")):
        result = invoke("assign", option, "many")
        assert result.exit_code == 2
        assert result.stderr == f"error: {option} must be {kind}, got many (see imgcluster assign --help)\n"


def test_cluster_folder_refuses_a_bad_min_confidence_before_any_work(tmp_path: Path) -> None:
    """The library took it to the end of the run: embedded and trained, then refused it while marking outliers."""
    import imgcluster
    from imgcluster.errors import ParameterError

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    with pytest.raises(ParameterError, match=r"^min_confidence must lie in \[0, 1\], got nan$"):
        imgcluster.cluster_folder(folder, n_clusters=2, model="efficientnet-lite0", min_confidence=float("nan"))
    assert not (folder / ".imgcluster").exists()


@pytest.mark.parametrize(
    ("target", "line"),
    [
        ("imgcluster.preflight.list_folder", "interrupted while scanning {folder}: nothing was embedded by this run"),
        (
            "imgcluster.pipeline.create_backbone",
            "interrupted while starting (loading torch, the model and the cache): nothing was embedded by this run",
        ),
        (
            "imgcluster.cache.EmbeddingCache.compact",
            "interrupted while saving the cache: every image embedded is saved in it, and the next run finds it there",
        ),
    ],
)
def test_ctrl_c_before_or_after_the_embedding_says_what_was_kept(
    target: str, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while scanning a large folder or importing torch said that "every finished batch is kept in the cache"."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(target, stopped)
    result = invoke("embed", folder, "--model", "efficientnet-lite0", "--workers", "0")
    assert result.exit_code == 130 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == "error: " + line.format(folder=folder)


def test_a_csv_piped_in_is_read_and_the_report_asks_for_a_file(tmp_path: Path) -> None:
    """`... | imgcluster evaluate /dev/stdin FOLDER` said "assignments file not found: /dev/stdin"; the report of a
    piped CSV chose /dev/stdin.html, and with --labels it would read the pipe twice."""
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "dog/2.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    text = '"path","cluster"\n"cat/1.png",0\n"dog/2.png",1\n'
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def piped(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "imgcluster", *args]
        return subprocess.run(command, input=text, capture_output=True, text=True, env=env, timeout=120, check=False)

    scores = piped("evaluate", "/dev/stdin", str(folder), "--json", "--quiet")
    assert scores.returncode == 0, scores.stderr
    assert json.loads(scores.stdout)["acc"] == 1.0
    report = piped("report", "/dev/stdin", "--folder", str(folder), "--labels", str(folder), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 2 and report.stdout == ""
    assert report.stderr == "error: CSV /dev/stdin is not a regular file: the report reads it more than once; save it first\n"


def test_ctrl_c_while_the_files_are_written_says_which_are_and_drops_a_sidecar_of_the_old_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said "every finished batch is kept in the cache", and a CSV replaced just before the stop kept the
    sidecar of the CSV it replaced."""
    import imgcluster.csvfile
    import imgcluster.folder

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)
    out, args = tmp_path / "clusters.csv", ["--cache-dir", tmp_path / "cache", *FAST]
    assert invoke("assign", folder, "--out", out, *args, "--seed", "1").exit_code == 0
    before = out.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(imgcluster.csvfile, "write_assignments", stopped)
        result = invoke("assign", folder, "--out", out, *args)
    assert result.exit_code == 130 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"error: interrupted while writing {out}: it was not written (a file there before stays)"
    assert out.read_bytes() == before and Path(f"{out}.json").is_file()
    with monkeypatch.context() as patch:
        patch.setattr(imgcluster.folder, "write_sidecar", stopped)
        result = invoke("assign", folder, "--out", out, *args)
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == (
        f"error: interrupted while writing the files beside the CSV: {out} written, the others not (rerun for all)"
    )
    assert not Path(f"{out}.json").exists()  # it described the seed-1 CSV


@pytest.mark.parametrize(("args", "where"), [(["assign", "x", "-k"], "assign"), (["report", "a.csv", "--per-cluster"], "report")])
def test_an_option_without_its_value_points_at_the_commands_help(args: list[str], where: str) -> None:
    """`imgcluster assign x -k` said "(see imgcluster --help)", whose help lists commands, not -k."""
    result = invoke(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: Option '{args[-1]}' requires an argument. (see imgcluster {where} --help)\n"


def test_commands_run_with_stderr_closed(tmp_path: Path) -> None:
    """With stderr closed (`2>&-`, some daemons) every command ended with exit code 1 before its work, writing nothing."""
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "dog/2.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    (tmp_path / "a.csv").write_text('"path","cluster"\n"cat/1.png",0\n"dog/2.png",1\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def closed_stderr(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "imgcluster", *args]
        return subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, timeout=120, preexec_fn=lambda: os.close(2), check=False)

    scores = closed_stderr("evaluate", str(tmp_path / "a.csv"), str(folder), "--json")
    assert scores.returncode == 0 and json.loads(scores.stdout)["acc"] == 1.0
    assert closed_stderr("assign", str(tmp_path / "nowhere")).returncode == 2  # a usage mistake keeps its exit code


def test_train_out_that_assign_head_could_not_read_is_refused_before_the_work(tmp_path: Path) -> None:
    """`train --out head` saved head and head.json, then `assign --head head`, as its last line said, refused it."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    result = invoke("train", folder, *FAST, "--out", tmp_path / "head")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: --out {tmp_path / 'head'} does not end in .safetensors, the only name a head is read back from\n"
    assert not (folder / ".imgcluster").exists() and not (tmp_path / "head").exists()


def test_a_home_tilde_the_shell_left_after_an_equals_sign_means_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bash leaves `--to=~/sorted` as it is: the export went into a new folder named "~" in the current folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "home" / "photos" / "cat" / "1.png").write_bytes(b"x")
    (tmp_path / "home" / "a.csv").write_text('"path","cluster"\n"cat/1.png",0\n')
    result = invoke("export", "~/a.csv", "--to=~/sorted", "--folder=~/photos", "--mode=copy")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "home" / "sorted" / "00" / "cat" / "1.png").read_bytes() == b"x"
    assert not (tmp_path / "~").exists()


def test_the_default_csv_of_the_root_folder_does_not_start_with_a_dash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`imgcluster assign /` wrote "-clusters.csv", which the next command (`evaluate -clusters.csv`) took for an option."""
    import imgcluster

    seen: list[str] = []
    monkeypatch.setattr(imgcluster, "cluster_folder", lambda folder, out, **kwargs: seen.append(out))
    monkeypatch.chdir(tmp_path)
    assert invoke("assign", "/").exit_code == 0
    assert seen == ["root-clusters.csv"]
    (tmp_path / "-photos").mkdir()  # wrote "-photos-clusters.csv", and said so: the next command took it for an option too
    assert invoke("assign", "./-photos").exit_code == 0
    assert seen[-1] == "./-photos-clusters.csv"


def test_assign_report_onto_a_folder_is_refused_before_the_work(tmp_path: Path) -> None:
    """`assign --out x.csv --report` with a folder x.html wrote the CSV, then said "--out x.html is a folder" (exit 2)."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    (tmp_path / "x.html").mkdir()
    result = invoke("assign", folder, *FAST, "--out", tmp_path / "x.csv", "--report")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: --report writes {tmp_path / 'x.html'} beside the CSV, and that is a folder\n"
    assert not (tmp_path / "x.csv").exists() and not (folder / ".imgcluster").exists()


@pytest.mark.parametrize(
    ("blocked", "options"), [("x.csv.json", []), ("x-duplicates.csv", ["--near-duplicates", "0.9"]), ("x-skipped.csv", [])]
)
def test_a_folder_where_a_file_beside_the_csv_goes_is_refused_before_the_work(blocked: str, options: list[str], tmp_path: Path) -> None:
    """A folder named x.csv.json (or x-duplicates.csv, or x-skipped.csv for the unreadable files) failed the run after
    the CSV was written: exit 1, 'Is a directory'."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    (folder / "broken.jpg").write_bytes(b"not an image")  # a file the run skips, so x-skipped.csv is written
    (tmp_path / blocked).mkdir()
    result = invoke("assign", folder, *FAST, "--out", tmp_path / "x.csv", *options)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: --out {tmp_path / 'x.csv'}: {tmp_path / blocked}, which goes beside it, is a folder\n"
    assert not (tmp_path / "x.csv").exists() and not (folder / ".imgcluster").exists()


@pytest.mark.parametrize(("length", "beside"), [(251, ".csv.json"), (248, "-skipped.csv"), (256, "")])  # the first one too long
def test_a_csv_name_too_long_for_a_file_beside_it_is_refused_before_the_work(length: int, beside: str, tmp_path: Path) -> None:
    """A CSV name of about 243 bytes failed after the whole run when a file was skipped (its -skipped.csv too long for the
    file system), the CSV written; one of 256 failed at the start as an unexpected OSError."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    (folder / "broken.jpg").write_bytes(b"not an image")  # a file the run skips, so NAME-skipped.csv is written
    out = tmp_path / ("a" * (length - 4) + ".csv")
    too_long = out.with_name(out.stem + beside) if beside else out
    result = invoke("assign", folder, *FAST, "--out", out)
    assert result.exit_code == 2 and result.stdout == ""
    which = f": {too_long.name}, which goes beside it," if beside else ""
    assert result.stderr == (
        f"error: --out {out}{which} holds a name of {len(too_long.name)} bytes, longer than the 255 this file system takes: "
        "give a shorter name\n"
    )
    assert not (folder / ".imgcluster").exists() and not any(p.name.startswith("aaa") for p in tmp_path.iterdir())


def test_a_head_name_too_long_is_refused_before_the_work(tmp_path: Path) -> None:
    from imgcluster import ParameterError, train_folder

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    out = tmp_path / ("h" * 250 + ".safetensors")
    with pytest.raises(ParameterError) as info:
        train_folder(folder, out=out, n_clusters=2, model="efficientnet-lite0")
    assert str(info.value) == f"out {out} holds a name of 262 bytes, longer than the 255 this file system takes: give a shorter name"
    assert info.value.parameters == ("out",) and not (folder / ".imgcluster").exists()


@pytest.mark.parametrize(
    ("args", "typed", "command"),
    [
        (["export", "{csv}", "--to", "", "--folder", "{folder}"], "--to", "export"),
        (["export", "{csv}", "--to=", "--folder", "{folder}"], "--to", "export"),
        (["assign", "", "-k", "2"], "FOLDER", "assign"),
        (["train", "-k", "2", "--", ""], "FOLDER", "train"),
        (["embed", ""], "SOURCE", "embed"),
        (["evaluate", "{csv}", ""], "LABELLED_FOLDER", "evaluate"),
        (["report", ""], "CSV", "report"),
        (["assign", "{folder}", "--weights", ""], "--weights", "assign"),
        (["assign", "{folder}", "--head", ""], "--head", "assign"),
    ],
)
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], typed: str, command: str
) -> None:
    """`"$DIR"` with DIR unset is "": `export --to ""` exported into the current folder, `assign ""` clustered it
    (and left a cache there), `report ""` failed with an unexpected ValueError."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('"path","cluster"\n' + "".join(f'"{p}",{i % 2}\n' for i, p in enumerate(paths)))
    here = tmp_path / "here"
    copy_sample(here, CLASSES[:1], per_class=2)  # a current folder with images, as a user's would have
    monkeypatch.chdir(here)
    before = sorted(tmp_path.rglob("*"))
    result = invoke(*(a.format(csv=csv_path, folder=folder) for a in args))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {typed} is empty (a variable that is not set?): give a path (see imgcluster {command} --help)\n"
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["assign", "{folder}", "-k", "2", "--out", "results/"], "assign"),
        (["train", "{folder}", "-k", "2", "--out=results/"], "train"),
        (["report", "{csv}", "--out", "results/"], "report"),
    ],
)
def test_an_output_named_like_a_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], command: str) -> None:
    """`--out results/` (a folder to be) wrote a file named results, and results.json beside it."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('"path","cluster"\n' + "".join(f'"{p.relative_to(folder).as_posix()}",0\n' for p in folder.rglob("*.png")))
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = invoke(*(a.format(folder=folder, csv=csv_path) for a in args))
    assert result.exit_code == 2 and result.stdout == ""
    said = "error: --out results/ ends in /, as a folder's name does: give a file name"
    assert result.stderr == f"{said} (see imgcluster {command} --help)\n"
    assert sorted(tmp_path.rglob("*")) == before


def test_an_output_named_like_a_folder_is_refused_from_python(tmp_path: Path) -> None:
    import imgcluster

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('"path","cluster"\n' + "".join(f'"{p.relative_to(folder).as_posix()}",0\n' for p in folder.rglob("*.png")))
    out = f"{tmp_path}/results/"
    for call in (
        lambda: imgcluster.cluster_folder(folder, out=out, n_clusters=2, model="efficientnet-lite0"),
        lambda: imgcluster.train_folder(folder, out=out, n_clusters=2, model="efficientnet-lite0"),
        lambda: imgcluster.write_report(csv_path, out),
    ):
        with pytest.raises(imgcluster.ParameterError) as info:
            call()
        assert str(info.value) == f"out {out} ends in /, as a folder's name does: give a file name" and info.value.parameters == ("out",)
    assert not (tmp_path / "results").exists() and not (folder / ".imgcluster").exists()


def test_every_command_takes_quiet() -> None:
    """A script that adds --quiet to each call failed on `imgcluster objectives --quiet` (No such option)."""
    import typer.main

    root = typer.main.get_command(app)
    commands = getattr(root, "commands", {})
    lacking = [name for name, command in commands.items() if "--quiet" not in {o for p in command.params for o in p.opts}]
    assert lacking == []
    quiet, plain = invoke("objectives", "--quiet"), invoke("objectives")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == plain.stdout and "secu (default)" in quiet.stdout


@pytest.mark.parametrize(
    ("args", "command"), [(["assign", "-photos", "-k", "2"], "assign"), (["evaluate", "-photos-clusters.csv", "x"], "evaluate")]
)
def test_a_path_that_starts_with_a_dash_is_shown_how_to_write_it(
    args: list[str], command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`assign -photos` said only "No such option: -p"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-photos").mkdir()
    (tmp_path / "-photos-clusters.csv").write_text('"path","cluster"\n')
    result = invoke(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"error: {args[1]} is read as an option; a path that starts with - is written ./{args[1]} (see imgcluster {command} --help)\n"
    )
    assert invoke("assign", "--nope").stderr.startswith("error: No such option: --nope (")  # no such path: click's line
    assert invoke("export", "x.csv", "--to", "-photos", "--nope").stderr.startswith("error: No such option: --nope")  # not -photos'


@pytest.mark.parametrize("command", ["report", "export", "montage"])
def test_report_and_export_refuse_a_name_too_long_in_one_line(command: str, tmp_path: Path) -> None:
    """`report --out` and `export --to` with a name over 255 bytes ended in "unexpected OSError: File name too long";
    the montage folder of a CSV with a 250-byte name failed after the page was written."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    csv = tmp_path / ("m" * 246 + ".csv" if command == "montage" else "x.csv")
    csv.write_text("".join(['"path","cluster"\n', *(f'"{p.relative_to(folder)}",0\n' for p in sorted(folder.rglob("*.png")))]))
    long = tmp_path / ("r" * 260)
    args = {
        "report": (["--out", f"{long}.html"], f"--out {long}.html holds a name of 265 bytes"),
        "export": (["--to", long], f"--to {long} holds a name of 260 bytes"),
        "montage": (["--montage"], f"--montage {csv}: {'m' * 246}-montage, which goes beside it, holds a name of 254 bytes"),
    }
    options, said = args[command]
    result = invoke("export" if command == "export" else "report", csv, "--folder", folder, *options)
    if command == "montage":  # 254 bytes fit (the CSV's .eval.json, 260, is not there: it was "File name too long"); 258 do not
        assert result.exit_code == 0, result.stderr
        csv = csv.rename(tmp_path / ("m" * 250 + ".csv"))
        said = f"--montage {csv}: {'m' * 250}-montage, which goes beside it, holds a name of 258 bytes"
        result = invoke("report", csv, "--folder", folder, *options)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {said}, longer than the 255 this file system takes: give a shorter name\n"


def test_imgcluster_debug_shows_the_traceback_of_an_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With IMGCLUSTER_DEBUG=1 an unexpected OSError in a command ("File name too long") was reported as
    "cannot write to standard output: File name too long", with no traceback: the help's handler took it for its own."""
    import errno

    import imgcluster

    def fails(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    monkeypatch.setattr(imgcluster, "evaluate", fails)
    monkeypatch.setenv("IMGCLUSTER_DEBUG", "1")
    result = invoke("evaluate", tmp_path / "x.csv", tmp_path)
    assert isinstance(result.exception, OSError) and "standard output" not in result.stderr
    monkeypatch.delenv("IMGCLUSTER_DEBUG")
    result = invoke("evaluate", tmp_path / "x.csv", tmp_path)
    assert result.exit_code == 1
    assert result.stderr == "error: unexpected OSError: [Errno 36] File name too long (run with IMGCLUSTER_DEBUG=1 for details)\n"


def test_a_file_name_the_locale_cannot_encode_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """Names read from a CSV or its sidecar are UTF-8 text; where Python's file-name encoding is ASCII (PYTHONUTF8=0 with
    LC_ALL=C) every file call on such a name raised, and report ended in "unexpected UnicodeEncodeError"."""
    csv = tmp_path / "x.csv"
    csv.write_text('"path","cluster","confidence"\n"bag/a.png",0,0.5\n', encoding="utf-8")
    (tmp_path / "x.csv.json").write_text(json.dumps({"assign": {"folder": str(tmp_path / "photos é")}}), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PYTHONIOENCODING", None)
    code = "import sys; print(sys.getfilesystemencoding())"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if probe.stdout.strip() != "ascii":
        pytest.skip(f"this Python's file-name encoding under LC_ALL=C is {probe.stdout.strip()!r}, not ascii")
    done = subprocess.run([sys.executable, "-m", "imgcluster", "report", str(csv)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "error: a file name holds '\\xe9', which this system's file-name encoding (ascii) cannot hold: "
        "run imgcluster in a UTF-8 locale (LANG=C.UTF-8) or with PYTHONUTF8=1"
    )
    assert "unexpected" not in done.stderr
