"""Issue 12, second round: what a hostile or careless user found in the cache, its lock, heads and the scan.

Each test reproduces one report and failed before its fix: a full disk that blocked every later
run (compaction), a cache lock kept by a killed run's decode workers, a head replaced by a run
with other options, a file replaced with the same size and mtime (``cp -p``), crafted shards
(rows nested a million deep, NaN features), a read-only shared cache. Heads are in
``test_checkpoint.py``, the scan in ``test_listing.py``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults import cache_directory, fill_disk_for, read_only, record, start_cli, tiny_tmpfs, untrained_head
from imagefolders import CLASSES, copy_sample, sample_image
from typer.testing import CliRunner

from imgcluster.cache import FORMAT_VERSION, _digest, read_shard_rows, write_shard
from imgcluster.cli import app
from imgcluster.lock import folder_lock

EMBED = ["--model", "efficientnet-lite0", "--workers", "0", "--embed-batch-size", "4"]
SEEN: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _record_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if SEEN:
        record(request.config, "round2_cache_lock_heads", {"cases": len(SEEN), "failures": 0, "seen": dict(SEEN)})


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def warnings_of(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def shard_names(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache_directory(cache) / "shards").iterdir())


# ---- 4. a full disk must not block runs whose features are all cached ------------------------------
def test_failed_compaction_is_a_warning_and_the_shards_are_used(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six shards of 4 fit; compaction's seventh, a second copy of all 24 rows, does not."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMGCLUSTER_FLUSH_EVERY", "4")
    with pytest.MonkeyPatch.context() as full:
        fill_disk_for(full, ".safetensors", budget=30_000)
        first = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)
    assert first.exit_code == 0, first.stderr
    (warning,) = warnings_of(first)
    assert "could not compact the cache" in warning and "No space left on device" in warning and "stay valid and are used" in warning
    assert len(shard_names(cache)) == 6 and not any(name.startswith(".") for name in shard_names(cache))
    head = untrained_head(tmp_path / "head.safetensors", cache)
    out = tmp_path / "clusters.csv"
    with pytest.MonkeyPatch.context() as full:
        fill_disk_for(full, "0.safetensors", budget=30_000)  # the cache's shards, not the head
        again = invoke("assign", small_folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED)
    assert again.exit_code == 0, again.stderr
    assert "24 images: 24 cached, 0 to embed" in again.stderr and len(warnings_of(again)) == 1
    assert len(list(csv.DictReader(out.open()))) == 24
    roomy = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)  # room again: the next run compacts
    assert roomy.exit_code == 0 and warnings_of(roomy) == [] and len(shard_names(cache)) == 1
    SEEN["disk full while compacting (simulated)"] = warning


def test_failed_compaction_on_a_really_full_tmpfs(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLUSTER_FLUSH_EVERY", "4")
    with tiny_tmpfs(tmp_path / "small", size="100k") as small:
        cache = small / "cache"
        first = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)
        assert first.exit_code == 0, first.stderr
        (warning,) = warnings_of(first)
        assert "could not compact" in warning and "No space left on device" in warning
        head = untrained_head(tmp_path / "head.safetensors", cache)
        out = tmp_path / "clusters.csv"
        again = invoke("assign", small_folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED)
        assert again.exit_code == 0, again.stderr
        assert "24 cached, 0 to embed" in again.stderr and out.is_file()
        assert not list(small.rglob("*.tmp"))
    SEEN["disk full while compacting (real 100 kB tmpfs)"] = warning


# ---- 5. the cache lock dies with the process that took it, not with its decode workers -------------
def _forked_children(pid: int) -> list[int]:
    """Children running the parent's own command line: forked decode workers, not helper programs."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() == own:
                found.append(child)
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find decode workers")
@pytest.mark.timeout(300)
def test_lock_is_free_the_moment_its_holder_is_killed_even_with_workers_alive(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES, per_class=16)
    cache = tmp_path / "cache"
    run = start_cli("embed", folder, "--cache-dir", cache, "--model", "efficientnet-lite0", "--workers", "2", "--embed-batch-size", "4")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while len(workers) < 2 and run.poll() is None and time.monotonic() < deadline:  # both, so none is left behind
            if any(cache.glob("folders/*/embeddings/*/lock")):  # the run holds the lock: now its workers
                workers = _forked_children(run.pid)
            time.sleep(0.01)
        if len(workers) < 2:
            ended = run.poll()
            said = run.communicate(timeout=60)[1] if ended is not None else ""
            raise AssertionError(f"decode workers seen: {workers}; run ended with {ended}: {said[-2000:]}")
        # Orphaned workers notice their parent is gone within a moment on an idle machine, seconds
        # on a loaded one; stopping them first makes "a loaded machine" certain.
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        run.send_signal(signal.SIGKILL)
        run.wait()
        directory = cache_directory(cache)
        alive_before = [w for w in workers if _alive(w)]
        with folder_lock(directory):  # no wait: before the fix the orphaned workers held it for seconds
            alive_after = [w for w in workers if _alive(w)]
        assert alive_before and alive_after, "the workers were gone before the lock was tried: the test proved nothing"
        SEEN["SIGKILL while decode workers run"] = f"lock taken at once with {len(alive_after)} orphaned worker(s) still alive"
    finally:
        if run.poll() is None:
            run.kill()
        for w in workers:  # the orphans this test's run left
            if _alive(w):
                os.kill(w, signal.SIGKILL)


