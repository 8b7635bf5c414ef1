"""Outputs that cannot be written: a read-only output folder, a read-only input folder with the
default cache inside it, a full disk. Each is one ``error:`` line and exit code 1, and nothing
half-written is left where a complete file would be expected.

Read-only is real: ``chmod`` for a normal user, a read-only bind mount for root (skipped where
mounting is not allowed). A full disk is simulated by making the writes of the atomic writer
fail with ENOSPC, and, where mounting works, also shown for real on a tiny tmpfs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import cache_directory, fill_disk_for, read_only, record, tiny_tmpfs, untrained_head
from typer.testing import CliRunner

from imgcluster.cli import app

EMBED = ["--model", "efficientnet-lite0", "--workers", "0", "--embed-batch-size", "8"]
SEEN: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _record_messages(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: how many cases ran and the exact line each one printed."""
    yield
    if SEEN:
        record(request.config, "unwritable_outputs", {"cases": len(SEEN), "failures": 0, "messages": dict(SEEN)})


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(result: Any) -> str:
    """The run failed with exit code 1 and exactly one ``error:`` line, no traceback."""
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def visible_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def temp_leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*.tmp")]


@pytest.fixture
def cache(small_folder: Path, shared_cache: Path) -> Path:
    """``shared_cache`` with this folder embedded (the copies keep mtimes, so it usually is)."""
    assert invoke("embed", small_folder, "--cache-dir", shared_cache, *EMBED).exit_code == 0
    return shared_cache


def test_unwritable_output_fails_before_embedding(small_folder: Path, cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "locked"
    target.mkdir()
    with read_only(target):
        result = invoke("assign", small_folder, "--cache-dir", cache, "--out", target / "clusters.csv", *EMBED)
        line = one_error(result)
    assert line.startswith(f"error: cannot write {target / 'clusters.csv'}: ")
    assert "Read-only file system" in line or "Permission denied" in line
    assert "images:" not in result.stderr  # it stopped before embedding anything
    assert visible_files(target) == []
    SEEN["read-only output folder"] = line


def test_read_only_input_folder_needs_another_cache(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGCLUSTER_CACHE", raising=False)
    before = visible_files(small_folder)
    with read_only(small_folder):
        line = one_error(invoke("embed", small_folder, *EMBED))
        assert f"cannot create the cache folder {small_folder / '.imgcluster'}" in line
        assert "--cache-dir" in line and "$IMGCLUSTER_CACHE" in line
        elsewhere = invoke("embed", small_folder, "--cache-dir", tmp_path / "cache", *EMBED)
        assert elsewhere.exit_code == 0, elsewhere.stderr
        monkeypatch.setenv("IMGCLUSTER_CACHE", str(tmp_path / "env-cache"))
        by_env = invoke("embed", small_folder, *EMBED)
        assert by_env.exit_code == 0 and "embedded 24" in by_env.stderr, by_env.stderr
    assert visible_files(small_folder) == before
    SEEN["read-only input folder, default cache"] = line


def test_disk_full_while_writing_the_csv(small_folder: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = untrained_head(tmp_path / "head.safetensors", cache)
    out = tmp_path / "out" / "clusters.csv"
    out.parent.mkdir()
    out.write_text('"path","cluster","confidence"\n"old.png",0,1.0\n')
    old = out.read_bytes()
    fill_disk_for(monkeypatch, "clusters.csv")
    line = one_error(invoke("assign", small_folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED))
    assert line == f"error: cannot write {out}: No space left on device"
    assert out.read_bytes() == old  # the old CSV, whole, not a torn new one
    assert temp_leftovers(out.parent) == []
    SEEN["disk full: CSV"] = line


def test_disk_full_while_writing_a_cache_shard(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    fill_disk_for(monkeypatch, ".safetensors", budget=1000)
    line = one_error(invoke("embed", small_folder, "--cache-dir", cache, *EMBED))
    assert "cannot write" in line and line.endswith(".safetensors: No space left on device")
    directory = cache_directory(cache)
    assert list((directory / "shards").iterdir()) == []  # no shard at all rather than a torn one
    monkeypatch.undo()
    again = invoke("embed", small_folder, "--cache-dir", cache, *EMBED)
    assert again.exit_code == 0 and "embedded 24, reused 0" in again.stderr and "warning" not in again.stderr
    SEEN["disk full: cache shard"] = line


def test_disk_full_while_saving_a_head(small_folder: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = tmp_path / "heads" / "head.safetensors"
    fill_disk_for(monkeypatch, "head.")
    args = ["train", small_folder, "--cache-dir", cache, "--out", head, "--clusters", "3", "--epochs", "1", *EMBED]
    line = one_error(invoke(*args))
    assert line == f"error: cannot write {head}: No space left on device"
    assert visible_files(head.parent) == []
    SEEN["disk full: head checkpoint"] = line


def test_really_full_tmpfs(small_folder: Path, cache: Path, tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "full") as full:
        out = full / "out" / "clusters.csv"
        (full / "cache").mkdir()
        out.parent.mkdir()
        with (full / "filler").open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
        embed_line = one_error(invoke("embed", small_folder, "--cache-dir", full / "cache", *EMBED))
        assert "No space left on device" in embed_line
        head = untrained_head(tmp_path / "head.safetensors", cache)
        csv_line = one_error(invoke("assign", small_folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED))
        assert csv_line == f"error: cannot write {out}: No space left on device"
        assert not out.exists() and temp_leftovers(full) == []
        assert not any((full / "cache").rglob("*.safetensors"))
    SEEN["really full tmpfs: cache"] = embed_line
    SEEN["really full tmpfs: CSV"] = csv_line


def test_long_output_name_is_writable(small_folder: Path, cache: Path, tmp_path: Path) -> None:
    """The hidden temporary name must fit NAME_MAX even when the output's own name nearly fills it."""
    head = untrained_head(tmp_path / "head.safetensors", cache)
    out = tmp_path / ("c" * 243 + ".csv")  # 247 bytes, the most a CSV's NAME-skipped.csv (255) allows; its temporary name would be 261
    result = invoke("assign", small_folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED)
    assert result.exit_code == 0, result.stderr
    assert out.is_file() and out.with_name(out.name + ".json").is_file()
