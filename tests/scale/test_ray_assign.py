"""The Ray engine of assign and of the partitioned kNN against their in-process references, on one local Ray."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults import default_stops
from imagefolders import SAMPLE
from storefixtures import MODEL, infinite_outside_the_sample, numbered_store, planted_store, store_from_cache, synthetic_store
from typer.testing import CliRunner

import imgcluster
from imgcluster.cli import app
from imgcluster.featurestore import iter_batches
from imgcluster.scale import knn
from imgcluster.scale.assign_job import assign_store
from imgcluster.scale.sample import sample_rows, store_sample
from imgcluster.scale.tasks import RayTasks
from imgcluster.scale.training import train_from_store

pq = pytest.importorskip("pyarrow.parquet", reason="the feature store needs pyarrow (the 'ray' extra)")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]  # one local Ray for the module (conftest.py)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    embeddings = imgcluster.embed(SAMPLE, MODEL, cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")
    return store_from_cache(embeddings, str(tmp_path_factory.mktemp("store") / "features"))


def test_the_ray_pass_writes_the_local_pass_csv(store: str, tmp_path: Path) -> None:
    uri = store
    local, distributed = tmp_path / "local.csv", tmp_path / "ray.csv"
    first = assign_store(uri, out=local, n_clusters=5, seed=0, epochs=3, device="cpu")
    done = CliRunner().invoke(app, ["assign", "--features", uri, "--head", str(first.head), "--engine", "ray", "--out", str(distributed)])
    assert done.exit_code == 0, done.stderr
    assert "wrote 125 assignments" in done.stderr
    assert distributed.read_bytes() == local.read_bytes()  # byte for byte, in the same order
    # The same table (its row groups follow the blocks each engine hands over).
    assert pq.read_table(distributed.with_suffix(".parquet")).equals(pq.read_table(local.with_suffix(".parquet")))
    assert json.loads(distributed.with_name("ray.csv.json").read_text())["result"]["engine"] == "ray"


def test_the_ray_pass_writes_the_local_pass_csv_on_more_rows_than_threads_round_alike(tmp_path: Path) -> None:
    """2,000 rows of 256-d: with torch on two threads in the driver and one in the actor, some
    confidences differed in the sixth decimal; both engines now label on one thread. The sample is
    a quarter of the store, so the actors also search the rows outside it among the sample (the
    isolation test)."""
    uri = synthetic_store(str(tmp_path / "synthetic"))
    local, distributed = tmp_path / "local.csv", tmp_path / "ray.csv"
    first = assign_store(uri, out=local, n_clusters=10, seed=0, epochs=2, names=False, device="cpu")
    assign_store(uri, out=distributed, head=first.head, engine="ray", names=False, device="cpu")
    assert distributed.read_bytes() == local.read_bytes()


def test_the_ray_pass_flags_rows_outside_the_sample_as_the_local_pass_does(tmp_path: Path) -> None:
    """A sample a quarter of the store: the actors search the rows outside it among the sample (the isolation test)."""
    uri, odd = planted_store(str(tmp_path / "planted"))
    local, distributed = tmp_path / "local.csv", tmp_path / "ray.csv"
    first = assign_store(uri, out=local, n_clusters=10, seed=0, epochs=2, names=False, train_sample=500, device="cpu")
    assign_store(uri, out=distributed, head=first.head, engine="ray", names=False, train_sample=500, device="cpu")
    assert distributed.read_bytes() == local.read_bytes()
    with open(local, newline="", encoding="utf-8") as handle:
        reasons = {r["path"]: r["outlier_reason"] for r in csv.DictReader(handle)}
    assert all("isolated" in reasons[p] for p in odd)


def test_the_ray_pass_refuses_an_infinite_row_outside_the_sample_in_one_line(tmp_path: Path) -> None:
    """The actors labelled it as any row (cluster 0); refused, a Python error in an actor was retried
    for ever (Ray Data's default), then surfaced wrapped in Ray's traceback."""
    from imgcluster.errors import ImgclusterError

    uri, far, head = infinite_outside_the_sample(tmp_path)
    started = time.monotonic()
    with pytest.raises(ImgclusterError) as info:
        assign_store(uri, out=tmp_path / "c.csv", head=head, train_sample=40, engine="ray")
    assert str(info.value).startswith(f"the feature store {uri} holds 1 row with NaN or infinite features (e.g. {far}); embed its")
    assert time.monotonic() - started < 120 and not (tmp_path / "c.csv").exists()


def test_partition_tasks_on_ray_give_the_in_process_answer() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    here = knn.partitioned_knn(x, 10, n_partitions=12, nprobe=3)
    there = knn.partitioned_knn(x, 10, n_partitions=12, nprobe=3, tasks=RayTasks())
    assert np.array_equal(here[0], there[0]) and np.array_equal(here[1], there[1])


def test_above_the_threshold_the_head_trains_on_neighbours_from_partition_tasks(store: str, tmp_path: Path) -> None:
    events: list[str] = []
    head, path = train_from_store(
        store, out=tmp_path / "h.safetensors", n_clusters=5, epochs=2, knn_threshold=100, progress=lambda e: events.append(str(e))
    )
    assert any(e.startswith("partitioning 125 images into 1 partitions") for e in events), events
    assert head.labels_.shape == (125,) and path.is_file()


def test_the_sample_drawn_by_ray_tasks_is_the_bottom_k_sample(tmp_path: Path) -> None:
    uri = numbered_store(str(tmp_path / "store"), n=1500, copies=2)  # several files per bucket, every path written twice
    expected = sample_rows(iter_batches(uri), 250, seed=2)
    events: list[str] = []
    paths, features, rows = store_sample(uri, 250, seed=2, tasks=RayTasks(), progress=lambda e: events.append(str(e)))
    assert paths == expected[0] and np.array_equal(features, expected[1]) and rows == expected[2] == 1500
    assert any("reading the paths again" in e for e in events)  # the footers count 3,000 rows: a second pass, on Ray too


def test_train_with_ray_tasks_reading_the_sample_trains_the_local_head(tmp_path: Path) -> None:
    uri = numbered_store(str(tmp_path / "store"), n=600, dim=16)
    done = CliRunner().invoke(app, ["train", "--features", uri, "-k", "3", "--epochs", "1", "--train-sample", "200", "--seed", "4",
                                    "--out", str(tmp_path / "local.safetensors")])  # fmt: skip
    assert done.exit_code == 0, done.stderr
    events: list[str] = []
    train_from_store(uri, out=tmp_path / "ray.safetensors", n_clusters=3, epochs=1, train_sample=200, seed=4, engine="ray",
                     progress=lambda e: events.append(str(e)))  # fmt: skip
    assert any(e.startswith("reading the paths of") and "(as Ray tasks)" in e for e in events), events
    from safetensors.numpy import load_file

    local, distributed = (load_file(tmp_path / f"{name}.safetensors") for name in ("local", "ray"))
    assert local.keys() == distributed.keys() and all(np.array_equal(local[k], distributed[k]) for k in local)  # same sample, same head
    descriptions = [json.loads((tmp_path / f"{name}.json").read_text())["features"] for name in ("local", "ray")]
    assert descriptions[0] == descriptions[1]


def test_ctrl_c_on_the_ray_pass_leaves_no_csv_and_ends_by_the_signal(local_ray: Any, tmp_path: Path) -> None:
    uri = synthetic_store(str(tmp_path / "store"))
    _, head = train_from_store(uri, out=tmp_path / "h.safetensors", n_clusters=5, epochs=1, device="cpu")
    out = tmp_path / "c.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # the module's Ray environment (conftest.py) included
    command = [sys.executable, "-m", "imgcluster", "assign", "--features", uri, "--head", str(head), "--engine", "ray",
               "--ray-address", local_ray.get_runtime_context().gcs_address, "--no-names", "--out", str(out)]  # fmt: skip
    earlier = _labellers()  # the other tests' actors stay listed, dead
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_stops)
    try:
        deadline = time.monotonic() + 120
        while not _labellers() - earlier and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the pass has begun once its actors exist: they take seconds to start, no row is labelled yet
        process.send_signal(signal.SIGINT)
        _, said = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGINT, said  # ends by the signal, as imgcluster's other commands do
    assert "interrupted while assigning" in said and "no CSV was written" in said and f"the head is saved in {head}" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json", "h.safetensors", "store"]  # no CSV, parquet copy or temporary file


def _labellers() -> set[str]:
    """The ids of the store pass's actors on the module's Ray, in any state (from the GCS: no dashboard needed)."""
    from ray._private import state

    return {actor_id for actor_id, a in state.actors().items() if "_Labeller" in a.get("ActorClassName", "")}
