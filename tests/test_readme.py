"""The README's shell examples, run as written, print what the README says they print; its flags exist.

(The "Python API" examples run in tests/test_api.py.)
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer
from imagefolders import SAMPLE, copy_sample
from typer.testing import CliRunner

import imgcluster
from imgcluster.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROMPT = ".venv/bin/imgcluster "
# Flags the docs quote from other programs: pip (installing faiss-gpu), docker (/dev/shm), ray start.
FOREIGN = {"--force-reinstall", "--no-deps", "--shm-size", "--address", "--runtime-env-json"}

runner = CliRunner()


def section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def shell_lines(title: str) -> list[str]:
    """The lines of a section's ```bash blocks."""
    blocks = section(title).split("```")[1::2]
    return [line for block in blocks if block.startswith("bash\n") for line in block.splitlines()[1:] if line.strip()]


def cli_flags() -> set[str]:
    found: set[str] = {"--help"}

    def walk(command: object) -> None:
        for param in command.params:  # type: ignore[attr-defined]
            found.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


@pytest.mark.parametrize("doc", ["README.md", "docs/scale.md", "docs/reliability.md"])
def test_every_flag_the_docs_name_exists(doc: str) -> None:
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", (ROOT / doc).read_text()))
    assert named - cli_flags() - FOREIGN == set()


def run(line: str) -> tuple[str, str]:
    """One README command in process; returns (stdout, stderr)."""
    assert line.startswith(PROMPT), line
    result = runner.invoke(app, shlex.split(line[len(PROMPT) :], comments=True))
    assert result.exit_code == 0, f"{line}\n{result.stderr}"
    return result.stdout, result.stderr


def said(line: str) -> str:
    """What a README comment says a command prints (``# ... text`` or ``# text``)."""
    return line.strip().removeprefix("#").strip().removeprefix("...").strip()


