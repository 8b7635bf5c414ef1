import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgcluster.cli import app
from imgcluster.errors import ImgclusterError
from imgcluster.scoring import evaluate, hungarian_accuracy, score


def test_permuted_labels_score_perfectly() -> None:
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    clusters = np.array([2, 2, 0, 0, 1, 1])
    s = score(labels, clusters)
    assert s["acc"] == 1.0 and s["nmi"] == pytest.approx(1.0) and s["ari"] == pytest.approx(1.0)


def test_more_clusters_than_classes_hand_computed() -> None:
    # classes a,a,a,b,b,b; clusters 0,0,1,2,2,2 -> best matching 0->a (2), 2->b (3): 5/6
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    clusters = np.array([0, 0, 1, 2, 2, 2])
    assert hungarian_accuracy(labels, clusters) == pytest.approx(5 / 6)


def test_fewer_clusters_than_classes() -> None:
    # one cluster can match one class only: 3 of 6
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    assert hungarian_accuracy(labels, np.zeros(6, int)) == pytest.approx(2 / 6)


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text('"path","cluster","confidence"\n' + "".join(f'"{p}",{c},1.0\n' for p, c in rows))
    return path


def test_evaluate_counts_unmatched(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "cat/2.png", "dog/3.png", "dog/4.png", "dog/5.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv = write_csv(tmp_path / "a.csv", [("cat/1.png", 7), ("cat/2.png", 7), ("dog/3.png", 1), ("dog/4.png", 7), ("ghost.png", 1)])
    e = evaluate(csv, folder)
    assert e.matched == 4 and e.unmatched_assignments == 1 and e.unassigned_images == 1
    assert e.unmatched_examples == ["ghost.png"] and e.unassigned_examples == ["dog/5.png"]  # which ones, not only how many
    assert e.to_dict()["unassigned_examples"] == ["dog/5.png"]
    assert e.acc == pytest.approx(3 / 4)
    biggest = e.per_cluster[0]
    assert (biggest.cluster, biggest.size, biggest.majority_label) == (7, 3, "cat")
    assert biggest.purity == pytest.approx(2 / 3)


def test_evaluate_errors(tmp_path: Path) -> None:
    with pytest.raises(ImgclusterError, match="not found"):
        evaluate(tmp_path / "missing.csv", tmp_path)
    csv = write_csv(tmp_path / "a.csv", [("x/1.png", 0)])
    (tmp_path / "lab" / "y").mkdir(parents=True)
    (tmp_path / "lab" / "y" / "2.png").write_bytes(b"x")
    with pytest.raises(ImgclusterError, match="no path"):
        evaluate(csv, tmp_path / "lab")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ImgclusterError, match="missing column"):
        evaluate(bad, tmp_path / "lab")
    empty = tmp_path / "empty.csv"
    empty.write_text('"path","cluster","confidence"\n')
    with pytest.raises(ImgclusterError, match="has no rows"):
        evaluate(empty, tmp_path / "lab")
    twice = write_csv(tmp_path / "twice.csv", [("y/2.png", 0), ("y/2.png", 1)])
    with pytest.raises(ImgclusterError, match=r"lists 1 path\(s\) more than once \(e.g. 'y/2.png'\)"):
        evaluate(twice, tmp_path / "lab")


