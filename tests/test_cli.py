"""The command line through Typer's CliRunner: exit codes, stdout/stderr split, files written."""

import csv
import io
import json
import os
import shlex
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from imagefolders import CLASSES, copy_sample
from typer.testing import CliRunner

from imgcluster.cli import app

runner = CliRunner()
# No --epochs: given epochs are run as given, and the default trains a small folder for 300 steps.
FAST = ["--model", "efficientnet-lite0", "--clusters", "3", "--workers", "0"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", ["embed", "train", "assign", "evaluate", "objectives", "report", "export"])
def test_help_has_examples(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout and f"imgcluster {command}" in result.stdout


@pytest.mark.parametrize("command", ["", "embed", "train", "assign", "evaluate", "objectives", "report"])
def test_help_shows_no_type_after_flags_and_plain_arguments(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    # train and assign take FOLDER or --features; embed takes a SOURCE (a folder or an s3:// or gs:// prefix)
    argument = {"embed": "SOURCE", "train": "[FOLDER]", "assign": "[FOLDER]"}.get(command)
    assert "{" not in usage and (argument is None or usage.rstrip().endswith(argument))
    assert command != "evaluate" or usage.rstrip().endswith("CSV LABELLED_FOLDER")


@pytest.mark.parametrize("command", ["embed", "train", "assign"])
def test_help_says_what_runtime_auto_runs(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "auto (onnx-int8 for efficientnet-lite0 with its bundled weights on the CPU, else torch; IMGCLUSTER_RUNTIME=torch" in text


def test_options_that_need_the_images_are_refused_with_features_in_words_that_say_so(tmp_path: Path) -> None:
    """The line read "--near-duplicates applies with --features", the opposite of what it meant."""
    result = invoke("assign", "--features", tmp_path / "store", "--near-duplicates", "0.9", "--report")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --report, --near-duplicates apply only to a FOLDER, not with --features: the images themselves are needed, "
        "not their features"
    ]


def test_root_help_and_version() -> None:
    assert "assign" in invoke("--help").stdout
    assert invoke("--version").stdout.startswith("imgcluster ")


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "imgcluster", "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "assign" in out.stdout


def test_assign_pipeline_writes_csv_sidecar_and_skipped(messy_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "clusters.csv"
    result = invoke("assign", messy_folder, "--out", out, "--cache-dir", shared_cache, *FAST)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # data went to the file, logs to stderr
    assert "skipped 3 unreadable files" in result.stderr and f"wrote 18 assignments to {out}" in result.stderr
    # 18 images in 3 clusters: no cluster of 10 for the distance test, no 20 images for the isolation test, and the line says so
    assert (
        "0 outliers of 18 (0%): too few images for the outlier tests (a cluster needs 10 for the distance test, "
        "the folder 20 for the isolation test)"
    ) in result.stderr
    assert "far from their cluster's centre" not in result.stderr and "isolated" not in result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert list(rows[0])[:3] == ["path", "cluster", "confidence"] and "outlier" in rows[0]
    assert len(rows) == 18 and "ünïcødé 名前.webp" in {r["path"] for r in rows}
    assert all(0 <= int(r["cluster"]) < 3 and 0 < float(r["confidence"]) <= 1 for r in rows)
    skipped = list(csv.DictReader((out.parent / "clusters-skipped.csv").open(encoding="utf-8")))
    assert {r["path"] for r in skipped} == {"empty.png", "notes.jpg", "truncated.png"}
    sidecar = json.loads((out.parent / "clusters.csv.json").read_text())
    assert sidecar["backbone"]["model"] == "efficientnet-lite0" and sidecar["train"]["clusters"] == 3
    assert sidecar["train"]["objective"] == "secu" and Path(sidecar["head"]["path"]).is_file()


def test_stdout_output_and_determinism(small_folder: Path, shared_cache: Path) -> None:
    args = ("assign", small_folder, "--out", "-", "--cache-dir", shared_cache, "--seed", "7", "--quiet", *FAST)
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0 and second.exit_code == 0
    assert first.stdout == second.stdout
    assert first.stderr == ""  # --quiet: nothing but warnings and errors
    rows = list(csv.DictReader(io.StringIO(first.stdout)))
    assert len(rows) == 24 and rows[0]["path"] == sorted(r["path"] for r in rows)[0]


def test_step_by_step_and_reuse_of_a_head(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    embedded = invoke("embed", small_folder, "--cache-dir", cache, "--model", "efficientnet-lite0")
    assert embedded.exit_code == 0 and "embedded 24, reused 0" in embedded.stderr
    again = invoke("embed", small_folder, "--cache-dir", cache, "--model", "efficientnet-lite0")
    assert "embedded 0, reused 24" in again.stderr
    head = tmp_path / "head.safetensors"
    # SCAN starts from random heads, so only training reaches the score checked below (the default,
    # SeCu, starts from k-means++ seeds, which already sort these easy images).
    trained = invoke("train", small_folder, "--cache-dir", cache, "--out", head, "--objective", "scan", *FAST)
    assert trained.exit_code == 0 and head.is_file() and head.with_suffix(".json").is_file()
    hint = f"to label new images with this head: imgcluster assign NEW_FOLDER --head {shlex.quote(str(head))}"
    assert trained.stderr.strip().splitlines()[-1] == hint
    meta = json.loads(head.with_suffix(".json").read_text())
    assert meta["objective"] == "scan" and meta["clusters"] == 3 and meta["feature_dim"] == 1280
    total = len(meta["history"])  # the folder is small: more epochs than --epochs, to reach the minimum steps
    epoch_lines = [line for line in trained.stderr.splitlines() if line.startswith("epoch ")]
    assert total > 11 and 2 <= len(epoch_lines) <= 11  # without a terminal, about ten loss lines, not one per epoch
    assert epoch_lines[0].startswith(f"epoch 1/{total} ") and epoch_lines[-1].startswith(f"epoch {total}/{total} ")
    lines = trained.stderr.splitlines()  # each phase says what it does as it starts
    knn, training = lines.index("finding the 20 nearest neighbours of each of 24 images ..."), lines.index("training scan (K=3) ...")
    assert knn < training < lines.index(epoch_lines[0])
    out = tmp_path / "reuse.csv"
    # --model auto picks the head's backbone from its JSON, so no download is attempted
    assigned = invoke("assign", small_folder, "--cache-dir", cache, "--head", head, "--out", out)
    assert assigned.exit_code == 0, assigned.stderr
    assert "embedded 0, reused 24" in assigned.stderr
    sidecar = out.with_name(out.name + ".json")
    pointed = invoke("assign", small_folder, "--cache-dir", cache, "--head", sidecar, "--out", "-")
    assert pointed.exit_code == 2 and f"describes an assignment, not a head; the head it used is {head}" in pointed.stderr
    evaluated = invoke("evaluate", out, small_folder, "--json")
    assert evaluated.exit_code == 0
    scores = json.loads(evaluated.stdout)
    assert scores["matched"] == 24 and scores["acc"] > 0.9
    assert "ACC" in evaluated.stderr and "per-cluster purity" in evaluated.stderr


def test_wrong_head_gives_one_line_error(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    meta = {"format": "imgcluster-head/1", "objective": "scan", "clusters": 3, "feature_dim": 1280}
    bogus.with_suffix(".json").write_text(json.dumps(meta))
    result = invoke("assign", small_folder, "--cache-dir", shared_cache, "--head", bogus, "--model", "efficientnet-lite0")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    missing = invoke("assign", small_folder, "--head", tmp_path / "nope.safetensors")
    assert missing.exit_code == 2 and "head checkpoint not found" in missing.stderr


CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.12 GiB is free. "
    "Of the allocated memory 5.90 GiB is allocated by PyTorch. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)


def test_gpu_out_of_memory_in_training_is_one_line_with_advice(
    small_folder: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import imgcluster.train

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError(CUDA_OOM)

    monkeypatch.setattr(imgcluster.train, "train_objective", out_of_memory)
    result = invoke("train", small_folder, "--cache-dir", shared_cache, *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "error: the GPU ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB); lower --batch-size (training) "
        "or --embed-batch-size (embedding), or run with --device cpu"
    )


def test_gpu_out_of_memory_while_embedding_keeps_what_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from faults import fail_embedding_after_one_batch

    fail_embedding_after_one_batch(monkeypatch, torch.OutOfMemoryError(CUDA_OOM))
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=8)
    result = invoke("embed", folder, "--cache-dir", tmp_path / "cache", "--embed-batch-size", "4", *FAST[:2], "--workers", "0")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: the GPU ran out of memory embedding batches of 4 images (CUDA out of memory. Tried to allocate 2.00 GiB): "
        "4 of 8 files are saved in the cache (4 by this run); run again with a smaller --embed-batch-size to resume"
    )


def test_mismatched_feature_dim(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    from imgcluster.checkpoint import save_checkpoint
    from imgcluster.objectives import create_objective

    head = tmp_path / "small.safetensors"
    save_checkpoint(head, create_objective("scan", 384, 3), {"backbone": {"model": "efficientnet-lite0"}})
    result = invoke("assign", small_folder, "--cache-dir", shared_cache, "--head", head, "--model", "efficientnet-lite0")
    assert result.exit_code == 1
    assert "expects 384-d features" in result.stderr and len(result.stderr.strip().splitlines()[-1]) > 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("assign", "/definitely/not/here"), 2, "folder not found"),
        (("assign", "{folder}", "--model", "resnet-9000"), 2, "known models: auto"),
        (("assign", "{folder}", "--objective", "nope", *FAST[:2]), 2, "known objectives:"),
        (("assign", "{folder}", "--option", "bogus=1"), 2, "has no option bogus"),
        (("assign", "{folder}", "--option", "n_heads=abc"), 2, "option n_heads must be a whole number"),
        (("assign", "{folder}", "--option", "hidden=-3", *FAST[:2]), 2, "cannot be built with options"),
        (("assign", "{folder}", "--clusters", "1"), 2, "--clusters must be at least 2"),
        (("assign", "{folder}", "--knn", "5000"), 2, "--knn must be a whole number from 1 to 1000, got 5000"),
        (("assign", "{folder}", "--head", "{folder}/ankle-boot/00000.png"), 2, "{folder}/ankle-boot/00000.png is not a head checkpoint"),
        (("assign", "{folder}", "--head", "photos-clusters.csv"), 2, "head checkpoint not found: photos-clusters.csv"),
        (("assign", "{folder}", "--head", "{folder}/h.safetensors.json"), 2, "head checkpoint not found: {folder}/h.safetensors"),
        (("assign", "{folder}", "--head", "any.safetensors", "-k", "5", "--lr", "0.1"), 2, "--clusters, --lr apply only to training"),
        (("assign", "{folder}", "--lr", "0"), 2, "error: --lr must be a number above 0, got 0 (see imgcluster assign --help)"),
        (("assign", "{folder}", "--objektive", "scan"), 2, "No such option: --objektive"),
        (("assign",), 2, "Missing argument 'FOLDER'"),
        (("assign", "{folder}", "--objective", "ddc", "--self-label"), 2, "--self-label is SCAN's"),
        (("assign", "{folder}", "--uco"), 2, "--uco adds DDC's"),
        (("assign", "{folder}", "--objective", "kmeans", "--balance", "0.5"), 2, "no uniform-prior term"),
        (("assign", "{folder}", "--clusters", "500", *FAST[:2]), 2, "larger than the number of images"),
        (("assign", "{folder}", "--device", "tpu"), 2, "--device must be"),
        (("evaluate", "missing.csv", "{folder}"), 2, "assignments file not found"),
        (("assign", "{folder}", "--option", "novalue"), 2, "KEY=VALUE"),
    ],
)
def test_user_mistakes_are_one_line_errors(small_folder: Path, shared_cache: Path, args: tuple, code: int, message: str) -> None:
    argv = [a.format(folder=small_folder) for a in args] + ["--quiet"] * (args[0] == "assign")
    if args[0] == "assign":
        argv += ["--cache-dir", str(shared_cache)]
    result = invoke(*argv)
    assert result.exit_code == code, result.stderr
    assert message.format(folder=small_folder) in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")  # the error is one line, and the last


def test_empty_folder(tmp_path: Path) -> None:
    result = invoke("embed", tmp_path, "--model", "efficientnet-lite0")
    assert result.exit_code == 1 and "no images found" in result.stderr


def test_a_folder_of_links_to_elsewhere_says_why_it_is_empty(small_folder: Path, tmp_path: Path) -> None:
    """A folder made only of links into a dataset elsewhere was "no images found" with no word of the links."""
    links = tmp_path / "links"
    links.mkdir()
    for image in sorted(small_folder.rglob("*.png"))[:3]:
        os.symlink(image, links / image.name)
    result = invoke("assign", links, "--model", "efficientnet-lite0", "--quiet")
    assert result.exit_code == 1 and "no images found" in result.stderr
    assert "left out 3 symbolic link(s) that lead outside the folder" in result.stderr and "--follow-symlinks follows them" in result.stderr
    assert result.stderr.count("\n") == 1


def test_links_left_out_of_a_folder_are_a_warning(small_folder: Path, tmp_path: Path, shared_cache: Path) -> None:
    """Some images in the folder, some linked from elsewhere: the run goes on, and says what it left out."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    images = sorted(small_folder.rglob("*.png"))
    for image in images[:4]:
        (mixed / image.name).write_bytes(image.read_bytes())
    os.symlink(images[-1], mixed / "linked.png")
    result = invoke("embed", mixed, "--model", "efficientnet-lite0", "--cache-dir", str(shared_cache), "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "left out 1 symbolic link(s) that lead outside the folder (first: linked.png); --follow-symlinks follows them" in result.stderr


def test_objectives_lists_registry() -> None:
    result = invoke("objectives")
    assert result.exit_code == 0 and "secu (default)" in result.stdout and "entropy_weight" in result.stdout
    assert "    n_heads = 5  (in [1, 64])" in result.stdout and "inter = 'margin'  (one of 'margin', 'mean')" in result.stdout


def test_objective_shortcuts_reach_the_checkpoint(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    head = tmp_path / "scan.safetensors"
    shortcuts = ("--objective", "scan", "--balance", "0.5", "--self-label")
    args = ("train", small_folder, "--cache-dir", shared_cache, "--out", head, *shortcuts, *FAST)
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    meta = json.loads(head.with_suffix(".json").read_text())
    options = meta["train"]["objective_options"]
    assert options == {"entropy_weight": 2.5, "self_label_epochs": 10}
    assert [h["stage"] for h in meta["history"]][-10:] == ["self-label"] * 10


def test_shell_completion(monkeypatch: pytest.MonkeyPatch) -> None:
    # Typer guesses the shell from the parent processes, which fails under nohup or an orphaned CI job
    # ("Shell  not supported"): the test names it, as Typer's own tests do.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    script = invoke("--show-completion", "bash")
    assert script.exit_code == 0 and "_IMGCLUSTER_COMPLETE=complete_bash" in script.stdout
    env = {**os.environ, "_IMGCLUSTER_COMPLETE": "complete_bash", "COMP_WORDS": "imgcluster assign --obj", "COMP_CWORD": "2"}
    completed = subprocess.run([sys.executable, "-m", "imgcluster"], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and completed.stdout.split() == ["--objective"]


def test_assign_explain_adds_distance_columns(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "explained.csv"
    result = invoke("assign", small_folder, "--out", out, "--cache-dir", shared_cache, "--objective", "dsc2i", "--explain", *FAST)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {"distance", "runner_up", "runner_up_distance"} <= set(rows[0])
    for row in rows:
        assert 0.0 <= float(row["distance"]) <= float(row["runner_up_distance"]) <= 2.0  # unit vectors: ||z - c|| <= 2
        assert int(float(row["runner_up"])) != int(row["cluster"])


def test_closed_stdout_pipe_ends_quietly() -> None:
    """`imgcluster ... | head`: when the reader goes away, exit 141 without an error or traceback."""
    code = (
        "from imgcluster.cli import handled\n"
        "from imgcluster.ui import UI\n"
        "import typer\n"
        "try:\n"
        "    with handled(UI()):\n"
        "        raise BrokenPipeError(32, 'Broken pipe')\n"
        "except typer.Exit as exc:\n"
        "    print('still printing is harmless')\n"
        "    raise SystemExit(exc.exit_code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 141 and done.stderr == "" and done.stdout == ""


@pytest.mark.parametrize("args", [["--help"], ["assign", "--help"], ["--version"]])
def test_help_and_version_into_a_closed_pipe_end_as_the_commands_do(args: list[str]) -> None:
    """`imgcluster --help | head`: Click and rich ended the help with exit 1; 141 and silent, as `objectives | head`."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "imgcluster", *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""


def test_out_to_a_named_pipe_streams_the_csv_and_writes_nothing_beside(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    """A pipe (like /dev/null or /dev/stdout) is written in place: no sidecar, no skipped list."""
    (tmp_path / "out").mkdir()
    fifo = tmp_path / "out" / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = invoke("assign", small_folder, "--out", fifo, "--cache-dir", shared_cache, *FAST)
    reader.join(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert f"wrote 24 assignments to {fifo}" in result.stderr
    rows = list(csv.DictReader(io.StringIO(received[0].decode("utf-8"))))
    assert len(rows) == 24
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(p.name for p in fifo.parent.iterdir()) == ["pipe"]
    refused = invoke("assign", small_folder, "--out", fifo, "--report", "--cache-dir", shared_cache, *FAST)
    assert refused.exit_code == 2 and "--report needs --out FILE" in refused.stderr


def test_skipped_list_is_named_after_the_csv_and_removed_when_nothing_is_skipped(
    messy_folder: Path, small_folder: Path, shared_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "clusters.csv"
    assert invoke("assign", messy_folder, "--out", out, "--cache-dir", shared_cache, *FAST).exit_code == 0
    skipped = tmp_path / "clusters-skipped.csv"
    assert skipped.is_file()
    again = invoke("assign", small_folder, "--out", out, "--cache-dir", shared_cache, *FAST)
    assert again.exit_code == 0, again.stderr
    assert not skipped.exists()  # the old list described the other folder
    assert json.loads((tmp_path / "clusters.csv.json").read_text())["result"]["skipped_csv"] is None


def test_a_head_that_learned_nothing_is_called_out(small_folder: Path, tmp_path: Path, shared_cache: Path) -> None:
    """Two images, two clusters: the loss cannot move and every confidence stays at chance."""
    folder = copy_sample(tmp_path / "two", CLASSES[:2], per_class=1)
    result = invoke("assign", folder, "--out", "-", "--cache-dir", shared_cache, *FAST[:2], "--clusters", "2", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    confidences = [float(r["confidence"]) for r in csv.DictReader(io.StringIO(result.stdout))]
    assert max(confidences) < 0.51
    assert "no surer of any image than chance" in result.stderr
    trained = invoke("assign", small_folder, "--out", "-", "--cache-dir", shared_cache, *FAST)
    assert trained.exit_code == 0 and "than chance" not in trained.stderr  # a head that learned is not called out


def test_out_that_is_an_input_image_is_refused_and_the_image_kept(small_folder: Path) -> None:
    """`assign FOLDER --out FOLDER/<image>` once turned the image into CSV text and exited 0."""
    image = sorted((small_folder / CLASSES[0]).glob("*.png"))[0]
    data = image.read_bytes()
    result = invoke("assign", small_folder, "--out", image, *FAST)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --out {image} is an image in {small_folder}, which this run reads; writing there would replace it: give another file\n"
    )
    assert image.read_bytes() == data and not (small_folder / ".imgcluster").exists()  # refused before any work


@pytest.mark.parametrize("target", ["clusters.csv", "clusters.csv.json"])
def test_report_out_that_is_its_input_is_refused_and_the_input_kept(tmp_path: Path, target: str) -> None:
    """`report a.csv --out a.csv` once replaced the CSV with HTML and exited 0."""
    csv_path = tmp_path / "clusters.csv"
    csv_path.write_text('"path","cluster","confidence"\n"a.png",0,0.9\n')
    (tmp_path / "clusters.csv.json").write_text("{}\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = invoke("report", csv_path, "--out", tmp_path / target)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: --out {tmp_path / target} is the ")
    assert "which this run reads; writing there would replace it" in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


class FakeBar:
    def __init__(self, shown: list[tuple], description: str, unit: str) -> None:
        self.shown, self.description, self.unit = shown, description, unit

    def start(self, total: int) -> None:
        self.shown.append(("start", self.description, self.unit, total))

    def update(self, done: int, status: str = "") -> None:
        self.shown.append(("update", done, status))


def test_the_training_bar_starts_with_training_and_moves_per_step() -> None:
    """On a terminal the bar appears before the first step (it used to appear after the first epoch) and counts steps."""
    import contextlib

    from imgcluster import ClusterHead
    from imgcluster.cli import Printer
    from imgcluster.ui import UI

    shown: list[tuple] = []
    ui = UI()
    ui.interactive = True
    ui.progress = lambda description, unit="images": contextlib.nullcontext(FakeBar(shown, description, unit))  # type: ignore[method-assign]
    rng = __import__("numpy").random.default_rng(0)
    x = rng.normal(size=(160, 8)).astype("float32")  # batches of 40: 4 steps an epoch
    with Printer(ui) as show:
        ClusterHead(n_clusters=3, epochs=2, device="cpu").fit(x, progress=show)
    assert shown[0] == ("start", "training secu", "steps", 8)
    assert shown[1] == ("update", 1, "")  # within the first epoch
    ends = [s for s in shown[1:] if s[2]]  # epoch ends show the loss
    assert [s[1] for s in ends] == [4, 8] and all(s[2].startswith("loss ") for s in ends) and shown[-1] == ends[-1]


def test_a_cached_rerun_of_assign_builds_no_model(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    cache, first, second = tmp_path / "cache", tmp_path / "first.csv", tmp_path / "second.csv"
    assert invoke("assign", small_folder, "--out", first, "--cache-dir", cache, *FAST).exit_code == 0

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached rerun built the model")

    monkeypatch.setattr(timm, "create_model", no_model)
    monkeypatch.setattr("imgcluster.train.train_objective", no_model)  # nor trains: the head of the first run is reused
    result = invoke("assign", small_folder, "--out", second, "--cache-dir", cache, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "24 cached, 0 to embed" in result.stderr and "reusing the head trained before" in result.stderr
    assert second.read_bytes() == first.read_bytes()
    sidecars = [json.loads(Path(f"{csv_file}.json").read_text()) for csv_file in (first, second)]
    assert sidecars[1]["head"] == sidecars[0]["head"] and sidecars[1]["train"] == sidecars[0]["train"]


def test_a_damaged_head_is_trained_again(small_folder: Path, tmp_path: Path) -> None:
    cache, first, second = tmp_path / "cache", tmp_path / "first.csv", tmp_path / "second.csv"
    assert invoke("assign", small_folder, "--out", first, "--cache-dir", cache, *FAST).exit_code == 0
    head = next(cache.rglob("heads/*.safetensors"))
    head.write_bytes(head.read_bytes()[:-8] + b"\0" * 8)
    result = invoke("assign", small_folder, "--out", second, "--cache-dir", cache, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "reusing" not in result.stderr and "head saved to" in result.stderr
    assert second.read_bytes() == first.read_bytes()


def test_a_cached_rerun_imports_neither_timm_nor_scikit_learn_nor_torch_compiler(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert invoke("assign", small_folder, "--out", tmp_path / "first.csv", "--cache-dir", cache, *FAST).exit_code == 0
    code = (
        "import sys, atexit; atexit.register(lambda: print(sorted(set(sys.modules) & "
        "{'timm', 'sklearn', 'scipy', 'pandas', 'torchvision', 'sympy', 'torch._dynamo'}), file=sys.stderr)); "
        "from imgcluster.cli import main; sys.argv = ['imgcluster', *sys.argv[1:]]; main()"
    )
    argv = ["assign", small_folder, "--out", tmp_path / "second.csv", "--cache-dir", cache, *FAST]
    done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_a_cold_assign_trains_without_importing_scikit_learn(small_folder: Path, tmp_path: Path) -> None:
    """scikit-learn brings scipy.stats and pandas: 135 MB of RSS and seconds of CPU time that assign does not need."""
    code = (
        "import sys, atexit; atexit.register(lambda: print(sorted(set(sys.modules) & {'sklearn', 'scipy', 'pandas'}), file=sys.stderr)); "
        "from imgcluster.cli import main; sys.argv = ['imgcluster', *sys.argv[1:]]; main()"
    )
    argv = ["assign", small_folder, "--out", tmp_path / "clusters.csv", "--cache-dir", tmp_path / "cache", *FAST]
    done = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "0 cached, 24 to embed" in done.stderr and "head saved to" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_a_file_that_failed_is_reported_but_not_tried_again(small_folder: Path, tmp_path: Path) -> None:
    (small_folder / "broken.png").write_bytes(b"not a png at all")
    cache, out = tmp_path / "cache", tmp_path / "clusters.csv"
    first = invoke("embed", small_folder, "--cache-dir", cache, *FAST[:2])
    assert first.exit_code == 0 and "not tried again" not in first.stderr
    second = invoke("assign", small_folder, "--out", out, "--cache-dir", cache, *FAST)
    assert second.exit_code == 0, second.stderr
    assert "1 file(s) that could not be embedded before are unchanged and were not tried again (--reembed does)" in second.stderr
    assert "24 cached, 0 to embed" in second.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "clusters-skipped.csv").read_text())))
    assert [r["path"] for r in rows] == ["broken.png"]
    assert rows[0]["reason"].startswith("not an image (unrecognised format) (unchanged since it failed on ")
    again = invoke("assign", small_folder, "--out", out, "--cache-dir", cache, "--reembed", *FAST)
    assert again.exit_code == 0 and "not tried again" not in again.stderr and "0 cached, 25 to embed" in again.stderr


def test_a_name_with_a_newline_or_an_escape_sequence_stays_one_line_and_drives_no_terminal(tmp_path: Path) -> None:
    """A folder name with a newline made one error two lines, and ESC sequences in a name reached the terminal."""
    folder = tmp_path / "photos\nerror: fake\x1b]0;title\x07\x1b[2J"
    result = invoke("assign", folder)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert result.stderr.startswith("error: folder not found: ") and "photos\\nerror: fake\\x1b]0;title\\x07\\x1b[2J" in result.stderr


@pytest.mark.parametrize("entry", ["python -m imgcluster", "the imgcluster command"])
def test_ctrl_c_while_the_cli_is_imported_is_one_line_and_ends_by_sigint(entry: str) -> None:
    """Ctrl-C in the first second, while the CLI's modules load, printed a traceback of importlib's frames."""
    code = (
        "import sys\n"
        "class Stop:\n"  # Ctrl-C arriving while imgcluster.cli is imported
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'imgcluster.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Stop())\n"
        "sys.argv = ['imgcluster', 'objectives']\n"
    )
    if entry == "python -m imgcluster":
        code += "import runpy; runpy.run_module('imgcluster', run_name='__main__', alter_sys=True)\n"
    else:  # the function the installed script calls, as pyproject.toml names it
        scripts = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text().split("[project.scripts]")[1]
        module, function = scripts.split('imgcluster = "')[1].split('"')[0].split(":")
        code += f"from {module} import {function}; {function}()\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == -2 and done.stdout == ""
    assert done.stderr == "error: interrupted while starting; nothing was done\n"


def test_ctrl_c_before_a_command_starts_its_work_is_one_line_and_the_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the arguments were parsed or a command set up ended silently with exit 130 (Click's
    default), not with the one line and the signal that a stop in a command gives."""
    import imgcluster.cli
    import imgcluster.signals

    def stopped(quiet: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(imgcluster.cli, "UI", stopped)  # the command's first step, before handled()
    monkeypatch.setattr(imgcluster.signals, "_stopped_by", None)
    result = invoke("objectives")
    assert result.exit_code == 130 and result.stdout == ""
    assert result.stderr == "error: interrupted while starting; nothing was done\n"
    assert imgcluster.signals._stopped_by == 2  # main() then ends the process by SIGINT


@pytest.mark.parametrize("command", [["evaluate", "{folder}", "{folder}"], ["report", "{folder}"], ["export", "{folder}", "--to", "{out}"]])
def test_a_folder_given_as_the_csv_is_called_a_folder_not_missing(command: list[str], tmp_path: Path) -> None:
    """`evaluate photos photos` said "assignments file not found: photos" of a folder that is there."""
    folder = tmp_path / "photos"
    folder.mkdir()
    result = invoke(*(a.format(folder=folder, out=tmp_path / "sorted") for a in command))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: CSV {folder} is a folder; give the CSV that assign wrote\n"


@pytest.mark.parametrize(
    ("command", "named"),
    [(["evaluate", "{csv}", "{csv}"], "LABELLED_FOLDER"), (["report", "{csv}", "--labels", "{csv}", "--folder", "{folder}"], "--labels")],
)
def test_a_file_given_as_the_labelled_folder_is_called_a_file_not_missing(command: list[str], named: str, tmp_path: Path) -> None:
    csv_file = tmp_path / "clusters.csv"
    csv_file.write_text('"path","cluster"\n"cat/1.png",0\n')
    result = invoke(*(a.format(csv=csv_file, folder=tmp_path) for a in command))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"error: {named} {csv_file} is not a folder: give the folder whose sub-folders are the labels"


def test_out_below_a_file_says_which_file_is_in_the_way(small_folder: Path, tmp_path: Path) -> None:
    """`--out clusters.csv/x.csv` failed with "cannot write clusters.csv/x.csv: File exists"."""
    (tmp_path / "clusters.csv").write_text("mine")
    out = tmp_path / "clusters.csv" / "sub" / "x.csv"
    result = invoke("assign", small_folder, *FAST, "--out", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == f"error: cannot write {out}: {tmp_path / 'clusters.csv'} is a file, not a folder"
    assert "embedded" not in result.stderr and (tmp_path / "clusters.csv").read_text() == "mine"


def _labelled_folder_and_csv(tmp_path: Path) -> tuple[Path, Path]:
    """A labelled folder of two (undecodable) files and an assignments CSV of them: enough for evaluate and export."""
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "dog/2.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv_file = tmp_path / "a.csv"
    csv_file.write_text('"path","cluster"\n"cat/1.png",0\n"dog/2.png",1\n')
    return folder, csv_file


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["objectives"], ["evaluate", "{csv}", "{folder}"], ["evaluate", "{csv}", "{folder}", "--json"]]
)
def test_output_onto_a_full_disk_is_one_line_and_exit_1(args: list[str], tmp_path: Path) -> None:
    """stdout on a full disk (`> /dev/full`) gave `unexpected OSError: [Errno 28] ...`, or a traceback from the help."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    folder, csv_file = _labelled_folder_and_csv(tmp_path)
    command = [sys.executable, "-m", "imgcluster", *(a.format(csv=csv_file, folder=folder) for a in args)]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "error: cannot write to standard output: No space left on device"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_the_generators_cannot_take_is_a_usage_error_before_any_work(seed: str, small_folder: Path) -> None:
    """--seed -1 failed once K was being chosen ("unexpected ValueError: expected non-negative integer"),
    and --seed 2**64 when training started ("Overflow when unpacking long long")."""
    result = invoke("assign", small_folder, *FAST, "--seed", seed)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: --seed must be a whole number from 0 to 2**64 - 1, got {seed}\n"
    assert not (small_folder / ".imgcluster").exists()


@pytest.mark.parametrize(
    "command", [["report", "{csv}", "--folder", "{folder}"], ["export", "{csv}", "--to", "{out}", "--folder", "{folder}"]]
)
def test_a_csv_listing_an_image_twice_is_refused_by_report_and_export_as_by_evaluate(command: list[str], tmp_path: Path) -> None:
    """evaluate refused it; export put the image in two cluster folders and the report showed it twice."""
    folder = tmp_path / "photos"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"x")
    csv_file = tmp_path / "clusters.csv"
    csv_file.write_text('"path","cluster"\n"cat/1.png",0\n"cat/1.png",1\n')
    result = invoke(*(a.format(csv=csv_file, folder=folder, out=tmp_path / "sorted") for a in command))
    assert result.exit_code == 1 and result.stdout == ""
    message = f"error: {csv_file} lists 1 path(s) more than once (e.g. 'cat/1.png'); an assignment has one row per image"
    assert result.stderr.splitlines()[-1] == message
    assert not (tmp_path / "sorted").exists() and not (tmp_path / "clusters.html").exists()


@pytest.mark.parametrize(
    ("command", "patched", "line"),
    [
        (
            ["export", "a.csv", "--to", "x"],
            "export",
            "interrupted: no image was moved or changed; what was exported stays, and the same command exports the rest",
        ),
        (["report", "a.csv"], "_write_report", "interrupted: no report was written"),
        (["evaluate", "a.csv", "x"], "evaluate", "interrupted; nothing was written"),
    ],
)
def test_a_stop_in_export_report_or_evaluate_says_what_that_command_keeps(
    command: list[str], patched: str, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C in export or report said "every finished batch is kept in the cache", which they do not have."""
    import imgcluster.cli

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(imgcluster.cli if patched.startswith("_") else imgcluster, patched, stopped)
    result = invoke(*command)
    assert result.exit_code == 130 and result.stdout == ""
    assert result.stderr == f"error: {line}\n"


@pytest.mark.parametrize(
    ("command", "line"),
    [
        (["train", "{folder}", "--clusters", "2", "--out", "-"], "--out -: a head checkpoint (two files) cannot go to standard output"),
        (["export", "{csv}", "--to", "-", "--folder", "{folder}"], "--to -: an export (a folder of images) cannot go to standard output"),
    ],
)
def test_dash_for_an_output_that_cannot_go_to_stdout_is_refused(
    command: list[str], line: str, small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --out -` wrote a head named `-` (and suggested `--head -`); `export --to -` filled a folder named `-`."""
    csv_file = tmp_path / "clusters.csv"
    csv_file.write_text('"path","cluster"\n"a.png",0\n')
    monkeypatch.chdir(tmp_path)
    result = invoke(*(a.format(folder=small_folder, csv=csv_file) for a in command))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: {line}; give a name\n"
    assert not (tmp_path / "-").exists() and not (small_folder / ".imgcluster").exists()


def test_ctrl_c_while_the_interpreter_tears_down_ends_by_sigint_without_a_traceback() -> None:
    """A Ctrl-C after the run's last line, during torch's exit hooks, printed "Exception ignored in atexit callback"."""
    code = (
        "import atexit, os, signal, sys, time\n"
        "from imgcluster.cli import main\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(2)))\n"  # runs first: the last registered
        "sys.argv = ['imgcluster', '--version']\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == -2 and done.stdout.startswith("imgcluster ") and done.stderr == ""


def test_an_empty_out_is_a_usage_error_not_the_default_file(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out "$OUT"` with OUT unset wrote ./<folder>-clusters.csv without a word."""
    monkeypatch.chdir(tmp_path)
    result = invoke("assign", small_folder, *FAST, "--out", "")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "error: --out is empty: give a file name, or - for standard output\n"
    assert list(tmp_path.iterdir()) == [small_folder] and not (small_folder / ".imgcluster").exists()


@pytest.mark.parametrize("out", ["", "{folder}"])
def test_train_out_that_is_a_folder_is_refused_before_training(
    out: str, small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --out ""` (the current folder) and `train --out FOLDER` failed after the training ("cannot write .")."""
    monkeypatch.chdir(tmp_path)
    result = invoke("train", small_folder, *FAST, "--out", out.format(folder=tmp_path))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"error: --out {out.format(folder=tmp_path) or '.'} is a folder; give a file name\n"
    assert not (small_folder / ".imgcluster").exists()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["objectives"], 1),
        (["evaluate", "{csv}", "{folder}"], 1),
        (["evaluate", "{csv}", "{folder}", "--json"], 1),
        (["export", "{csv}", "--to", "{out}", "--folder", "{folder}"], 0),  # writes nothing on stdout: unaffected
        (["--help"], 0),
    ],
)
def test_a_closed_stdout_is_one_line_for_output_and_harmless_otherwise(args: list[str], code: int, tmp_path: Path) -> None:
    """`imgcluster objectives >&-` printed nothing and exited 0; evaluate gave `unexpected AttributeError`."""
    folder, csv_file = _labelled_folder_and_csv(tmp_path)
    command = [sys.executable, "-m", "imgcluster", *(a.format(csv=csv_file, folder=folder, out=tmp_path / "sorted") for a in args)]
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=lambda: os.close(1))
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    if code:
        assert done.stderr.splitlines()[-1] == "error: cannot write to standard output: it is closed"
