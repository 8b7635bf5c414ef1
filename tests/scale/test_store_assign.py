"""train and assign from a feature store, in process: the same answer as the single-machine path, and the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from imagefolders import SAMPLE
from storefixtures import MODEL, infinite_outside_the_sample, planted_store, store_from_cache, write_unchecked
from typer.testing import CliRunner

import imgcluster
from imgcluster.cli import app
from imgcluster.featurestore import iter_batches
from imgcluster.naming import cluster_names
from imgcluster.scale.assign_job import assign_store
from imgcluster.scale.knn import RAY_KNN_THRESHOLD
from imgcluster.scale.training import train_from_store

pq = pytest.importorskip("pyarrow.parquet", reason="the feature store needs pyarrow (the 'ray' extra)")

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """sample_data's features from the single-machine cache, written into a store; and that cache."""
    cache = tmp_path_factory.mktemp("cache")
    embeddings = imgcluster.embed(SAMPLE, MODEL, cache_dir=cache, device="cpu")
    return store_from_cache(embeddings, str(tmp_path_factory.mktemp("store") / "features")), cache


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_assign_from_a_store_gives_the_single_machine_csv(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, cache = store
    single = tmp_path / "single.csv"
    imgcluster.cluster_folder(SAMPLE, out=single, n_clusters=5, seed=0, model=MODEL, cache_dir=cache, device="cpu")
    scaled = tmp_path / "scaled.csv"
    result = assign_store(uri, out=scaled, n_clusters=5, seed=0, device="cpu")
    expected, found = _rows(single), _rows(scaled)
    assert list(found[0]) == list(expected[0])  # the same columns, in the same order
    # The store lists rows bucket by bucket; row for row the content is the single-machine CSV's (the names from the
    # images shown inverted, as sample_data is drawn light on black; both outlier tests, `isolated` included),
    # but for the confidence's last digit: the head's float32 products round differently with the
    # number of rows given at once (125 there, one bucket's few here), by up to 1e-6.
    ordered = sorted(found, key=lambda r: r["path"])
    assert [{**r, "confidence": ""} for r in ordered] == [{**r, "confidence": ""} for r in expected]
    assert any("isolated" in r["outlier_reason"] for r in expected)  # the isolation test flagged rows, and the store agrees
    shown = {r["cluster_name"] for r in found} - {""}  # the sandals', trousers' and bags' names are withheld (too unlike)
    assert len(shown) == 2 and len({r["cluster"] for r in found if not r["cluster_name"]}) == 3
    features = imgcluster.embed(SAMPLE, MODEL, cache_dir=cache, device="cpu").features  # the cache's, in path order
    plain = cluster_names(features, np.array([int(r["cluster"]) for r in ordered]))
    assert {r["cluster_name"] for r in found} != set(plain.values())  # named from the images, not from the features alone
    gap = max(abs(float(a["confidence"]) - float(b["confidence"])) for a, b in zip(ordered, expected))
    assert gap <= 1.01e-6
    assert result.rows == 125 and result.sample["sample"] == 125 and sum(result.cluster_sizes.values()) == 125
    table = pq.read_table(result.written["parquet"])
    assert table.column_names == list(expected[0])
    assert table.column("path").to_pylist() == [r["path"] for r in found]
    assert table.column("cluster").to_pylist() == [int(r["cluster"]) for r in found]
    sidecar = json.loads(result.written["sidecar"].read_text())
    assert sidecar["features"]["rows"] == 125 and sidecar["assign"]["folder"] == str(SAMPLE)
    assert sidecar["result"]["names_from"].startswith("the images shown inverted")
    assert sidecar["result"]["isolation"]["k"] == 10 and sidecar["result"]["outliers"]["isolated"] >= 1
    folder_sidecar = json.loads(single.with_name("single.csv.json").read_text())["result"]["outliers"]
    for count in ("outliers", "low_confidence", "far_from_centre", "isolated", "rule"):  # the folder's counts, in its words
        assert sidecar["result"]["outliers"][count] == folder_sidecar[count], count
    score = imgcluster.evaluate(scaled, SAMPLE)  # evaluate reads it like any assignment
    assert score.matched == 125 and score.acc > 0.9


@pytest.mark.slow
def test_more_clusters_than_rows_is_refused_before_any_training(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    events: list[imgcluster.Event] = []
    with pytest.raises(imgcluster.ParameterError, match=r"n_clusters 200 is larger than the number of images \(125\)"):
        train_from_store(uri, n_clusters=200, out=tmp_path / "h.safetensors", progress=events.append)
    assert not [e for e in events if e.stage in ("knn", "train")], events  # said before any training line
    assert not (tmp_path / "h.safetensors").exists()


def test_more_clusters_than_rows_from_the_cli_is_refused_before_any_training(store: tuple[str, Path], tmp_path: Path) -> None:
    """The CLI gives the clusters as text: the check took only a number, and a store of 125 rows printed the
    kNN's and the training's lines before the training refused 200 clusters."""
    uri, _ = store
    for command, out in (("train", "h.safetensors"), ("assign", "c.csv")):
        done = runner.invoke(app, [command, "--features", uri, "--clusters", "200", "--out", str(tmp_path / out)])
        said = done.stderr.splitlines()
        assert done.exit_code == 2 and said[-1] == "error: --clusters 200 is larger than the number of images (125)", done.stderr
        assert not [line for line in said if line.startswith(("finding", "training", "125 images"))], said
    assert not list(tmp_path.iterdir())


def test_a_head_trained_on_a_sample_labels_every_row(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    events: list[str] = []
    head, path = train_from_store(
        uri, out=tmp_path / "head.safetensors", n_clusters=5, train_sample=60, seed=1, epochs=5, progress=lambda e: events.append(str(e))
    )
    description = json.loads(path.with_suffix(".json").read_text())
    assert description["features"]["sample"] == 60 and description["features"]["rows"] == 125
    assert description["backbone"]["model"] == MODEL and head.n_clusters_ == 5
    assert any("seeded sample of 60 of the store's 125 rows" in e for e in events)
    out = tmp_path / "labels.csv"
    result = assign_store(uri, out=out, head=path, train_sample=60, seed=1, names=False, min_confidence=0.5, device="cpu")
    rows = _rows(out)
    assert len(rows) == 125 == len({r["path"] for r in rows}) and "cluster_name" not in rows[0]
    assert all(r["outlier_reason"].startswith("low-confidence") for r in rows if float(r["confidence"]) < 0.5)
    assert result.head == path


def test_the_cli_runs_from_a_store_and_refuses_what_does_not_apply(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    out = tmp_path / "c.csv"
    done = runner.invoke(app, ["assign", "--features", uri, "--out", str(out), "-k", "5", "--epochs", "2", "--no-names", "--quiet"])
    assert done.exit_code == 0, done.stderr
    assert len(_rows(out)) == 125 and out.with_suffix(".parquet").is_file()
    head = tmp_path / "h.safetensors"
    trained = runner.invoke(app, ["train", "--features", uri, "--out", str(head), "-k", "5", "--epochs", "2", "--objective", "dsc2i"])
    assert trained.exit_code == 0, trained.stderr
    assert f"imgcluster assign --features {uri} --head {head}" in trained.stderr and head.is_file()
    explained = runner.invoke(
        app, ["assign", "--features", uri, "--head", str(head), "--explain", "--nprobe", "4", "--out", str(tmp_path / "e.csv")]
    )  # with --head, --nprobe and --knn-threshold still shape the isolation test's search
    assert explained.exit_code == 0, explained.stderr
    isolation = json.loads((tmp_path / "e.csv.json").read_text())["result"]["isolation"]
    assert isolation["search"] == {"knn_threshold": RAY_KNN_THRESHOLD, "nprobe": 4, "search": "one machine"}
    explained_rows = _rows(tmp_path / "e.csv")
    assert len(explained_rows) == 125 and {"distance", "runner_up", "runner_up_distance"} <= set(explained_rows[0])  # dsc2i's columns
    for args, message in [
        (["assign", str(SAMPLE), "--features", uri], "give FOLDER or --features, not both"),
        (["assign", "--features", uri, "--model", "efficientnet-lite0"], "--model applies to embedding a FOLDER"),
        (["assign", "--features", uri, "--near-duplicates", "0.9"], "--near-duplicates applies only to a FOLDER, not with --features"),
        (["assign", str(SAMPLE), "--engine", "ray"], "--engine applies only with --features"),
        (["train", str(SAMPLE), "--train-sample", "100"], "--train-sample applies only with --features"),
        (["assign", "--features", uri, "--engine", "spark"], "--engine must be local or ray"),
        (["train"], "Missing argument 'FOLDER'"),
        (["assign", "--features", uri, "--out", str(tmp_path / "c.parquet")], f"--out {tmp_path / 'c.parquet'} is where the CSV goes"),
        (
            ["assign", "--features", uri, "--head", str(tmp_path / "h.safetensors"), "--out", str(tmp_path / "h.safetensors")],
            "is the head checkpoint, which this run reads",
        ),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr and result.stderr.count("error:") == 1, (args, result.stderr)
    missing = runner.invoke(app, ["assign", "--features", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.csv")])
    assert missing.exit_code == 1 and "no imgcluster features at" in missing.stderr
    assert not np.any([p.name == "x.csv" for p in tmp_path.iterdir()])


def test_a_stopped_pass_writes_no_csv_and_says_where_the_head_is(store: tuple[str, Path], tmp_path: Path) -> None:
    from imgcluster.signals import Interrupted

    uri, _ = store

    def stop(event: imgcluster.Event) -> None:
        if event.stage == "assign" and event.kind == "advance":
            raise KeyboardInterrupt

    out = tmp_path / "c.csv"
    with pytest.raises(Interrupted) as stopped:
        assign_store(uri, out=out, n_clusters=5, epochs=2, names=False, batch_rows=16, device="cpu", progress=stop)
    assert "no CSV was written" in str(stopped.value) and "give it as the head to rerun without training" in str(stopped.value)
    assert not out.exists() and not out.with_suffix(".parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either


def test_the_knn_and_engine_options_are_checked_first_and_recorded_in_the_head(store: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = store
    nowhere = str(tmp_path / "nothing")  # checked before the store is opened: a bad value, not a missing store
    for args, message in [
        (["train", "--features", nowhere, "--nprobe", "0"], "--nprobe must be a whole number of at least 1, got 0"),
        (["assign", "--features", nowhere, "--knn-threshold", "0"], "--knn-threshold must be a whole number of at least 1, got 0"),
        (["assign", str(SAMPLE), "--nprobe", "4"], "--nprobe applies only with --features"),
        (["train", str(SAMPLE), "--knn-threshold", "9"], "--knn-threshold applies only with --features"),
        (["assign", "--features", uri, "--head", str(tmp_path / "h.safetensors"), "--seed", "4"], "--seed applies only to training"),
        (["train", str(SAMPLE), "--engine", "ray"], "--engine applies only with --features"),
        (["train", "--features", nowhere, "--engine", "spark"], "--engine must be local or ray, not 'spark'"),
        # ignored before: a job meant for a cluster ran in this process
        (["train", "--features", nowhere, "--ray-address", "auto"], "--ray-address auto applies to --engine ray only; --engine local runs"),
        (["assign", "--features", nowhere, "--ray-address", "h:1"], "--ray-address h:1 applies to --engine ray only; --engine local runs"),
        (["train", "--features", nowhere, "--runtime", "onnx"], "--runtime applies to embedding a FOLDER and to assign's naming pass"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.stderr)
        assert message in result.stderr and result.stderr.count("error:") == 1, (args, result.stderr)
    with pytest.raises(imgcluster.ParameterError, match=r"^nprobe must be a whole number of at least 1, got 2\.5"):
        train_from_store(nowhere, out=tmp_path / "x.safetensors", nprobe=2.5)  # type: ignore[arg-type]
    _, path = train_from_store(uri, out=tmp_path / "h.safetensors", n_clusters=5, epochs=1, knn_threshold=10**6, nprobe=7, device="cpu")
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["knn_search"] == {"knn_threshold": 10**6, "nprobe": 7, "search": "one machine"}


def test_a_stop_before_the_pass_says_that_nothing_was_written(store: tuple[str, Path], tmp_path: Path) -> None:
    from imgcluster.signals import Interrupted

    uri, _ = store

    def stop_at(stage: str) -> imgcluster.progress.ProgressFn:
        def progress(event: imgcluster.Event) -> None:
            if event.stage == stage and event.kind == "advance":
                raise KeyboardInterrupt

        return progress

    with pytest.raises(Interrupted, match=r"^interrupted while reading the training sample: nothing was written"):
        assign_store(uri, out=tmp_path / "c.csv", n_clusters=5, epochs=1, names=False, device="cpu", progress=stop_at("sample"))
    with pytest.raises(Interrupted, match=r"^interrupted while training the head: no head was written"):
        train_from_store(uri, out=tmp_path / "h.safetensors", n_clusters=5, epochs=1, device="cpu", progress=stop_at("train"))
    assert list(tmp_path.iterdir()) == []


def test_rows_outside_the_sample_get_the_lof_of_a_new_image_against_the_sample(store: tuple[str, Path]) -> None:
    """A store larger than the sample: the sample's rows keep their LOF among the sample, the others are measured
    against it as scikit-learn's LocalOutlierFactor(novelty=True) measures a new point (an independent reference)."""
    from sklearn.neighbors import LocalOutlierFactor

    from imgcluster.neighbours import l2_normalise
    from imgcluster.scale.labels import fit_isolation
    from imgcluster.scale.training import read_sample

    uri, _ = store
    sample = read_sample(uri, 60, seed=1)
    isolation = fit_isolation(sample.features, sample.paths, 1, knn_threshold=10**6, nprobe=16)
    assert isolation is not None and isolation.k == 10  # the folder's rule on the sample's 60 rows
    batches = list(iter_batches(uri))
    paths = [p for batch_paths, _ in batches for p in batch_paths]
    features = np.concatenate([f for _, f in batches]).astype(np.float32)
    lof, _ = isolation.scores(paths, l2_normalise(features))
    reference = LocalOutlierFactor(n_neighbors=10, metric="cosine", algorithm="brute", novelty=True).fit(sample.features)
    row = {p: i for i, p in enumerate(sample.paths)}
    inside = np.array([p in row for p in paths])
    assert inside.sum() == 60
    np.testing.assert_allclose(lof[inside], -reference.negative_outlier_factor_[[row[p] for p in np.array(paths)[inside]]], rtol=1e-4)
    np.testing.assert_allclose(lof[~inside], -reference.score_samples(features[~inside]), rtol=1e-4)


def test_a_planted_odd_group_is_isolated_also_outside_the_sample(tmp_path: Path) -> None:
    """A store four times the sample: the planted group's rows, most of them outside the sample, are flagged `isolated`."""
    uri, odd = planted_store(str(tmp_path / "store"))
    out = tmp_path / "c.csv"
    events: list[str] = []
    result = assign_store(uri, out=out, n_clusters=10, epochs=2, train_sample=500, names=False, device="cpu",
                          progress=lambda e: events.append(str(e)))  # fmt: skip
    rows = {r["path"]: r for r in _rows(out)}
    assert len(rows) == 2008 and all("isolated" in rows[p]["outlier_reason"] for p in odd), [rows[p] for p in odd]
    ordinary = sum("isolated" in r["outlier_reason"] for p, r in rows.items() if p not in odd)
    assert ordinary < 0.05 * 2000
    line = next(e for e in events if "outliers of 2008" in e)
    assert f"{result.outliers} outliers of 2008" in line and f"{ordinary + len(odd)} isolated from the rest" in line, line
    sidecar = json.loads(out.with_name("c.csv.json").read_text())["result"]
    assert sidecar["isolation"]["k"] == 10 and sidecar["outliers"]["isolated"] == ordinary + len(odd)


@pytest.mark.parametrize(
    ("source", "because"),
    [("s3://photos/sample_data", "source s3://photos/sample_data is not a local folder"), ("/gone", "source folder /gone is not there")],
)
def test_names_come_from_the_features_when_the_source_cannot_be_reopened(
    store: tuple[str, Path], tmp_path: Path, source: str, because: str
) -> None:
    """A store whose images are on object storage, or gone: sample_data's drawings are named from their plain view, and
    the sidecar and the progress line say why."""
    import shutil

    from imgcluster.featurestore import META_NAME

    uri, _ = store
    copy = tmp_path / "features"
    shutil.copytree(uri, copy)
    meta = json.loads((copy / META_NAME).read_text())
    (copy / META_NAME).write_text(json.dumps({**meta, "source": source}))
    events: list[str] = []
    result = assign_store(str(copy), out=tmp_path / "c.csv", n_clusters=5, epochs=2, device="cpu", progress=lambda e: events.append(str(e)))
    rows = sorted(_rows(tmp_path / "c.csv"), key=lambda r: r["path"])
    features = np.concatenate([f for _, f in sorted(iter_batches(str(copy), batch_rows=1), key=lambda b: b[0][0])]).astype(np.float32)
    plain = cluster_names(features, np.array([int(r["cluster"]) for r in rows]))
    assert [r["cluster_name"] for r in rows] == [plain[int(r["cluster"])] for r in rows]
    why = json.loads(result.written["sidecar"].read_text())["result"]["names_from"]
    assert why == f"the features (its {because}, so images drawn light on black are named from their plain view)"
    assert any(e.startswith("the clusters are named from the features: its source") for e in events), events
    assert not any("drawn light on black: the clusters are named" in e for e in events)


def test_a_store_says_which_clusters_it_left_unnamed_and_keeps_the_guesses(store: tuple[str, Path], tmp_path: Path) -> None:
    """As a folder's ``assign`` does: one line names each cluster whose name was withheld and the classifier's guess
    for it (sample_data's sandals and trousers look little like ``oboe`` or ``can opener``), the CSV leaves their cells
    empty and the sidecar keeps the guesses."""
    from imgcluster.naming import LIKENESS

    uri, _ = store
    events: list[imgcluster.Event] = []
    result = assign_store(uri, out=tmp_path / "c.csv", n_clusters=5, epochs=2, seed=0, device="cpu", progress=events.append)
    unnamed = [e for e in events if "left unnamed" in str(e)]
    assert len(unnamed) == 1 and unnamed[0].stage == "assign" and unnamed[0].kind == "info"
    withheld = json.loads(result.written["sidecar"].read_text())["result"]["withheld_names"]
    empty = {r["cluster"] for r in _rows(tmp_path / "c.csv") if not r["cluster_name"]}
    assert withheld and set(withheld) == empty and all(withheld.values())
    guesses = ", ".join(f"{k} ({guess})" for k, guess in sorted(withheld.items(), key=lambda item: int(item[0])))
    assert str(unnamed[0]).startswith(f"{len(withheld)} cluster") and str(unnamed[0]).endswith(f"(likeness under {LIKENESS}): {guesses}")


def test_a_stop_in_the_isolation_search_says_where_the_head_is(
    store: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgcluster.scale import knn
    from imgcluster.signals import Interrupted

    uri, _ = store

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(knn, "scale_knn", stopped)
    with pytest.raises(Interrupted) as stop:
        assign_store(uri, out=tmp_path / "c.csv", n_clusters=5, epochs=1, names=False, device="cpu")
    said = re.fullmatch(
        r"interrupted while searching the sample's neighbours for the isolation test: nothing was written; "
        r"the head is saved in (.+): give it as the head to rerun without training",
        str(stop.value),
    )
    assert said and Path(said[1]).is_file(), str(stop.value)
    assert list(tmp_path.iterdir()) == []


def test_the_store_isolation_test_calls_no_resave_among_copies_isolated() -> None:
    """Copies of one picture with a re-save and one other picture, the sample being every row: the store's
    isolation test flags what a folder's does (find_outliers), not the re-save, whose LOF alone is huge."""
    from test_outliers import _copies_with_a_resave

    from imgcluster.neighbours import l2_normalise
    from imgcluster.outliers import find_outliers
    from imgcluster.scale.labels import fit_isolation

    x = _copies_with_a_resave(np.random.default_rng(8))
    paths = [f"{i:03d}.png" for i in range(len(x))]
    isolation = fit_isolation(x, paths, 0, knn_threshold=10**6, nprobe=16)
    assert isolation is not None
    folder = find_outliers(x, np.zeros(len(x), int), np.ones(len(x)))
    lof, _ = isolation.scores(paths, l2_normalise(x))
    assert lof[24] > isolation.threshold  # the LOF alone would call the re-save isolated
    assert isolation.isolated(paths, l2_normalise(x)).tolist() == folder.isolated.tolist()
    assert np.flatnonzero(folder.isolated).tolist() == [26]


def test_train_from_a_store_refuses_a_head_name_assign_cannot_read(tmp_path: Path) -> None:
    """Before reading the store or training: --out head.pt was refused only when the trained head was saved."""
    from imgcluster.errors import ParameterError

    with pytest.raises(ParameterError, match=r"does not end in \.safetensors") as info:
        train_from_store(str(tmp_path / "no-store"), out=tmp_path / "head.pt", n_clusters=3)
    assert info.value.parameters == ("out",)


def test_train_features_out_without_safetensors_is_refused_before_training(tmp_path: Path) -> None:
    """`train --features STORE --out head`: one line and exit 2 before the sample is read, not after the training."""
    from storefixtures import synthetic_store

    uri = synthetic_store(str(tmp_path / "store"), n=300, dim=16)
    done = CliRunner().invoke(app, ["train", "--features", uri, "--out", str(tmp_path / "head"), "-k", "3", "--epochs", "1"])
    assert done.exit_code == 2, done.stderr
    assert done.stderr == f"error: --out {tmp_path / 'head'} does not end in .safetensors, the only name a head is read back from\n"
    assert done.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_stop_while_naming_the_clusters_says_what_is_kept(
    store: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The naming pass had no stop line: the CLI's generic one spoke of a cache of finished batches."""
    from imgcluster.scale import labels

    uri, _ = store

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(labels, "sample_names", stopped)
    out = tmp_path / "c.csv"
    done = CliRunner().invoke(app, ["assign", "--features", uri, "--out", str(out), "-k", "5", "--epochs", "1", "--device", "cpu"])
    assert done.exit_code == 130, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    said = re.fullmatch(
        r"error: interrupted while naming the clusters: nothing was written; "
        r"the head is saved in (.+): give it as the head to rerun without training",
        last,
    )
    assert said and Path(said[1]).is_file(), done.stderr
    assert list(tmp_path.iterdir()) == []  # no CSV, no parquet, no temporary file


def test_a_folder_where_the_parquet_copy_goes_is_refused_before_training(tmp_path: Path) -> None:
    """`assign --features STORE --out x.csv` with a folder x.parquet trained, then said "cannot write x.parquet"."""
    from storefixtures import synthetic_store

    uri = synthetic_store(str(tmp_path / "store"), n=300, dim=16)
    (tmp_path / "x.parquet").mkdir()
    done = CliRunner().invoke(app, ["assign", "--features", uri, "--out", str(tmp_path / "x.csv"), "-k", "3", "--epochs", "1"])
    assert done.exit_code == 2, done.stderr
    assert done.stderr == f"error: --out {tmp_path / 'x.csv'}: {tmp_path / 'x.parquet'}, which goes beside it, is a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "x.parquet"] and not (tmp_path / "store" / "_heads").exists()


def test_a_store_with_infinite_features_is_refused_naming_a_row(tmp_path: Path) -> None:
    """Features beyond float16's 65504 were stored as infinity; training on them said "X: Input X contains infinity"
    (a parameter no store user gave) and assigning with a head labelled them silently."""
    from imgcluster.cache import cache_key
    from imgcluster.errors import ImgclusterError
    from imgcluster.featurestore import FeatureStoreMeta, open_store

    identity = {"model": "synthetic", "weights": "none", "dim": 8}
    meta = FeatureStoreMeta(model="synthetic", key=cache_key(identity, "float16"), identity=identity, dim=8, source="/nowhere")
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    x[7] = 1e30
    uri = str(tmp_path / "store")
    open_store(uri, meta)
    write_unchecked(uri, [f"img/{i:03d}.jpg" for i in range(40)], x)  # as a store written before the writer refused them
    message = r"^the feature store .+ holds 1 row with NaN or infinite features in the sample \(e\.g\. img/007\.jpg\); embed its source"
    with pytest.raises(ImgclusterError, match=message):
        train_from_store(uri, out=tmp_path / "h.safetensors", n_clusters=3, epochs=1, device="cpu")
    done = CliRunner().invoke(app, ["assign", "--features", uri, "--out", str(tmp_path / "c.csv"), "-k", "3", "--epochs", "1"])
    assert done.exit_code == 1 and done.stderr.startswith("error: the feature store"), done.stderr


def test_an_infinite_row_outside_the_sample_is_refused_naming_it(tmp_path: Path) -> None:
    """Only the sample was checked: a row outside it went through the pass and came out in cluster 0
    (NaN confidences), with no word, in a CSV that looked whole."""
    from imgcluster.errors import ImgclusterError

    uri, far, head = infinite_outside_the_sample(tmp_path)
    with pytest.raises(ImgclusterError) as info:
        assign_store(uri, out=tmp_path / "c.csv", head=head, train_sample=40)
    assert str(info.value) == (
        f"the feature store {uri} holds 1 row with NaN or infinite features (e.g. {far}); "
        "embed its source into a new location (a rerun into this one keeps the rows it has)"
    )
    assert not (tmp_path / "c.csv").exists()


def test_a_progress_that_cannot_be_called_is_refused_before_the_store_is_read(tmp_path: Path) -> None:
    for call in (train_from_store, assign_store):
        with pytest.raises(imgcluster.ParameterError, match=r"^progress takes a function") as info:
            call(str(tmp_path / "no-store"), out=tmp_path / "x.csv", progress=3)  # type: ignore[operator]
        assert info.value.parameters == ("progress",)


@pytest.mark.slow
def test_an_int8_store_run_names_as_the_int8_folder_run_without_a_torch_lite0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`assign --features URI --runtime onnx-int8` took the option and ignored it: the naming pass over a
    source drawn light on black built and ran a torch Lite0, where a folder's int8 run classifies the
    views in the int8 file its embedding ran (imgcluster/negatives.py)."""
    from imgcluster import negatives

    single = tmp_path / "single.csv"
    done = imgcluster.cluster_folder(
        SAMPLE, out=single, n_clusters=5, seed=0, model=MODEL, workers=0, runtime="onnx-int8", cache_dir=tmp_path / "cache", device="cpu"
    )  # fmt: skip
    uri = store_from_cache(done.embeddings, str(tmp_path / "store"))

    def no_torch_lite0() -> None:
        raise AssertionError("the torch Lite0 was built")

    shown: list[str] = []
    real_features = negatives._lite0_features

    def seen(files: list[Path], views: tuple[str, ...], onnx: negatives.OnnxLite0 | None = None) -> np.ndarray:
        shown.append(onnx.runtime if onnx else "torch")
        return real_features(files, views, onnx=onnx)

    monkeypatch.setattr(negatives, "_lite0", no_torch_lite0)
    monkeypatch.setattr(negatives, "_lite0_features", seen)
    scaled = tmp_path / "scaled.csv"
    assign_store(uri, out=scaled, n_clusters=5, seed=0, device="cpu", runtime="onnx-int8")
    assert shown == [done.embeddings.runtime] and shown[0].startswith("onnx-int8/")
    named = {r["path"]: (r["cluster"], r["cluster_name"]) for r in _rows(scaled)}
    assert named == {r["path"]: (r["cluster"], r["cluster_name"]) for r in _rows(single)}  # the folder's int8 names
    assert {name for _, name in named.values()} != {""}
    with pytest.raises(imgcluster.ParameterError, match=r"^runtime must be auto, torch, onnx or onnx-int8, not 'int8'"):
        assign_store(uri, out=scaled, n_clusters=5, runtime="int8")


@pytest.mark.parametrize(
    ("call", "parameter", "value"),
    [
        (lambda v, t: assign_store(str(t / "none"), out=t / "x.csv", names=v), "names", "no"),
        (lambda v, t: assign_store(str(t / "none"), out=t / "x.csv", explain=v), "explain", "false"),
        (lambda v, t: assign_store(str(t / "none"), out=t / "x.csv", raw_csv=v), "raw_csv", 1),
        (lambda v, t: assign_store(str(t / "none"), out=t / "x.csv", head=t / "h.safetensors", self_label=v), "self_label", "no"),
        (lambda v, t: train_from_store(str(t / "none"), uco=v), "uco", "yes"),
        (lambda v, t: imgcluster.scale.embed_to_store(str(t), str(t / "f"), retry_skipped=v), "retry_skipped", "no"),
        (lambda v, t: imgcluster.scale.embed_to_store(str(t), str(t / "f"), follow_symlinks=v), "follow_symlinks", 0),
    ],
)
def test_the_store_functions_take_true_or_false_for_on_off_parameters(call: object, parameter: str, value: object, tmp_path: Path) -> None:
    """``names="no"`` is true to Python: the folder functions refused it, the store's took it (names on, raw cells)."""
    from imgcluster.errors import ParameterError

    with pytest.raises(ParameterError) as info:
        call(value, tmp_path)  # type: ignore[operator]
    assert str(info.value) == f"{parameter} must be True or False, got {value!r}" and info.value.parameters == (parameter,)


def test_rows_of_files_deleted_since_the_embed_are_counted_and_said(tmp_path: Path) -> None:
    """The store keeps the rows of files deleted from its source (a rerun of embed adds, never removes): assign labelled
    them without a word, and the CSV named files that are gone. Counted when the source is a local folder, and said."""
    from imagefolders import CLASSES, copy_sample
    from storefixtures import synthetic_store

    photos = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4)
    embeddings = imgcluster.embed(photos, MODEL, cache_dir=tmp_path / "cache", device="cpu", workers=0)
    uri = store_from_cache(embeddings, str(tmp_path / "features"))
    gone = sorted(embeddings.paths)[:2]
    for rel in gone:
        (photos / rel).unlink()
    from imgcluster.featurestore import open_store, read_meta

    object_row = "s3://bucket/x.png"  # a manifest may name objects beside the source's files: not counted as gone
    open_store(uri, read_meta(uri), create=False).write([object_row], [1], [None], ["e"], embeddings.features[:1])
    result = assign_store(uri, out=tmp_path / "a.csv", n_clusters=2, epochs=2, names=False, device="cpu")
    said = (
        f"2 of the 9 rows are of files no longer in {photos} (deleted or moved since they were embedded; e.g. {gone[0]}): "
        "they are labelled as the store holds them"
    )
    assert result.missing_files == 2 and said in result.warnings and result.rows == 9
    done = runner.invoke(app, ["assign", "--features", uri, "--head", str(result.head), "--out", str(tmp_path / "b.csv"), "--quiet"])
    assert done.exit_code == 0 and done.stderr == f"warning: {said}\n", done.stderr
    synthetic = assign_store(synthetic_store(str(tmp_path / "synthetic"), n=200), out=tmp_path / "s.csv", n_clusters=2, epochs=1)
    assert synthetic.missing_files is None and not [w for w in synthetic.warnings if "no longer in" in w]  # its source: not a folder here


@pytest.mark.parametrize("command", [["assign", "--out", "{tmp}/x.csv"], ["train", "-k", "3"]])
def test_a_missing_store_is_said_before_torch_is_imported(tmp_path: Path, command: list[str]) -> None:
    """``assign --features nothing`` said "no imgcluster features" after 5.8 s, importing torch for the head first."""
    import subprocess
    import sys

    probe = (
        "import json, sys\nfrom imgcluster.cli import app\ntry:\n    app(sys.argv[1:], prog_name='imgcluster')\n"
        "except SystemExit as exc:\n    print(json.dumps([exc.code, 'torch' in sys.modules]))"
    )
    args = [command[0], "--features", str(tmp_path / "nothing"), *(a.format(tmp=tmp_path) for a in command[1:])]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.splitlines()[-1]) == [1, False], done.stderr
    assert done.stderr == f"error: no imgcluster features at {tmp_path / 'nothing'} (_imgcluster.json not found)\n"
