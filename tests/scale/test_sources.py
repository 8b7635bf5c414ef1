"""Sources of a Ray job: a folder, an s3:// prefix (a moto server on 127.0.0.1), a manifest."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, SAMPLE, copy_sample

from imgcluster import featurestore as fst
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.scale import sources

pa = pytest.importorskip("pyarrow", reason="the Ray engine's sources need pyarrow (the 'ray' extra)")
pq = pytest.importorskip("pyarrow.parquet")


def test_a_folder_is_listed_as_the_single_machine_listing_finds_it(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("not an image")
    source = sources.open_source(str(folder))
    table = sources.list_source(source)
    assert source.relative and table.schema == sources.manifest_schema()
    assert table.column("path").to_pylist() == sorted(f"{c}/{p.name}" for c in CLASSES[:2] for p in (folder / c).iterdir())
    first = folder / table.column("path")[0].as_py()
    assert table.column("size")[0].as_py() == first.stat().st_size and table.column("mtime_ns")[0].as_py() == first.stat().st_mtime_ns


def nested(folder: Path) -> Path:
    """Images directly at the top, in class folders, one level deeper, and in a hidden folder (never listed)."""
    copy_sample(folder, CLASSES[:3], per_class=2)
    deeper = folder / CLASSES[0] / "deeper"
    deeper.mkdir()
    for i, src in enumerate(sorted((folder / CLASSES[2]).glob("*.png"))):
        (deeper / f"copy{i}.png").write_bytes(src.read_bytes())
    (folder / "top.png").write_bytes(next((folder / CLASSES[0]).glob("*.png")).read_bytes())
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("not an image")
    return folder


def split_rows(source: sources.Source, split: sources.Split, follow_symlinks: bool = False) -> list[tuple]:
    """The rows of a split's units, then of the linked folders they and the levels met, as a job lists them."""
    links = list(split.links)
    blocks = [b for unit in split.units for b in sources.list_unit(source, unit, follow_symlinks, links)]
    blocks += sources.list_links(source, links, follow_symlinks)
    return sorted(zip(*(pa.concat_tables(blocks).column(c).to_pylist() for c in ("path", "size", "mtime_ns", "etag"))))


def table_rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "etag"))))


def test_a_split_listing_yields_exactly_the_whole_listing(tmp_path: Path) -> None:
    source = sources.open_source(str(nested(tmp_path / "photos")))
    split = sources.split_listing(source, target=2)
    top = sources.Unit("", recursive=False)
    assert split.units == [top, *(sources.Unit(c, recursive=True) for c in CLASSES[:3])] and not split.complete
    assert split.files_seen == 1
    whole = sources.list_source(source)
    assert split_rows(source, split) == table_rows(whole) and whole.num_rows == 9
    deep = sources.split_listing(source, target=100)  # the tree ends first: every unit one folder's own files
    assert deep.complete and len(deep.units) == 5 and split_rows(source, deep) == table_rows(whole)
    assert deep.files_seen == 9


def test_a_unit_and_a_flat_folder_are_listed_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "LIST_BLOCK_ROWS", 2)
    source = sources.open_source(str(nested(tmp_path / "photos")))
    blocks = list(sources.list_unit(source, sources.Unit("", recursive=True)))
    assert [b.num_rows for b in blocks] == [2, 2, 2, 2, 1]
    flat = copy_sample(tmp_path / "flat", CLASSES[:1], per_class=5) / CLASSES[0]  # every file in one folder
    source = sources.open_source(str(flat))
    split = sources.split_listing(source, target=8)
    assert split.units == [sources.Unit("", recursive=False)] and split.complete and split.files_seen == 5
    assert [b.num_rows for b in sources.list_unit(source, split.units[0])] == [2, 2, 1]