# ---- 6. a CSV's sidecar always names the head that made it -----------------------------------------
def _labels(csv_path: Path) -> list[tuple[str, str, str]]:
    return [(r["path"], r["cluster"], r["confidence"]) for r in csv.DictReader(csv_path.open())]


@pytest.mark.timeout(600)
def test_a_head_named_in_a_sidecar_is_never_replaced(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    common = [small_folder, "--cache-dir", cache, *EMBED, "-k", "2", "--seed", "0"]
    first, second, again = tmp_path / "first.csv", tmp_path / "second.csv", tmp_path / "again.csv"
    ran = invoke("assign", *common, "--epochs", "3", "--out", first)
    assert ran.exit_code == 0, ran.stderr
    ran = invoke("assign", *common, "--epochs", "1", "--lr", "0.5", "--out", second)
    assert ran.exit_code == 0, ran.stderr
    assert _labels(first) != _labels(second)  # the two heads differ, or this test proves nothing
    head = json.loads(Path(f"{first}.json").read_text())["head"]["path"]
    assert head != json.loads(Path(f"{second}.json").read_text())["head"]["path"]
    assert Path(head).name.startswith("secu-k2-seed0-")
    ran = invoke("assign", small_folder, "--cache-dir", cache, *EMBED, "--head", head, "--out", again)
    assert ran.exit_code == 0, ran.stderr
    assert _labels(again) == _labels(first)
    SEEN["head named in a sidecar, then another run with other options"] = Path(head).name


# ---- 8. a replacement with the same size and mtime is noticed; --rehash and --reembed -------------
@pytest.fixture
def bmp_folder(tmp_path: Path) -> Path:
    """Same-sized files (BMPs of one size), so a replacement can keep size and mtime."""
    folder = tmp_path / "bmps"
    folder.mkdir()
    for i, cls in enumerate(CLASSES[:4]):
        for j in range(2):
            sample_image(cls, j).resize((48, 48)).save(folder / f"{i}{j}-{cls}.bmp")
    return folder


def _features(cache: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    shards = sorted((cache_directory(cache) / "shards").glob("*.safetensors"))
    for shard in shards:
        block, rows = read_shard_rows(shard)
        for (rel, *_), vector in zip(rows, block):
            found[rel] = vector
    return found


def test_same_size_same_mtime_replacement_is_reembedded(bmp_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert invoke("embed", bmp_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    before = _features(cache)
    files = sorted(bmp_folder.iterdir())
    in_place, renamed, source = files[0], files[2], files[7]
    assert in_place.stat().st_size == source.stat().st_size
    old = {path: path.stat() for path in (in_place, renamed)}
    shutil.copyfile(source, in_place)  # `cp -p`: the same inode, the old mtime put back
    os.utime(in_place, ns=(old[in_place].st_atime_ns, old[in_place].st_mtime_ns))
    staged = bmp_folder / ".incoming"
    shutil.copyfile(source, staged)  # `rsync -t`: a new file renamed over the old one, the mtime kept
    os.utime(staged, ns=(old[renamed].st_atime_ns, old[renamed].st_mtime_ns))
    staged.rename(renamed)
    for path, st in old.items():
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    result = invoke("embed", bmp_folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    assert "8 images: 6 cached, 2 to embed" in result.stderr
    after = _features(cache)
    for path in (in_place, renamed):  # now what the source's bytes give, as byte-identical files must
        assert np.array_equal(after[path.name], before[source.name])
    SEEN["same size and mtime replacement (cp -p, rsync -t)"] = "2 of 2 re-embedded"


def test_rehash_trusts_content_not_stat_and_reembed_redoes_all(bmp_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert invoke("embed", bmp_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    reference = _features(cache)
    files = sorted(bmp_folder.iterdir())
    touched, forged, source = files[1], files[3], files[6]
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # new stat, same bytes
    shutil.copyfile(source, forged)
    # A row that claims the replaced file's current stat with the old bytes' hash: what a file
    # system with unreliable ctimes (or a careless copy of a cache) can present.
    directory = cache_directory(cache)
    (shard,) = (directory / "shards").glob("*.safetensors")
    block, rows = read_shard_rows(shard)
    fst = forged.stat()
    rows = [(r[0], fst.st_size, fst.st_mtime_ns, fst.st_ctime_ns, fst.st_ino, r[5]) if r[0] == forged.name else r for r in rows]
    write_shard(shard, block, rows, cache=directory.name)
    rehashed = invoke("embed", bmp_folder, "--cache-dir", cache, *EMBED, "--rehash")
    assert rehashed.exit_code == 0, rehashed.stderr
    assert "8 images: 7 cached, 1 to embed" in rehashed.stderr  # the forged one, found by its content; the touched one kept
    assert np.array_equal(_features(cache)[forged.name], reference[source.name])
    plain = invoke("embed", bmp_folder, "--cache-dir", cache, *EMBED)
    assert "8 images: 8 cached, 0 to embed" in plain.stderr  # the touched file was recorded under its new stat
    reembedded = invoke("embed", bmp_folder, "--cache-dir", cache, *EMBED, "--reembed")
    assert "8 images: 0 cached, 8 to embed" in reembedded.stderr
    final = _features(cache)
    assert all(np.array_equal(final[f.name], reference[f.name]) for f in files if f not in (forged,))
    SEEN["--rehash with a row whose stat lies"] = "re-embedded by content"


def test_a_format_2_cache_is_migrated_not_reembedded(small_folder: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save

    cache = tmp_path / "cache"
    assert invoke("embed", small_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    directory = cache_directory(cache)
    (shard,) = (directory / "shards").glob("*.safetensors")
    block, rows = read_shard_rows(shard)
    table = json.dumps([r[:3] for r in rows], ensure_ascii=False)
    digest = _digest(block, table, directory.name)
    shard.write_bytes(save({"features": block}, metadata={"format": "2", "cache": directory.name, "rows": table, "sha256": digest}))
    result = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0 and "24 cached, 0 to embed" in result.stderr and warnings_of(result) == []
    (migrated,) = (directory / "shards").glob("*.safetensors")
    new_block, new_rows = read_shard_rows(migrated)
    assert np.array_equal(new_block, block) and all(r[3] is not None and r[5] == "" for r in new_rows)
    rehashed = invoke("embed", small_folder, "--cache-dir", cache, *EMBED, "--rehash")
    assert "24 cached" not in rehashed.stderr and "0 cached, 24 to embed" in rehashed.stderr  # no hash to trust yet


# ---- 10. crafted shards are dropped and their files embedded again --------------------------------
def _crafted_shard(path: Path, cache_name: str, features: np.ndarray, table: str) -> None:
    from safetensors.numpy import save

    metadata = {"format": FORMAT_VERSION, "cache": cache_name, "rows": table, "sha256": _digest(features, table, cache_name)}
    path.write_bytes(save({"features": features}, metadata=metadata))


@pytest.mark.parametrize("craft", ["rows nested 100,000 deep", "NaN features", "infinite features", "rows of the wrong types"])
def test_crafted_shard_is_dropped_and_reembedded(small_folder: Path, tmp_path: Path, craft: str) -> None:
    cache = tmp_path / "cache"
    assert invoke("embed", small_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    reference = _features(cache)
    directory = cache_directory(cache)
    (shard,) = (directory / "shards").glob("*.safetensors")
    block, rows = read_shard_rows(shard)
    crafted = directory / "shards" / "00000050.safetensors"
    if craft.startswith("rows nested"):
        _crafted_shard(crafted, directory.name, block[:1], "[" * 100_000 + "]" * 100_000)
    elif craft == "rows of the wrong types":
        _crafted_shard(crafted, directory.name, block[:1], json.dumps([[1, "2", None, [], {}, 0.5]]))
    else:
        bad = block.copy()
        bad[:, 0] = np.nan if craft == "NaN features" else np.inf
        write_shard(crafted, bad, rows, cache=directory.name)
    for _ in range(2):  # and it does not come back on the next run
        result = invoke("assign", small_folder, "--cache-dir", cache, *EMBED, "-k", "3", "--epochs", "1", "--out", tmp_path / "c.csv")
        assert result.exit_code == 0, result.stderr
        assert "unexpected" not in result.stderr
    assert not crafted.exists()
    assert _features(cache).keys() == reference.keys()
    assert all(np.array_equal(_features(cache)[k], reference[k]) for k in reference)
    SEEN[f"crafted shard: {craft}"] = "dropped and re-embedded"


# ---- 11. the scan reports what it could not reach ----------------------------------------------------
def test_an_unreadable_folder_is_listed_with_the_skipped_files(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgcluster.listing

    hidden_from_us = small_folder / CLASSES[1]
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:  # root ignores permissions, so the refusal is injected here
        if Path(path) == hidden_from_us:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(imgcluster.listing.os, "scandir", scandir)
    out = tmp_path / "out" / "clusters.csv"
    head = tmp_path / "head.safetensors"
    assert invoke("embed", small_folder, "--cache-dir", tmp_path / "cache", *EMBED).exit_code == 0
    untrained_head(head, tmp_path / "cache")
    result = invoke("assign", small_folder, "--cache-dir", tmp_path / "cache", *EMBED, "--head", head, "--out", out)
    assert result.exit_code == 0, result.stderr
    reason = "folder cannot be read: Permission denied"
    assert f"could not read 1 folder(s) or file(s) while scanning (first: {CLASSES[1]}/: {reason})" in result.stderr
    skipped = list(csv.DictReader((out.parent / "clusters-skipped.csv").open()))
    assert skipped == [{"path": f"{CLASSES[1]}/", "reason": "folder cannot be read: Permission denied"}]
    SEEN["unreadable sub-folder"] = "listed in the skipped CSV"


# ---- 16. a complete read-only cache is read, not refused ---------------------------------------------
@contextlib.contextmanager
def read_only_tree(folder: Path) -> Iterator[None]:
    """The whole tree read-only: a read-only bind mount as root, every folder chmod 555 otherwise."""
    if os.geteuid() == 0:
        with read_only(folder):
            yield
        return
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for p in folders:
        p.chmod(0o555)
    try:
        yield
    finally:
        for p in folders:
            p.chmod(0o755)


def test_a_complete_read_only_cache_is_used_without_writing(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert invoke("embed", small_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    head = untrained_head(tmp_path / "head.safetensors", cache)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    out = tmp_path / "clusters.csv"
    with read_only_tree(cache):
        result = invoke("assign", small_folder, "--cache-dir", cache, *EMBED, "--head", head, "--out", out)
        assert result.exit_code == 0, result.stderr
        assert "24 images: 24 cached, 0 to embed" in result.stderr
        assert not any("cache" in w for w in warnings_of(result))  # the untrained head's chance warning aside
        (small_folder / "new.png").write_bytes((small_folder / CLASSES[0] / sorted(os.listdir(small_folder / CLASSES[0]))[0]).read_bytes())
        more = invoke("assign", small_folder, "--cache-dir", cache, *EMBED, "--head", head, "--out", out)
        assert more.exit_code == 0, more.stderr
        assert "25 images: 24 cached, 1 to embed" in more.stderr
        (line,) = [w for w in warnings_of(more) if "cache" in w]
        assert "cannot be written: the 1 image(s) embedded by this run were not saved in it" in line
        assert len(list(csv.DictReader(out.open()))) == 25
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before
    SEEN["read-only shared cache"] = line


def test_a_cache_without_write_permission_is_used_without_writing(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's shared cache (or one chmod 555 folder by folder): its lock file may even be
    writable, its folders are not. Root ignores modes, so the permission answer is injected."""
    import imgcluster.cache
    import imgcluster.lock

    cache = tmp_path / "cache"
    assert invoke("embed", small_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    real_access = os.access

    def access(path: Any, mode: int) -> bool:
        if Path(path).is_relative_to(cache) and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(imgcluster.lock.os, "access", access)
    monkeypatch.setattr(imgcluster.cache.os, "access", access)
    result = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    assert "24 images: 24 cached, 0 to embed" in result.stderr and warnings_of(result) == []
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


def test_assign_that_trains_on_a_read_only_cache_writes_its_csv_without_keeping_the_head(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is read, but the head trained on it could not be saved there: the whole run failed
    after the training (`cannot write .../heads/...`), with no CSV. Root ignores modes, so the
    permission answers are injected, as the kernel gives them to another user."""
    import tempfile

    import imgcluster.cache
    import imgcluster.lock

    cache = tmp_path / "cache"
    assert invoke("embed", small_folder, "--cache-dir", cache, *EMBED).exit_code == 0
    real_access, real_mkstemp = os.access, tempfile.mkstemp

    def access(path: Any, mode: int) -> bool:
        return False if Path(path).is_relative_to(cache) and mode & os.W_OK else real_access(path, mode)

    def mkstemp(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
        if dir is not None and Path(dir).is_relative_to(cache):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(imgcluster.lock.os, "access", access)
    monkeypatch.setattr(imgcluster.cache.os, "access", access)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "clusters.csv"
    result = invoke("assign", small_folder, "--cache-dir", cache, *EMBED, "--clusters", "3", "--epochs", "2", "--no-names", "--out", out)
    assert result.exit_code == 0, result.stderr
    (line,) = [w for w in warnings_of(result) if "head" in w]
    assert line.startswith("warning: the head is not kept (cannot write ") and "Permission denied); the next run trains it again" in line
    assert len(list(csv.DictReader(out.open()))) == 24
    assert json.loads(Path(f"{out}.json").read_text())["head"]["path"] is None
    assert not any(cache.rglob("*.safetensors.json"))
