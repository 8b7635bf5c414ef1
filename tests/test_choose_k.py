"""``--clusters auto``: the K chooser on synthetic blobs, and the CLI records and explains its choice."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from imagefolders import CLASSES, copy_sample
from typer.testing import CliRunner

from imgcluster.choose_k import choose_k, modularity
from imgcluster.cli import app
from imgcluster.config import write_sidecar
from imgcluster.preflight import parse_clusters

runner = CliRunner()
MODEL = ["--model", "efficientnet-lite0", "--workers", "0"]


def blobs(k: int, per: int = 60, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``k`` groups around random unit directions; within-group spread about a third of the separation."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per)
    x = 0.7 * centres[labels] + rng.normal(size=(k * per, dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


@pytest.mark.parametrize("k", [3, 6, 11])
def test_finds_the_number_of_blobs(k: int) -> None:
    x, _ = blobs(k, seed=k)
    choice = choose_k(x, 2, 15, seed=0)
    assert choice.k == k
    assert sorted(choice.scores) == list(range(2, 16))
    assert choice.scores[k] == max(choice.scores.values()) or choice.k < choice.best_k
    assert f"K={k}" in choice.explanation and "{n_clusters} auto chose" in choice.explanation


def test_same_seed_same_choice_and_record() -> None:
    x, _ = blobs(4, seed=1)
    first, second = choose_k(x, seed=3), choose_k(x, seed=3)
    assert first.k == second.k == 4 and first.scores == second.scores
    record = first.to_dict()
    assert record["clusters_requested"] == "auto" and record["k"] == 4 and record["criterion"] == "knn-modularity"
    assert [row["k"] for row in record["scores"]] == list(range(2, 21))
    assert all(row["score"] == round(first.scores[row["k"]], 6) for row in record["scores"])
    json.dumps(record)  # JSON-ready


def test_scores_read_in_k_order_in_the_sidecar(tmp_path: Path) -> None:
    x, _ = blobs(4, seed=1)
    path = write_sidecar(tmp_path / "clusters.csv.json", choose_k=choose_k(x, seed=3).to_dict())
    text = path.read_text()
    assert [row["k"] for row in json.loads(text)["choose_k"]["scores"]] == list(range(2, 21))
    scores = text[text.index('"scores"') :]
    assert scores.index('"k": 2,') < scores.index('"k": 10,')  # as a person reading the file sees them


def test_large_inputs_are_sampled_and_small_ones_capped() -> None:
    x, _ = blobs(5, per=100, seed=2)
    sampled = choose_k(x, max_points=300)
    assert sampled.points == 300 and sampled.k == 5 and "a sample of 300 of 500 images" in sampled.explanation
    tiny = choose_k(x[:12], 2, 20)
    assert max(tiny.scores) == 6 and "capped at 6" in tiny.explanation
    with pytest.raises(ValueError, match="too few"):
        choose_k(x[:5], 3, 20)
    with pytest.raises(ValueError):
        choose_k(x, 5, 3)
    with pytest.raises(ValueError):
        choose_k(x, 1, 3)


def test_no_structure_is_said_to_be_a_guess() -> None:
    """Ten points, each with the other nine as neighbours: a complete graph, where no partition
    beats chance (Q <= 0), so the chosen K must come with a caveat saying why; blobs get none."""
    x = np.random.default_rng(4).normal(size=(10, 32)).astype(np.float32)
    choice = choose_k(x, 2, 20)
    assert max(choice.scores.values()) <= 0
    assert "with 10 images each is a neighbour of every other" in choice.explanation and "give {n_clusters} a number" in choice.explanation
    sparse = choose_k(x, 2, 4, graph_k=3)  # not complete, so the caveat depends on the scores alone
    assert ("no K shows cluster structure" in sparse.explanation) == (max(sparse.scores.values()) <= 0)
    assert "guess" not in choose_k(blobs(3, seed=3)[0], 2, 8).explanation


def test_modularity_of_two_cliques() -> None:
    block = np.ones((4, 4)) - np.eye(4)
    graph = sp.csr_matrix(sp.block_diag([block, block]))
    assert modularity(graph, np.array([0] * 4 + [1] * 4)) == pytest.approx(0.5)
    assert modularity(graph, np.zeros(8, dtype=np.int64)) == pytest.approx(0.0)


def test_parse_clusters() -> None:
    assert parse_clusters("auto") is None and parse_clusters(" AUTO ") is None
    assert parse_clusters("7") == 7 and parse_clusters(12) == 12
    with pytest.raises(ValueError, match="whole number or 'auto'"):
        parse_clusters("seven")


# ---- through the command line ------------------------------------------------------------------
@pytest.fixture
def folder_with_copy(tmp_path: Path) -> Path:
    """Three classes x 8 sample images (as other tests use: the shared cache has them), plus a byte-identical copy."""
    root = copy_sample(tmp_path / "photos", CLASSES[:3], per_class=8)
    original = sorted((root / CLASSES[1]).glob("*.png"))[0]
    shutil.copy2(original, root / "copy of that one.png")
    return root


def test_assign_auto_outliers_and_near_duplicates(folder_with_copy: Path, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "photos.csv"
    result = runner.invoke(
        app,
        [
            "assign", str(folder_with_copy), "--out", str(out), "--cache-dir", str(shared_cache), *MODEL,
            "--clusters", "auto", "--k-max", "8", "--epochs", "1", "--near-duplicates", "0.98",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "--clusters auto chose K=" in result.stderr and "of 2-8" in result.stderr
    assert "near-duplicate group" in result.stderr and "outlier" in result.stderr
    sidecar = json.loads((out.parent / "photos.csv.json").read_text())
    chosen = sidecar["choose_k"]["k"]
    assert sidecar["choose_k"]["clusters_requested"] == "auto" and 2 <= chosen <= 8
    assert sidecar["train"]["clusters"] == chosen and sidecar["head"]["clusters"] == chosen
    assert [row["k"] for row in sidecar["choose_k"]["scores"]] == list(range(2, 9))
    head_meta = json.loads(Path(sidecar["head"]["path"]).with_suffix(".json").read_text())
    assert head_meta["choose_k"]["k"] == chosen

    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 25 and {"outlier", "outlier_reason"} <= set(rows[0])
    assert all(r["outlier"] in ("0", "1") for r in rows)
    assert all((r["outlier"] == "1") == (r["outlier_reason"] != "") for r in rows)
    assert not any("low-confidence" in r["outlier_reason"] for r in rows)  # the confidence test is off by default
    assert sidecar["result"]["outliers"]["outliers"] == sum(r["outlier"] == "1" for r in rows)
    isolated = sum("isolated" in r["outlier_reason"] for r in rows)  # 25 images: enough for the isolation test
    assert sidecar["result"]["outliers"]["isolated"] == isolated and f"centre, {isolated} isolated from the rest" in result.stderr

    dup_rows = list(csv.DictReader((out.parent / "photos-duplicates.csv").open(encoding="utf-8")))
    assert list(dup_rows[0]) == ["group", "path", "similarity", "kind"]
    original = f"{CLASSES[1]}/{sorted((folder_with_copy / CLASSES[1]).glob('*.png'))[0].name}"
    group = next(r["group"] for r in dup_rows if r["path"] == "copy of that one.png")
    assert {(r["path"], r["kind"]) for r in dup_rows if r["group"] == group} == {(original, ""), ("copy of that one.png", "exact")}
    assert "1 exact" in result.stderr and sidecar["result"]["near_duplicates"]["kinds"]["exact"] == 1
    assert all(float(r["similarity"]) >= 0.98 - 1e-6 for r in dup_rows)
    assert sidecar["result"]["near_duplicates"]["groups"] == len({r["group"] for r in dup_rows})


def test_train_auto_records_choice_in_checkpoint(folder_with_copy: Path, shared_cache: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.safetensors"
    args = ["train", str(folder_with_copy), "--out", str(head), "--cache-dir", str(shared_cache), *MODEL, "--epochs", "1"]
    result = runner.invoke(app, [*args, "--clusters", "auto", "--k-min", "3", "--k-max", "6"])
    assert result.exit_code == 0, result.stderr
    assert "--clusters auto chose K=" in result.stderr
    meta = json.loads(head.with_suffix(".json").read_text())
    assert meta["choose_k"]["clusters_requested"] == "auto" and 3 <= meta["choose_k"]["k"] <= 6
    assert meta["clusters"] == meta["choose_k"]["k"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--clusters", "many"], "whole number or 'auto'"),
        (["--clusters", "auto", "--k-min", "6", "--k-max", "4"], "--k-max (4) must not be below --k-min (6)"),
        (["--near-duplicates", "0.98", "--out", "-"], "--near-duplicates needs --out FILE"),
        (["--near-duplicates", "1.5", "--out", "x.csv"], "cosine similarity in (0, 1]"),
    ],
)
def test_bad_options_fail_before_embedding(extra: list[str], message: str, tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    result = runner.invoke(app, ["assign", str(folder), "--cache-dir", str(tmp_path / "cache"), *MODEL, *extra])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "cache").exists()