def test_a_folder_reached_through_a_link_and_directly_is_listed_once(tmp_path: Path) -> None:
    """As the single-machine listing: a link to a folder listed under its real path adds nothing;
    a link to a hidden folder (not listed directly) is listed under the link's name."""
    folder = nested(tmp_path / "photos")
    (folder / "alias").symlink_to(folder / CLASSES[1], target_is_directory=True)
    (folder / CLASSES[0] / "up").symlink_to(folder, target_is_directory=True)  # a loop back to the root
    (folder / "shown").symlink_to(folder / ".hidden", target_is_directory=True)
    source = sources.open_source(str(folder))
    whole = sources.list_source(source)
    assert whole.num_rows == 10 and "shown/x.png" in whole.column("path").to_pylist()
    for target in (2, 100):
        split = sources.split_listing(source, target=target)
        assert split_rows(source, split) == table_rows(whole)
        assert {"alias", "shown"} <= set(split.links) and not {"alias", "shown"} & {u.prefix for u in split.units}


def linked_tree(tmp_path: Path) -> Path:
    """``nested`` with links at every depth: to a sibling folder (also listed directly), a loop
    back to the root, a hidden folder elsewhere in the source, a folder outside it (three times;
    it links back in), and files outside and inside."""
    folder = nested(tmp_path / "photos")
    outside = copy_sample(tmp_path / "outside", CLASSES[3:4], per_class=2)
    (outside / "back").symlink_to(folder / CLASSES[1], target_is_directory=True)  # from outside, back in
    hidden = folder / CLASSES[2] / ".stash"
    hidden.mkdir()
    (hidden / "h.png").write_bytes(next((folder / CLASSES[2]).glob("*.png")).read_bytes())
    deeper = folder / CLASSES[0] / "deeper"
    (deeper / "sibling").symlink_to(folder / CLASSES[1], target_is_directory=True)
    (deeper / "loop").symlink_to(folder, target_is_directory=True)
    (deeper / "stash").symlink_to(hidden, target_is_directory=True)
    (deeper / "out").symlink_to(outside, target_is_directory=True)
    (folder / CLASSES[2] / "out-again").symlink_to(outside, target_is_directory=True)
    (folder / "zz-out").symlink_to(outside, target_is_directory=True)  # met first: the walk lists a folder's links before its sub-folders'
    (folder / CLASSES[1] / "far.png").symlink_to(next((outside / CLASSES[3]).glob("*.png")))
    (folder / CLASSES[1] / "near.png").symlink_to(next((folder / CLASSES[2]).glob("*.png")))
    return folder


@pytest.mark.parametrize("follow_symlinks", [False, True])
def test_links_below_the_top_levels_are_listed_as_the_single_machine_listing_lists_them(tmp_path: Path, follow_symlinks: bool) -> None:
    """Each piece used to judge its links with itself as the root: a link to a sibling folder was
    listed twice (followed) or missed, a link to a hidden folder elsewhere was missed, and two links
    to one folder outside were both listed."""
    from imgcluster.listing import list_images

    folder = linked_tree(tmp_path)
    source = sources.open_source(str(folder))
    expected = sorted((f.rel, f.size, f.mtime_ns, None) for f in list_images(folder, follow_symlinks=follow_symlinks))
    assert table_rows(sources.list_source(source, follow_symlinks)) == expected
    paths = [p for p, *_ in expected]
    assert f"{CLASSES[0]}/deeper/stash/h.png" in paths and not any("/loop/" in p or "/sibling/" in p for p in paths)
    assert any(p.startswith("zz-out/") for p in paths) == follow_symlinks  # the same folder, met later: once
    assert not any(p.startswith((f"{CLASSES[0]}/deeper/out/", f"{CLASSES[2]}/out-again/")) for p in paths)
    for target in (1, 2, 3, 100):  # the deep links met in recursive units, or in the levels listed
        split = sources.split_listing(source, target, follow_symlinks)
        assert split_rows(source, split, follow_symlinks) == expected, target


