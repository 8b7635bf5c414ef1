"""embed_to_store: what a rerun embeds (no Ray needed), and jobs on one local Ray started once for the module (the
``local_ray`` fixture skips them without the extra): same answer, resume, bad files, faults, the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, copy_sample, sample_image
from PIL import Image

from imgcluster import featurestore as fst
from imgcluster.progress import Event
from imgcluster.scale import embed_job, resume
from imgcluster.scale.embed_actor import CRASH_VARIABLE

pa = pytest.importorskip("pyarrow", reason="the Ray engine needs the 'ray' extra (with pyarrow)")
pq = pytest.importorskip("pyarrow.parquet")
MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_sample(tmp_path_factory.mktemp("ray") / "photos", CLASSES[:2], per_class=3)


def physical_rows(uri: Path) -> list[str]:
    return [p for f in sorted(uri.glob("part-*/*.parquet")) for p in pq.read_table(f).column("path").to_pylist()]


def test_a_rerun_plans_only_new_or_changed_files_and_leaves_recorded_bad_ones(tmp_path: Path) -> None:
    uri = str(tmp_path / "features")
    store = fst.open_store(uri, fst.FeatureStoreMeta(model="m", key="k", identity={}, dim=2))
    store.write(
        ["same.png", "grown.png", "touched.png", "s3://b/obj.jpg"],
        [10, 10, 10, 7],
        [1, 1, 1, None],
        [None, None, None, "e1"],
        np.ones((4, 2)),
    )
    store.write_skipped(["bad.png", "fixed.png"], [3, 3], [1, 1], [None, None], ["not an image", "not an image"])
    listing = pa.table(
        {
            "path": ["same.png", "grown.png", "touched.png", "s3://b/obj.jpg", "bad.png", "fixed.png", "new.png"],
            "size": [10, 11, 10, 7, 3, 4, 5],
            "mtime_ns": [1, 1, 2, 99, 1, 1, 1],  # an object's listed mtime differs, its etag decides
            "etag": [None, None, None, "e1", None, None, None],
        }
    )
    skipped = fst.skipped_rows(uri)
    planned = resume.plan_table(listing, uri, skipped)
    todo = resume.of_kind(planned, (resume.EMBED,))
    assert sorted(todo.column("path").to_pylist()) == ["fixed.png", "grown.png", "new.png", "touched.png"]
    assert resume.of_kind(planned, (resume.SKIPPED,)).select(["path", "note"]).to_pylist() == [{"path": "bad.png", "note": "not an image"}]
    assert planned.num_rows == 5  # the 2 reused rows are not in the plan
    planned = resume.plan_table(listing, uri, {})  # retry_skipped: nothing recorded is passed
    assert "bad.png" in resume.of_kind(planned, (resume.EMBED,)).column("path").to_pylist()


def test_the_plan_reads_one_bucket_of_the_store_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bucket's listing is compared with that bucket's identities only; done_rows (the whole store) is never read."""
    uri = str(tmp_path / "features")
    store = fst.open_store(uri, fst.FeatureStoreMeta(model="m", key="k", identity={}, dim=2))
    paths = [f"img/{i:03d}.png" for i in range(40)]
    store.write(paths, [10] * 40, [1] * 40, [None] * 40, np.ones((40, 2)))
    monkeypatch.setattr(fst, "done_rows", None)
    read: list[int] = []
    real = fst.bucket_stamps
    monkeypatch.setattr(fst, "bucket_stamps", lambda u, b, p=None: read.append(b) or real(u, b, p))
    listing = pa.table({"path": [*paths, "img/new.png"], "size": [10] * 41, "mtime_ns": [1] * 40 + [5], "etag": [None] * 41})
    planned = resume.plan_table(listing, uri, {})
    assert planned.column("path").to_pylist() == ["img/new.png"]
    assert sorted(read) == sorted({fst.bucket_of(p) for p in listing.column("path").to_pylist()}) and len(read) == len(set(read))