@pytest.fixture
def readers_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout's working directory as the README's reader has it: sample_data, and ./photos of their own."""
    copy_sample(tmp_path / "sample_data", per_class=25)
    assert sum(1 for _ in (tmp_path / "sample_data").rglob("*.png")) == sum(1 for _ in SAMPLE.rglob("*.png")) == 125
    copy_sample(tmp_path / "photos", per_class=3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGCLUSTER_CACHE", raising=False)  # the default cache, FOLDER/.imgcluster
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, as the quick start describes it
    return tmp_path


@pytest.mark.slow
def test_the_readme_shell_examples_print_what_it_says(readers_folder: Path, default_runtime: None) -> None:
    """As a user runs them: no runtime asked for, so EfficientNet-Lite0 in int8 (the output they quote is int8's)."""
    # Quick start: assign, then evaluate, each with the output the comment under it quotes.
    assign, comment, evaluate, scores = shell_lines("Quick start")
    _, err = run(assign)
    lines = err.splitlines()
    assert said(comment) in lines  # wrote 125 assignments to sample_data-clusters.csv (5 clusters)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert "using the bundled offline model efficientnet-lite0" in warnings[0]  # "Offline, assign first says ..."
    assert any(line.startswith("model efficientnet-lite0 on cpu (onnx-int8); cache ") for line in lines)  # which model, runtime, cache
    losses = [line for line in lines if re.match(r"epoch \d+/75 \[train\] loss \d", line)]
    assert 8 <= len(losses) <= 12  # "without a terminal: about ten loss lines, at epoch ends" (it said one per epoch)
    out, _ = run(evaluate)
    for name, value in re.findall(r"(ACC \(Hungarian\)|NMI|ARI) (\d\.\d+)", said(scores)):
        assert re.search(rf"│ {re.escape(name)}\s+│\s+{value} │", out), (name, value)
    assert "per-cluster purity" in out
    csv_example = [line for line in section("Commands").split("```")[1].splitlines() if line]  # "### The CSV": header and first row
    assert (readers_folder / "sample_data-clusters.csv").read_text().splitlines()[:2] == csv_example

    # Choosing K: the line --clusters auto prints, but for the seconds it took.
    command, *comments = shell_lines("Choosing K, outliers, near-duplicates")
    _, err = run(command)
    for comment in comments:  # K's line, then the near-duplicates' counts
        expected = said(comment)
        assert re.sub(r"[\d.]+s$", "", expected) in [re.sub(r"[\d.]+s$", "", line) for line in err.splitlines()], expected
    prose = " ".join(section("Choosing K, outliers, near-duplicates").split())
    assert len(comments) == 2 and "(none of `sample_data`'s images at 0.95)" in prose
    assert imgcluster.cluster_folder("sample_data", n_clusters=5, near_duplicates=0.95, names=False).duplicates == []
    assert (readers_folder / "sample_data-clusters-duplicates.csv").is_file()

    # Reports: the files each command's comment names.
    for line in shell_lines("Reports"):
        run(line)
    assert (readers_folder / "sample_data-clusters.html").is_file() and (readers_folder / "sample_data-clusters-montage").is_dir()
    assert (readers_folder / "photos.csv").is_file() and (readers_folder / "photos.html").is_file()

    # Export: hard links by default, copies with --mode copy (the USB stick is a folder here).
    link, copy = shell_lines("Export")
    run(link)
    run(copy.replace("/mnt/usb/", f"{readers_folder}/usb/"))
    linked = next((readers_folder / "sorted").rglob("*.png"))
    assert os.stat(linked).st_nlink > 1
    copied = next((readers_folder / "usb" / "sorted").rglob("*.png"))
    assert os.stat(copied).st_nlink == 1


def test_progress_is_taken_where_the_readme_says() -> None:
    """The README said "every function takes progress=", but evaluate has none."""
    import inspect

    import imgcluster

    paragraph = section("Python API").split("\nProgress: ", 1)[1].split("\n\n", 1)[0]
    functions = [name for name in imgcluster.__all__ if inspect.isfunction(getattr(imgcluster, name))]
    without = {name for name in functions if "progress" not in inspect.signature(getattr(imgcluster, name)).parameters}
    assert paragraph.startswith("every function but `evaluate` ") and without == {"evaluate"}
    assert "progress" in inspect.signature(imgcluster.ClusterHead.fit).parameters and "`ClusterHead.fit`" in paragraph


def test_every_progress_stage_is_documented() -> None:
    """Events carry a stage name; the README lists them all (the feature store's sample and knn were missing)."""
    paragraph = " ".join(section("Python API").split("\nProgress: ", 1)[1].split("\n\n", 1)[0].split())
    listed = set(re.findall(r"`(\w+)`", paragraph.split("`stage` (", 1)[1].split("), `kind`", 1)[0]))
    source = "\n".join(p.read_text() for p in (ROOT / "imgcluster").rglob("*.py"))
    used = set(re.findall(r"Reporter\(\w+, \"(\w+)\"\)|\.at\(\"(\w+)\"\)", source))
    assert {name for pair in used for name in pair if name} <= listed and len(listed) >= 8


def test_the_scikit_learn_checks_that_fail_are_the_ones_the_readme_names() -> None:
    """The README said the head passes scikit-learn's checks; check_estimator fails three of them."""
    from sklearn.utils.estimator_checks import check_estimator

    from imgcluster import ClusterHead

    paragraph = " ".join(section("Python API").split("It passes", 1)[1].split("So `clone`", 1)[0].split())
    named = set(re.findall(r"`(check_\w+)`", paragraph.split("n_clusters=1", 1)[1]))
    with pytest.warns(UserWarning):  # scikit-learn warns of each check that fails when it is told not to raise
        results = check_estimator(ClusterHead(n_clusters=3, epochs=2, device="cpu"), on_fail=None)
    failed = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "failed"}
    assert set(failed) == named and len(named) == 3
    assert all(message.startswith("n_clusters must be at least 2, got 1") for message in failed.values())


def anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", "docs/scale.md", "docs/reliability.md", "docs/gpu-check.md"])
def test_links_lead_somewhere(doc: str) -> None:
    """The README linked to a "Training" section it did not have, and sent readers to
    ../shared/methods.md, a file outside the repository."""
    path = ROOT / doc
    text = path.read_text()
    anchors = {anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    assert [a for a in re.findall(r"\]\(#([^)]+)\)", text) if a not in anchors] == []
    files = [link.split("#")[0] for link in re.findall(r"\]\(([^)#][^)]*)\)", text) if not link.startswith("http")]
    assert [f for f in files if not (path.parent / f).exists() or ROOT not in (path.parent / f).resolve().parents] == []
    assert "../shared/" not in text


def test_the_objective_options_example_works_with_the_default_objective() -> None:
    """The README's example was objective_options={"entropy_weight": 3}, an option the default objective (secu) refuses."""
    import ast

    from imgcluster import ClusterHead

    examples = re.findall(r"objective_options=(\{[^}]*\})", section("Python API"))
    assert examples
    for example in examples:
        ClusterHead(**ast.literal_eval(example)).train_config()  # raises for an option secu does not have