def test_a_small_folder_with_links_out_or_to_a_hidden_folder_is_planned_without_ray(tmp_path: Path) -> None:
    """Such links used to be units of their own, listed recursively: the first look was never
    complete, and a rerun on a complete store started Ray."""
    from imgcluster.listing import list_images
    from imgcluster.scale import embed_job

    folder = linked_tree(tmp_path)
    out = str(tmp_path / "features")
    fst.open_store(out, fst.FeatureStoreMeta(model="m", key="k", identity={}, dim=2))
    for follow in (False, True):
        plan = embed_job._plan_here(
            sources.open_source(str(folder)), embed_job.RayEmbedConfig(str(folder), out, follow_symlinks=follow), {}
        )
        assert plan is not None and plan.listed == plan.n_todo
        outside: list[str] = []
        assert table_rows(plan.todo) == sorted(
            (f.rel, f.size, f.mtime_ns, None) for f in list_images(folder, follow_symlinks=follow, outside=outside)
        )
        assert plan.left_out == sources.LeftOut(len(outside), outside[0] if outside else None)  # as the single-machine listing counts them


def test_a_folder_of_links_out_says_why_it_holds_no_images(tmp_path: Path) -> None:
    """The Ray path said only "holds no images" of a folder whose images are all behind links that
    lead outside it, where the single-machine path names the links and the option that follows them."""
    from imgcluster.scale import embed_job

    elsewhere = copy_sample(tmp_path / "dataset", CLASSES[:1], per_class=2)
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "b").symlink_to(elsewhere, target_is_directory=True)
    (folder / "a.png").symlink_to(next((elsewhere / CLASSES[0]).glob("*.png")))
    with pytest.raises(ParameterError) as info:
        embed_job._plan_here(sources.open_source(str(folder)), embed_job.RayEmbedConfig(str(folder), str(tmp_path / "f")), {})
    assert str(info.value) == (
        f"source {folder} holds no images; left out 2 symbolic link(s) that lead outside the folder (first: a.png); "
        "follow_symlinks follows them"
    )