def test_a_small_folder_with_a_link_to_one_of_its_folders_is_planned_without_ray(tmp_path: Path) -> None:
    """The link adds nothing the folder's own listing lacks, so the source stays small: planned in this process."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    (folder / "alias").symlink_to(folder / CLASSES[0], target_is_directory=True)
    uri = str(tmp_path / "features")
    fst.open_store(uri, fst.FeatureStoreMeta(model="m", key="k", identity={}, dim=2))
    plan = embed_job._plan_here(embed_job.open_source(str(folder)), embed_job.RayEmbedConfig(str(folder), uri), {})
    assert plan is not None and plan.listed == plan.n_todo == 4
    assert sorted(plan.todo.column("path").to_pylist()) == sorted(f"{c}/{p.name}" for c in CLASSES[:2] for p in (folder / c).iterdir())


def test_a_source_without_images_is_said_before_the_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """"SOURCE holds no images" came after "loading the model" (seconds of torch and timm); on one machine it comes first."""
    from imgcluster.errors import ParameterError

    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.txt").write_text("no image here")
    monkeypatch.setattr(embed_job, "_describe_model", lambda *a, **kw: pytest.fail("the model was built"))
    events: list[Event] = []
    with pytest.raises(ParameterError) as info:
        embed_job.embed_to_store(str(empty), str(tmp_path / "features"), model=MODEL, progress=events.append)
    assert str(info.value) == f"source {empty} holds no images" and info.value.parameters == ("source",)
    assert not [e for e in events if "loading the model" in e.message]
    assert not (tmp_path / "features").exists()  # nothing written either
    # From the command line, without importing torch (3 s of the 4 it took: the decode tasks' module imported it)
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys\nfrom imgcluster.cli import app\ntry:\n    app(sys.argv[1:], prog_name='imgcluster')\n"
        "except SystemExit as exc:\n    print(json.dumps([exc.code, 'torch' in sys.modules]))"
    )
    args = ["embed", str(empty), "--engine", "ray", "--features-out", str(tmp_path / "features")]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.splitlines()[-1]) == [2, False], done.stderr
    assert done.stderr == f"error: SOURCE {empty} holds no images\n"


def test_a_store_records_a_local_source_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``embed photos --engine ray`` recorded "photos": assign, run from elsewhere, named and counted files gone against
    whatever folder of that name was there (or none)."""
    from imgcluster.progress import Reporter

    monkeypatch.chdir(tmp_path)
    config = embed_job.RayEmbedConfig("photos", "features")
    _, meta = embed_job._describe_model(MODEL, None, 0, config, Reporter(None, "embed"))
    assert meta.source == str(tmp_path / "photos") and meta.config["source"] == "photos"  # the job's options as given
    _, remote = embed_job._describe_model(MODEL, None, 0, embed_job.RayEmbedConfig("s3://bucket/photos", "f"), Reporter(None, "embed"))
    assert remote.source == "s3://bucket/photos"