def test_evaluate_command_prints_scores_on_stdout(tmp_path: Path) -> None:
    """The scores are the command's output: `evaluate csv folder > scores.txt` keeps them, even with -q."""
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "dog/2.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv = write_csv(tmp_path / "a.csv", [("cat/1.png", 0), ("dog/2.png", 1), ("ghost.png", 1)])
    result = CliRunner().invoke(app, ["evaluate", str(csv), str(folder), "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert "ACC (Hungarian)" in result.stdout and "1.0000" in result.stdout and result.stderr == ""
    assert "rows not in the folder │ 1 (ghost.png)" in result.stdout and "images not in the CSV  │             0" in result.stdout
    as_json = CliRunner().invoke(app, ["evaluate", str(csv), str(folder), "--json"])
    assert json.loads(as_json.stdout)["acc"] == 1.0 and "ACC (Hungarian)" in as_json.stderr


def test_evaluate_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`evaluate ... | head`: rich would end a broken pipe with exit 1; the scores end as 141, silently."""
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "dog/2.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv = write_csv(tmp_path / "a.csv", [("cat/1.png", 0), ("dog/2.png", 1)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgcluster", "evaluate", str(csv), str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the scores are written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and stderr == ""


def test_label_names_are_printed_as_they_are(tmp_path: Path) -> None:
    """A label folder named `[bold red]RED` was shown as `RED`: rich read the name as markup."""
    folder = tmp_path / "labelled"
    for rel in ["[bold red]RED/1.png", "[italic]blue/2.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv = write_csv(tmp_path / "a.csv", [("[bold red]RED/1.png", 0), ("[italic]blue/2.png", 1)])
    result = CliRunner().invoke(app, ["evaluate", str(csv), str(folder)])
    assert result.exit_code == 0, result.stderr
    assert "[bold red]RED" in result.stdout and "[italic]blue" in result.stdout


def test_names_with_control_characters_cannot_drive_the_terminal_from_the_tables(tmp_path: Path) -> None:
    """A cluster name, a label folder or an image name with ESC sequences reached the terminal through stdout's tables."""
    folder = tmp_path / "labelled"
    for rel in ["cat\x1b[31m/1.png", "cat\x1b[31m/2\x1b]0;t\x07.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    named = tmp_path / "named.csv"
    named.write_text('"path","cluster","cluster_name"\n"cat\x1b[31m/1.png",0,"tab\x1b[2Jby"\n', encoding="utf-8")
    shown = CliRunner().invoke(app, ["evaluate", str(named), str(folder)])
    assert shown.exit_code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "cat\\x1b[31m" in shown.stdout and "tab\\x1b[2Jby" in shown.stdout and "2\\x1b]0;t\\x07.png" in shown.stdout


def test_evaluate_shows_cluster_names_when_the_csv_has_them(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "cat/2.png", "dog/3.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    named = tmp_path / "named.csv"
    named.write_text('"path","cluster","cluster_name"\n"cat/1.png",0,"tabby"\n"cat/2.png",0,"tabby"\n"dog/3.png",1,"[b]beagle"\n')
    assert [(p.cluster, p.name) for p in evaluate(named, folder).per_cluster] == [(0, "tabby"), (1, "[b]beagle")]
    shown = CliRunner().invoke(app, ["evaluate", str(named), str(folder)])
    assert shown.exit_code == 0 and "name" in shown.stdout and "tabby" in shown.stdout and "[b]beagle" in shown.stdout
    assert json.loads(CliRunner().invoke(app, ["evaluate", str(named), str(folder), "--json"]).stdout)["per_cluster"][0]["name"] == "tabby"
    plain = write_csv(tmp_path / "plain.csv", [("cat/1.png", 0), ("dog/3.png", 1)])
    header = [line for line in CliRunner().invoke(app, ["evaluate", str(plain), str(folder)]).stdout.splitlines() if "majority" in line]
    assert header and "name" not in header[0]  # no empty name column without names


def test_a_cluster_named_differently_on_some_rows_shows_its_most_common_name(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "cat/2.png", "cat/3.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    mixed = tmp_path / "mixed.csv"
    mixed.write_text('"path","cluster","cluster_name"\n"cat/1.png",0,"tabby"\n"cat/2.png",0,"tabby"\n"cat/3.png",0,"lynx"\n')
    assert [(p.cluster, p.name) for p in evaluate(mixed, folder).per_cluster] == [(0, "tabby")]  # was the last row's "lynx"


def test_evaluate_names_the_first_missing_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgcluster.cli import app

    folder = tmp_path / "labelled"
    names = [f"cat/{i}.png" for i in range(9)] + ["dog/[x].png"]
    for rel in names:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv = write_csv(tmp_path / "a.csv", [("cat/0.png", 0), ("dog/[x].png", 1)])
    e = evaluate(csv, folder)
    assert e.unassigned_images == 8 and e.unassigned_examples == [f"cat/{i}.png" for i in range(1, 6)]
    result = CliRunner().invoke(app, ["evaluate", str(csv), str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "images not in the CSV │ 8 (cat/1.png, cat/2.png, cat/3.png, cat/4.png, cat/5.png, ...)" in " ".join(result.stdout.split())
    csv = write_csv(tmp_path / "b.csv", [*((f"cat/{i}.png", 0) for i in range(9)), ("dog/[y].png", 1)])
    result = CliRunner().invoke(app, ["evaluate", str(csv), str(folder)], env={"COLUMNS": "200"})
    table = " ".join(result.stdout.split())
    assert "rows not in the folder │ 1 (dog/[y].png)" in table and "images not in the CSV │ 1 (dog/[x].png)" in table


def test_a_csv_of_a_few_of_the_labelled_images_says_how_few_and_what_acc_of_all_of_them_is(tmp_path: Path) -> None:
    """A CSV covering 1 of 18 images scored ACC 1.0, with only a table row saying 17 were missing."""
    import json

    from typer.testing import CliRunner

    from imgcluster.cli import app

    folder = tmp_path / "labelled"
    names = [f"cat/{i}.png" for i in range(9)] + [f"dog/{i}.png" for i in range(9)]
    for rel in names:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    few = write_csv(tmp_path / "few.csv", [("cat/0.png", 0)])
    e = evaluate(few, folder)
    assert (e.acc, e.matched, e.labelled, e.unassigned_images) == (1.0, 1, 18, 17)
    assert e.coverage == pytest.approx(1 / 18) and e.acc_of_labelled == pytest.approx(1 / 18)
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(few), str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: the CSV covers 1 of the 18 labelled images (5.6%): the scores are of those 1 image only; "
        "ACC of all 18, the 17 missing counted wrong, is 0.0556\n"
    )
    table = " ".join(result.stdout.split())
    assert "coverage │ 1 of 18 labelled images (5.6%)" in table and "ACC, missing = wrong │ 0.0556" in table
    as_json = runner.invoke(app, ["evaluate", str(few), str(folder), "--json", "--quiet"])
    scores = json.loads(as_json.stdout)
    assert (scores["labelled"], scores["coverage"], scores["acc_of_labelled"]) == (18, pytest.approx(1 / 18), pytest.approx(1 / 18))
    assert as_json.stderr.startswith("warning: the CSV covers 1 of the 18 labelled images")  # a warning stays under --quiet
    whole = write_csv(tmp_path / "whole.csv", [(rel, int(rel.startswith("dog"))) for rel in names])
    e = evaluate(whole, folder)
    assert (e.coverage, e.acc_of_labelled, e.acc) == (1.0, 1.0, 1.0)
    result = runner.invoke(app, ["evaluate", str(whole), str(folder)])
    assert result.exit_code == 0 and result.stderr == "" and "coverage" not in result.stdout


def test_rows_for_images_at_the_folders_top_are_unlabelled_not_missing_from_it(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    for rel in ["cat/1.png", "cat/2.png", "dog/3.png", "stray.png"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    csv = write_csv(tmp_path / "a.csv", [("cat/1.png", 0), ("cat/2.png", 0), ("dog/3.png", 1), ("stray.png", 1), ("ghost.png", 1)])
    e = evaluate(csv, folder)
    assert (e.matched, e.unlabelled_rows, e.unlabelled_examples) == (3, 1, ["stray.png"])
    assert (e.unmatched_assignments, e.unmatched_examples) == (1, ["ghost.png"])  # stray.png is in the folder
    assert e.to_dict()["unlabelled_rows"] == 1 and e.acc == 1.0
    shown = CliRunner().invoke(app, ["evaluate", str(csv), str(folder)])
    assert shown.exit_code == 0, shown.output
    assert "outside every sub-folder, have no label and are not scored: 1 (stray.png)" in shown.stderr
    assert "rows with no label" in shown.stdout and "rows not in the folder" in shown.stdout