def test_a_missing_source_or_bad_manifest_is_a_parameter_error(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="does not exist"):
        sources.open_source(str(tmp_path / "nowhere"))
    pq.write_table(pa.table({"path": ["a.png"], "bytes": [3]}), tmp_path / "m.parquet")
    with pytest.raises(ParameterError, match="needs the columns path, size and mtime_ns or etag"):
        sources.read_manifest(str(tmp_path / "m.parquet"))
    with pytest.raises(ParameterError, match="needs the columns path, size and mtime_ns or etag; it has bytes, path"):
        sources.manifest_rows(str(tmp_path / "m.parquet"))  # from the footer: what a large manifest gets before Ray reads it
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"path": ["a.png"], "size": [3], "etag": ["e"]}), parts / "part-0.parquet")
    pq.write_table(pa.table({"path": ["b.png"], "size": ["3"], "etag": ["e"]}), parts / "part-1.parquet")
    with pytest.raises(ParameterError, match="its parts have different columns or types"):
        sources.manifest_rows(str(parts))
    (parts / sources.INCOMPLETE_MARK).write_text("")
    with pytest.raises(ParameterError, match="is incomplete: the listing that wrote it was stopped"):
        sources.read_manifest(str(parts))
    pq.write_table(pa.table({"path": ["a.png", "b.png"], "size": [3, 4], "etag": ["e1", None]}), tmp_path / "ok.parquet")
    manifest = sources.read_manifest(str(tmp_path / "ok.parquet"))
    assert manifest.schema == sources.manifest_schema() and manifest.column("mtime_ns").null_count == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, reached through the environment as a real bucket would be."""
    server_mod = pytest.importorskip("moto.server", reason="the s3:// tests need moto: pip install 'moto[server]'")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def ray_env(s3_server: str, ray_env: None) -> None:
    """The S3 settings are in the environment before Ray starts, so its workers have them too."""


@pytest.fixture(scope="module")
def bucket(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    import pyarrow.fs as pafs

    host = s3_server.removeprefix("http://")
    pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True).create_dir("photos")
    fs, _ = fst.resolve("s3://photos")  # what imgcluster uses: endpoint and keys from the environment
    folder = copy_sample(tmp_path_factory.mktemp("s3") / "photos", CLASSES[:2], per_class=2)
    for path in sorted(folder.rglob("*.png")):
        pafs.copy_files(str(path), f"photos/in/{path.relative_to(folder).as_posix()}", destination_filesystem=fs)
    with fs.open_output_stream("photos/in/broken.jpg") as out:
        out.write(b"not a jpeg")
    with fs.open_output_stream("photos/in/.cache/x.png") as out:
        out.write(b"hidden")
    return "s3://photos/in"


def test_a_bucket_that_cannot_be_reached_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`embed s3:// --engine ray` (no bucket, offline) ended in "unexpected OSError: When listing buckets: ..."."""

    class Unreachable:
        def get_file_info(self, path: str) -> None:
            raise OSError("When listing buckets: AWS Error NETWORK_CONNECTION during ListBuckets operation")

    why = "When listing buckets: AWS Error NETWORK_CONNECTION during ListBuckets operation"
    monkeypatch.setattr(sources, "resolve", lambda uri: (Unreachable(), "/"))
    with pytest.raises(ImgclusterError) as info:
        sources.open_source("s3://")
    assert type(info.value) is ImgclusterError  # exit 1: the machine cannot reach it, not a mistake in what was typed
    assert str(info.value) == f"cannot open s3://: {why}"
    monkeypatch.setattr(sources, "_filesystem", lambda uri: (Unreachable(), "/"))  # the root's info needs no network; its listing does
    with pytest.raises(ImgclusterError) as info:
        sources.split_listing(sources.Source("gs://", "/", relative=False), 8)  # pyarrow's listing
    assert type(info.value) is ImgclusterError and str(info.value) == f"cannot list gs://: {why}"
    monkeypatch.undo()
    pytest.importorskip("boto3", reason="s3:// is listed with boto3 (the 'ray' extra)")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    uri = f"s3://photos/in?endpoint_override=127.0.0.1:{_free_port()}&scheme=http"  # nothing listens there
    with pytest.raises(ImgclusterError) as info:
        sources.split_listing(sources.Source(uri, "photos/in", relative=False), 8)  # boto3's paged listing
    assert type(info.value) is ImgclusterError and str(info.value).startswith(f"cannot list {uri}: Could not connect to the endpoint URL")


def test_a_prefix_is_listed_with_full_uris(bucket: str) -> None:
    table = sources.list_source(sources.open_source(bucket))
    paths = table.column("path").to_pylist()
    assert len(paths) == 5 and all(p.startswith("s3://photos/in/") for p in paths) and "s3://photos/in/broken.jpg" in paths
    assert table.column("mtime_ns").null_count == 0