@pytest.mark.slow
def test_same_features_as_one_machine_and_a_complete_store_needs_no_ray(
    local_ray: object, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcluster

    out = tmp_path / "features"
    summary = embed_job.embed_to_store(str(photos), str(out), model=MODEL)
    assert (summary.embedded, summary.reused, summary.skipped) == (6, 0, [])
    local = imgcluster.embed(photos, MODEL, cache_dir=tmp_path / "cache", device="cpu", workers=0)
    paths, features = fst.read_features(str(out))
    order = [local.paths.index(p) for p in paths]
    assert sorted(paths) == sorted(local.paths)
    np.testing.assert_allclose(features, local.features[order].astype(np.float32), rtol=2e-3, atol=2e-3)
    meta = fst.read_meta(str(out))
    assert meta.model == MODEL and meta.compute == "float32" and meta.config["source"] == str(photos)

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started with nothing to do")

    monkeypatch.setattr(embed_job, "_run", no_ray)
    again = embed_job.embed_to_store(str(photos), str(out), model=MODEL)
    assert (again.embedded, again.reused) == (0, 6)


@pytest.mark.slow
def test_a_killed_actor_loses_and_duplicates_nothing(
    local_ray: object, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_VARIABLE, "2")  # the actor's process dies at its second batch; Ray restarts it
    out = tmp_path / "features"
    summary = embed_job.embed_to_store(str(photos), str(out), model=MODEL, batch_size=2)
    assert (summary.embedded, summary.skipped) == (6, [])
    rows = physical_rows(out)
    assert len(rows) == len(set(rows)) == 6


@pytest.mark.slow
def test_a_failing_batch_is_retried_then_its_files_skipped(
    local_ray: object, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CRASH_VARIABLE, "1:raise")
    out = tmp_path / "features"
    summary = embed_job.embed_to_store(str(photos), str(out), model=MODEL, batch_size=2)
    assert summary.embedded == 4 and len(summary.skipped) == 2
    assert all("embedding failed: RuntimeError: injected error" in reason for _, reason in summary.skipped)
    assert set(fst.skipped_rows(str(out))) == {p for p, _ in summary.skipped}
    assert fst.count_rows(str(out)) == 4


@pytest.mark.slow
def test_a_stopped_job_rerun_embeds_only_what_is_missing(local_ray: object, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "features"

    def stop_after_the_first_batch(event: Event) -> None:
        if event.kind == "advance":
            raise KeyboardInterrupt

    with pytest.raises(embed_job.EmbedInterrupted) as info:
        embed_job.embed_to_store(str(photos), str(out), model=MODEL, batch_size=2, progress=stop_after_the_first_batch)
    assert 0 < info.value.summary.embedded < 6 and "are kept, and the next run embeds only what is missing" in str(info.value)
    parts = sorted(out.glob("part-*/*.parquet"))
    torn = pq.read_table(parts[0]).column("path").to_pylist()
    parts[0].write_bytes(parts[0].read_bytes()[:40])  # torn by the stop
    summary = embed_job.embed_to_store(str(photos), str(out), model=MODEL, batch_size=2)
    assert summary.embedded + summary.reused == 6 and len(torn) <= summary.embedded < 6
    assert any(parts[0].name in p for p in summary.problems)
    assert fst.count_rows(str(out), on_problem=lambda _: None) == 6


@pytest.mark.slow
def test_the_command_line_runs_the_job_bad_files_skipped_with_reasons_and_not_retried(local_ray: object, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imgcluster.cli import app

    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    exif = Image.Exif()
    exif[0x0112] = 6
    sample_image(CLASSES[1]).resize((64, 48)).save(folder / "rotated.jpg", exif=exif)
    out = tmp_path / "features"
    result = CliRunner().invoke(app, ["embed", str(folder), "--engine", "ray", "--features-out", str(out), "--model", MODEL])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "5 images: 0 in the store, 0 recorded as unreadable, 5 to embed" in lines
    assert any(line.startswith("embedded 3, reused 0, skipped 2 in ") for line in lines)
    assert lines[-1] == f"warning: skipped 2 unreadable files; reasons in {out}/_skipped/"
    assert result.stdout == ""
    reasons = {path: reason for path, (*_, reason) in fst.skipped_rows(str(out)).items()}
    assert set(reasons) == {"empty.png", "notes.jpg"} and reasons["notes.jpg"] == "not an image (unrecognised format)"
    again = embed_job.embed_to_store(str(folder), str(out), model=MODEL)  # no Ray: nothing new, bad files not retried
    assert (again.embedded, again.reused, dict(again.skipped)) == (0, 3, reasons)


@pytest.mark.slow
def test_the_per_file_time_limit_holds_in_the_decode_tasks(local_ray: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLUSTER_DECODE_TIMEOUT", "0.000001")  # read on the driver, handed to the tasks
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    summary = embed_job.embed_to_store(str(folder), str(tmp_path / "features"), model=MODEL)
    assert summary.embedded == 0 and len(summary.skipped) == 2
    assert all("the per-file limit, $IMGCLUSTER_DECODE_TIMEOUT" in reason for _, reason in summary.skipped)


@pytest.mark.slow
def test_the_job_passes_no_deprecated_remote_args_to_ray_data(
    local_ray: object, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray 2.60 read map_batches(max_retries=..., retry_exceptions=..., max_restarts=...) as `ray_remote_args`, with a
    RayDeprecationWarning (removal in Ray 2.64). Planned on Ray from a manifest, so every map_batches of the job is built."""
    import warnings

    monkeypatch.setattr(embed_job, "LOCAL_PLAN_ROWS", 0)
    files = sorted(p for p in photos.rglob("*.png"))
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(
        pa.table(
            {
                "path": [p.relative_to(photos).as_posix() for p in files],
                "size": [p.stat().st_size for p in files],
                "mtime_ns": [p.stat().st_mtime_ns for p in files],
            }
        ),
        manifest,
    )
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = embed_job.embed_to_store(str(photos), str(tmp_path / "features"), model=MODEL, manifest=str(manifest), batch_size=2)
        assert warnings.filters[0][0] == "always"  # the caller's filters stay as they were (a global "ignore" was added)
    assert (summary.embedded, summary.skipped) == (6, [])
    deprecated = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning) and "ray_remote_args" in str(w.message)]
    assert deprecated == [] and warnings.filters == filters


class _Dataset:
    """Ray 2.60's map_batches as far as the helper sees it: loose keywords warn, and are recorded."""

    def __init__(self) -> None:
        self.options: dict[str, object] = {}

    def map_batches(self, fn: object, *, batch_size: int | None = None, **ray_remote_args: object) -> _Dataset:
        import warnings

        if ray_remote_args:
            warnings.warn("`ray_remote_args` is deprecated and will be removed in Ray 2.64.", DeprecationWarning, stacklevel=2)
        self.options = {"batch_size": batch_size, **ray_remote_args}
        return self


class _DatasetWithoutRemoteArgs(_Dataset):
    def map_batches(self, fn: object, *, batch_size: int | None = None) -> _Dataset:  # type: ignore[override]
        self.options = {"batch_size": batch_size}
        return self


def test_retries_reach_ray_data_without_its_warning_or_a_global_filter() -> None:
    import warnings

    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = embed_job.map_batches(_Dataset(), len, {"max_retries": 3, "retry_exceptions": True}, batch_size=2)
        later = _Dataset().map_batches(len, max_restarts=1)  # the caller's own call still warns
    assert ds.options == {"batch_size": 2, "max_retries": 3, "retry_exceptions": True} and later.options["max_restarts"] == 1
    assert [str(w.message)[:34] for w in caught] == ["`ray_remote_args` is deprecated an"] and warnings.filters == filters
    newer = embed_job.map_batches(_DatasetWithoutRemoteArgs(), len, {"max_retries": 3}, batch_size=2)  # a Ray after 2.64
    assert newer.options == {"batch_size": 2}


def test_more_actors_than_a_local_instance_can_feed_are_refused(local_ray: object, photos: Path, tmp_path: Path) -> None:
    """`--actors 2` on the 2-CPU local instance: both CPUs went to the actors, no decode task could run,
    and the job sat at 0 rows until Ray Data's 30-minute no-progress limit (killed after 170 s)."""
    from imgcluster.errors import ParameterError

    with pytest.raises(ParameterError) as info:
        embed_job.embed_to_store(str(photos), str(tmp_path / "features"), model=MODEL, actors=2)
    assert str(info.value) == (
        "actors 2: the embedding actors take 2 of the Ray cluster's 2 CPUs, and the decode tasks that feed them need one more; "
        "give at most 1"
    )
    assert not list((tmp_path / "features").glob("part-*"))