@pytest.fixture(scope="module")
def nested_prefix(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``nested`` uploaded under s3://photos/nested/ (the hidden folder too, which no listing keeps)."""
    import pyarrow.fs as pafs

    fs, _ = fst.resolve("s3://photos")
    folder = nested(tmp_path_factory.mktemp("s3nested") / "photos")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        pafs.copy_files(str(path), f"photos/nested/{path.relative_to(folder).as_posix()}", destination_filesystem=fs)
    return "s3://photos/nested", folder


def test_a_split_prefix_yields_exactly_the_whole_listing(nested_prefix: tuple[str, Path]) -> None:
    uri, folder = nested_prefix
    source = sources.open_source(uri)
    split = sources.split_listing(source, target=2)
    assert split.units == [sources.Unit("", recursive=False), *(sources.Unit(c, recursive=True) for c in CLASSES[:3])]
    whole = sources.list_source(source)
    assert split_rows(source, split) == table_rows(whole)
    local = sources.list_source(sources.open_source(str(folder)))
    assert whole.column("path").to_pylist() == [f"{uri}/{p}" for p in local.column("path").to_pylist()]


def pyarrow_rows(uri: str, recursive: bool) -> list[tuple]:
    """pyarrow's own listing of a prefix (what listed s3:// before its pages): files and folders, as sources reports them."""
    import pyarrow.fs as pafs

    fs, root = fst.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    return sorted((i.path, i.size if i.type == pafs.FileType.File else 0, i.mtime_ns) for i in infos if recursive <= i.is_file)


def test_a_prefix_listed_a_page_at_a_time_has_pyarrows_rows(nested_prefix: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Same paths, sizes and mtimes to the nanosecond as pyarrow's listing, so stores written before resume unchanged."""
    from imgcluster.scale import s3_pages

    monkeypatch.setattr(s3_pages, "PAGE_KEYS", 2)  # 9 images and a hidden one: 5 pages
    uri, _ = nested_prefix
    source = sources.open_source(uri)
    client = sources._s3_client(uri)
    whole = sorted((path.removeprefix("s3://"), size, mtime) for path, size, mtime, _ in table_rows(sources.list_source(source)))
    assert whole == [r for r in pyarrow_rows(uri, recursive=True) if "/.hidden/" not in r[0] and r[0].endswith(".png")]
    level = sorted(s3_pages.entries(client, source.root, False, "x"))
    assert [(p.rstrip("/"), *r) for p, *r in level] == pyarrow_rows(uri, recursive=False)
    assert len(level) == 6 and sum(p.endswith("/") for p, *_ in level) == 4  # 3 classes and the hidden folder (left out later)


@pytest.fixture(scope="module")
def flat_prefix(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Five images in one level, s3://photos/flat/, and the folder they came from."""
    fs, _ = fst.resolve("s3://photos")
    flat = copy_sample(tmp_path_factory.mktemp("flat") / "flat", CLASSES[:1], per_class=5) / CLASSES[0]
    for path in sorted(flat.iterdir()):
        with fs.open_output_stream(f"photos/flat/{path.name}") as out:
            out.write(path.read_bytes())
    return "s3://photos/flat", flat


def refuse_whole_levels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make pyarrow's whole listing fail in this process, and count the keys read from S3's pages."""
    from imgcluster.scale import s3_pages

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a level was listed whole")

    monkeypatch.setattr(sources, "_pyarrow_entries", refuse)
    read: list[str] = []
    real = s3_pages.entries

    def counted(*args: object) -> Iterator[s3_pages.Entry]:
        for entry in real(*args):  # type: ignore[arg-type]
            read.append(entry[0])
            yield entry

    monkeypatch.setattr(s3_pages, "entries", counted)
    return read


def test_a_flat_prefix_over_the_bound_is_handed_to_ray_after_a_few_pages(
    flat_prefix: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process first look stops after LOCAL_LEVEL_ENTRIES keys of a level (lowered to 2
    here, pages of 1), so a flat prefix of millions is never held, nor read to its end, here."""
    from imgcluster.scale import embed_job, s3_pages

    uri, folder = flat_prefix
    source = sources.open_source(uri)
    monkeypatch.setattr(s3_pages, "PAGE_KEYS", 1)
    monkeypatch.setattr(embed_job, "LOCAL_LEVEL_ENTRIES", 2)
    read = refuse_whole_levels(monkeypatch)
    assert embed_job._plan_here(source, embed_job.RayEmbedConfig(uri, str(tmp_path / "features")), {}) is None
    assert len(read) == 3  # the bound, and the one key past it
    split = sources.split_listing(source, 8, max_level=2)
    assert split.units == [sources.Unit("", recursive=True)] and not split.complete  # the level listed again, elsewhere
    local = sources.list_source(sources.open_source(str(folder)))
    rows = split_rows(source, split)  # as the single-machine listing of the same files (an object's mtime is its upload's)
    paths, sizes = local.column("path").to_pylist(), local.column("size").to_pylist()
    assert [r[:2] for r in rows] == [(f"{uri}/{p}", size) for p, size in zip(paths, sizes)]


def test_a_complete_store_of_a_prefix_under_the_bound_needs_no_ray(flat_prefix: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from imgcluster.scale import embed_job, s3_pages

    uri, _ = flat_prefix
    source = sources.open_source(uri)
    whole = sources.list_source(source)
    out = "s3://photos/flat-complete"
    store = fst.open_store(out, fst.FeatureStoreMeta(model="m", key="k", identity={}, dim=2))
    rows = whole.to_pylist()
    store.write([r["path"] for r in rows], [r["size"] for r in rows], [r["mtime_ns"] for r in rows], [None] * len(rows), np.ones((5, 2)))
    monkeypatch.setattr(s3_pages, "PAGE_KEYS", 2)
    monkeypatch.setattr(embed_job, "LOCAL_LEVEL_ENTRIES", 5)
    read = refuse_whole_levels(monkeypatch)
    plan = embed_job._plan_here(source, embed_job.RayEmbedConfig(uri, out), {})
    assert plan is not None and (plan.listed, plan.n_todo, plan.others) == (5, 0, [])
    assert len(read) == 10  # counted once, then read for its rows
    monkeypatch.undo()
    assert table_rows(sources.read_manifest(sources.manifest_folder(out))) == table_rows(whole)
    gs = sources.Source("gs://photos/flat", "photos/flat", relative=False)  # pyarrow's whole levels only: listed in Ray tasks
    assert embed_job._plan_here(gs, embed_job.RayEmbedConfig(gs.uri, out), {}) is None


def no_driver_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every whole-listing or whole-store read fail in this process (the driver); Ray's workers import their own."""
    from imgcluster.scale import resume

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver read a whole listing, manifest or store")

    for module, name in [(sources, "list_source"), (sources, "list_unit"), (sources, "read_manifest"), (fst, "done_rows"),
                         (fst, "bucket_stamps"), (resume, "plan_table")]:  # fmt: skip
        monkeypatch.setattr(module, name, refuse)


@pytest.mark.slow
def test_a_ray_listing_and_resume_run_in_tasks_and_plan_only_missing_or_changed_rows(
    local_ray: object, nested_prefix: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgcluster.scale import embed_job
    from imgcluster.scale.engine import quiet_data_context

    uri, _ = nested_prefix
    source = sources.open_source(uri)
    whole = sources.list_source(source)
    out = "s3://photos/nested-features"
    store = fst.open_store(out, fst.FeatureStoreMeta(model="m", key="k", identity={}, dim=2))
    rows = whole.to_pylist()
    new, grown = rows[0]["path"], rows[1]["path"]
    kept = [r for r in rows if r["path"] != new]
    store.write(
        [r["path"] for r in kept] + [f"{uri}/gone.png"], [r["size"] + (r["path"] == grown) for r in kept] + [5],
        [r["mtime_ns"] for r in kept] + [1], [None] * (len(kept) + 1), np.ones((len(kept) + 1, 2)),
    )  # fmt: skip
    no_driver_listing(monkeypatch)
    monkeypatch.setattr(embed_job, "SPLIT_PER_CPU", 1)  # 2 CPUs: split into at least 2 sub-prefixes
    with quiet_data_context():
        plan = embed_job._plan_on_ray(source, embed_job.RayEmbedConfig(uri, out), {})
    assert plan.listed == 9 and plan.n_todo == 2 and plan.others == []
    assert sorted(r["path"] for r in plan.todo.take_all()) == sorted([new, grown])
    manifest = sources.manifest_folder(out)
    fs, root = fst.resolve(manifest)
    import pyarrow.fs as pafs

    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(root)))
    assert len({n.split("-")[1] for n in names}) == 4 and sources.INCOMPLETE_MARK not in names  # 4 units, 4 listing tasks
    monkeypatch.undo()
    assert table_rows(sources.read_manifest(manifest)) == table_rows(whole)


@pytest.mark.slow
def test_a_manifest_with_a_bad_column_read_on_ray_is_one_error_line(local_ray: object, tmp_path: Path) -> None:
    from imgcluster.scale import embed_job
    from imgcluster.scale.engine import quiet_data_context

    folder = tmp_path / "manifest.parquet"
    folder.mkdir()
    pq.write_table(pa.table({"path": ["a.png"], "size": ["3"], "mtime_ns": [1]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"path": ["b.png"], "size": ["three"], "mtime_ns": [1]}), folder / "part-1.parquet")
    config = embed_job.RayEmbedConfig(str(tmp_path), str(tmp_path / "features"), manifest=str(folder))
    with quiet_data_context(), pytest.raises(ParameterError) as info:  # "3" casts, "three" does not: found in a task, per block
        embed_job._plan_on_ray(sources.open_source(str(tmp_path)), config, {})
    assert str(info.value) == f"the manifest {folder}: column size is string, expected int64"


@pytest.mark.slow
def test_embed_from_and_into_s3_then_resume_from_the_kept_manifest(local_ray: object, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listed, planned and resumed in Ray tasks (the in-process plan is turned off), end to end."""
    from imgcluster.scale import embed_job

    monkeypatch.setattr(embed_job, "LOCAL_PLAN_ROWS", 0)
    no_driver_listing(monkeypatch)
    out = "s3://photos/features"
    summary = embed_job.embed_to_store(bucket, out, model="efficientnet-lite0")
    assert summary.embedded == 4 and [p for p, _ in summary.skipped] == ["s3://photos/in/broken.jpg"]
    assert summary.manifest == "s3://photos/features/_manifest.parquet"
    paths, features = fst.read_features(out)
    assert len(paths) == 4 and np.isfinite(features).all() and features.shape[1] == fst.read_meta(out).dim
    again = embed_job.embed_to_store(bucket, out, model="efficientnet-lite0", manifest=summary.manifest)
    assert (again.embedded, again.reused, len(again.skipped)) == (0, 4, 1)
    fs, _ = fst.resolve("s3://photos")  # one object replaced by another of a different size, one removed, one added
    changed, removed = sorted(paths)[:2]
    old_size = fs.get_file_info(changed.removeprefix("s3://")).size
    other = next(p for p in sorted(SAMPLE.rglob("*.png")) if p.stat().st_size != old_size)
    with fs.open_output_stream(changed.removeprefix("s3://")) as stream:
        stream.write(other.read_bytes())
    fs.delete_file(removed.removeprefix("s3://"))
    with fs.open_output_stream("photos/in/new/added.png") as stream:
        stream.write(other.read_bytes())
    third = embed_job.embed_to_store(bucket, out, model="efficientnet-lite0")
    assert (third.embedded, third.reused, len(third.skipped)) == (2, 2, 1)
    monkeypatch.undo()
    stamps = fst.done_rows(out)
    assert stamps[changed][0] == other.stat().st_size and "s3://photos/in/new/added.png" in stamps and removed in stamps


@pytest.mark.slow
def test_a_flat_prefix_is_listed_in_ray_tasks_and_the_driver_holds_no_file_row(
    local_ray: object, flat_prefix: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file in one level, on s3 and in a local folder: over the (lowered) bound the driver's
    first look gives up, the level is listed in a task (the driver's level listing refuses), and
    the rows are the single-machine listing's."""
    from imgcluster.scale import embed_job, s3_pages
    from imgcluster.scale.engine import quiet_data_context

    prefix, flat = flat_prefix

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver listed a level")

    for uri, out in [(prefix, "s3://photos/flat-features"), (str(flat), str(tmp_path / "features"))]:
        source = sources.open_source(uri)
        whole = sources.list_source(source)
        assert whole.num_rows == 5
        config = embed_job.RayEmbedConfig(uri, out)
        if not source.relative:
            monkeypatch.setattr(s3_pages, "PAGE_KEYS", 1)
            monkeypatch.setattr(embed_job, "LOCAL_LEVEL_ENTRIES", 2)
            read = refuse_whole_levels(monkeypatch)
            assert embed_job._plan_here(source, config, {}) is None and len(read) == 3
        no_driver_listing(monkeypatch)
        monkeypatch.setattr(sources, "_level_entries", refuse)
        monkeypatch.setattr(sources, "_object_entries", refuse)
        with quiet_data_context():
            listing, listed, kept, _ = embed_job.list_on_ray(source, config)
        monkeypatch.undo()
        assert listed == 5 and table_rows(pa.Table.from_pylist(listing.take_all(), schema=sources.manifest_schema())) == table_rows(whole)
        assert kept == (None if source.relative else sources.manifest_folder(out))
        if kept is not None:
            assert table_rows(sources.read_manifest(kept)) == table_rows(whole)


@pytest.fixture()
def silent_endpoint() -> Iterator[str]:
    """host:port of a server that accepts connections and never answers (a hung or firewalled endpoint)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def first_look(uri: str, setting: str = "") -> subprocess.CompletedProcess[str]:
    """Open and list ``uri`` in a child process (what `embed URI --engine ray` does first), killed after 90 s."""
    code = (
        f"import imgcluster.featurestore as f; {setting}\n"
        "from imgcluster.errors import ImgclusterError\nfrom imgcluster.scale import sources\n"
        f"try:\n    sources.split_listing(sources.open_source({uri!r}), 8)\n"
        "except ImgclusterError as exc:\n    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env)


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_unreachable_gcs_is_one_line_in_bounded_time(endpoint: str, silent_endpoint: str) -> None:
    """pyarrow's GCS client retried for 15 minutes (an offline `embed gs://...` hung, SIGTERM waited)."""
    host = f"127.0.0.1:{_free_port()}" if endpoint == "closed" else silent_endpoint
    uri = f"gs://photos/in?endpoint_override={host}&scheme=http"
    result = first_look(uri, "f.GCS_RETRY_SECONDS = 2")  # the default (60 s) lowered, as a test can afford
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"cannot open {uri}: ") and "error_info" not in line


def test_a_hung_s3_endpoint_is_one_line_in_bounded_time(silent_endpoint: str) -> None:
    """By URI, pyarrow's S3 client retried a call up to 10 times (about 100 s a call here); 3 attempts now."""
    uri = f"s3://photos/in?endpoint_override={silent_endpoint}&scheme=http"
    result = first_look(uri)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"cannot open {uri}: ") and "Timeout was reached" in line


@pytest.mark.slow
@pytest.mark.parametrize("per_cpu", [1, 4])
def test_links_are_listed_on_ray_as_the_single_machine_listing_lists_them(
    local_ray: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_cpu: int
) -> None:
    """Split into three recursive pieces (1 a CPU) or listed level by level (4): the same rows, links included."""
    from imgcluster.listing import list_images
    from imgcluster.scale import embed_job
    from imgcluster.scale.engine import quiet_data_context

    folder = linked_tree(tmp_path)
    monkeypatch.setattr(embed_job, "SPLIT_PER_CPU", per_cpu)
    for follow in (False, True):
        config = embed_job.RayEmbedConfig(str(folder), str(tmp_path / "features"), follow_symlinks=follow)
        with quiet_data_context():
            listing, listed, _, left_out = embed_job.list_on_ray(sources.open_source(str(folder)), config)
        rows = table_rows(pa.Table.from_pylist(listing.take_all(), schema=sources.manifest_schema()))
        assert listed == len(rows)
        outside: list[str] = []
        assert rows == sorted((f.rel, f.size, f.mtime_ns, None) for f in list_images(folder, follow_symlinks=follow, outside=outside))
        assert left_out == sources.LeftOut(len(outside), outside[0] if outside else None)  # counted in the tasks, as on one machine
