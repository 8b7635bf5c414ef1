"""Damaged artefacts are detected, reported in one line and never loaded as valid.

A cache shard that is truncated, edited (features or row table), of an older format, of another
dtype or copied from another backbone's cache is reported and re-embedded. A head checkpoint
that is truncated, edited, torn (weights and JSON from different saves), of an older format or
trained on another backbone is refused by ``assign --head`` with one ``error:`` line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from faults import backbone_identity, cache_directory, record, untrained_head
from imagefolders import CLASSES, copy_sample
from typer.testing import CliRunner

from imgcluster.cache import read_shard, read_shard_rows, write_shard
from imgcluster.checkpoint import save_checkpoint
from imgcluster.cli import app
from imgcluster.objectives import create_objective

EMBED = ["--model", "efficientnet-lite0", "--workers", "0", "--embed-batch-size", "4"]
SEEN: dict[str, str] = {}  # damage -> the line it was reported with, for the record


@pytest.fixture(scope="module", autouse=True)
def _record_messages(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: how many damages were caught and the exact line each one printed."""
    yield
    shards = sum(k.startswith("shard") for k in SEEN)
    heads = sum(k.startswith("head") for k in SEEN)
    if SEEN:
        counts = {"shard_damages_detected": shards, "head_damages_refused": heads, "failures": 0, "messages": dict(SEEN)}
        record(request.config, "damaged_artefacts", counts)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Six images, their cache, and their features as first embedded."""
    root = tmp_path_factory.mktemp("damage")
    folder = copy_sample(root / "photos", CLASSES[:3], per_class=2)
    cache = root / "cache"
    result = invoke("embed", folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    return folder, cache, features_by_path(cache)


def features_by_path(cache: Path) -> dict[str, np.ndarray]:
    directory = cache_directory(cache)
    found: dict[str, np.ndarray] = {}
    for shard in sorted((directory / "shards").glob("*.safetensors"), reverse=True):
        features, rows = read_shard(shard, cache=directory.name)
        for (rel, _, _), vector in zip(rows, features):
            found.setdefault(rel, vector)
    return found


# ---- shard damage ----------------------------------------------------------------------------------
def _flip_last_bytes(data: bytes) -> bytes:
    out = bytearray(data)
    out[-7] ^= 0xFF
    return bytes(out)


def _edit_row_table(data: bytes) -> bytes:
    """Swap two paths' digits inside the header (same length): features attributed to another file."""
    header_len = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_len].decode()
    first = header.index(".png")
    edited = header[: first - 1] + ("9" if header[first - 1] != "9" else "8") + header[first:]
    return data[:8] + edited.encode() + data[8 + header_len :]


def _old_format(data: bytes, directory: Path) -> bytes:
    """What format 1 wrote: no cache name, a checksum over the features only."""
    import hashlib

    from safetensors.numpy import save

    features, rows = read_shard_bytes(data, directory)
    digest = hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()
    return save({"features": features}, metadata={"format": "1", "rows": json.dumps(rows), "sha256": digest})


def read_shard_bytes(data: bytes, directory: Path) -> tuple[np.ndarray, list]:
    probe = directory / "probe.tmp-shard"
    probe.write_bytes(data)
    try:
        return read_shard(probe)
    finally:
        probe.unlink()


SHARD_DAMAGE: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "truncated to half": (lambda d, _: d[: len(d) // 2], "unreadable"),
    "truncated to the length field": (lambda d, _: d[:8], "unreadable"),
    "emptied": (lambda d, _: b"", "unreadable"),
    "features edited": (lambda d, _: _flip_last_bytes(d), "checksum mismatch"),
    "row table edited": (lambda d, _: _edit_row_table(d), "checksum mismatch"),
    "older format version": (_old_format, "format '1', expected 3"),
}


@pytest.mark.parametrize("damage", sorted(SHARD_DAMAGE))
def test_damaged_shard_is_reported_and_rebuilt(embedded: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path, damage: str) -> None:
    folder, original_cache, original = embedded
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(original_cache, cache)
    directory = cache_directory(cache)
    (shard,) = (directory / "shards").glob("*.safetensors")
    mutate, reason = SHARD_DAMAGE[damage]
    shard.write_bytes(mutate(shard.read_bytes(), directory))
    result = invoke("embed", folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: cache shard damaged and ignored (will re-embed): {shard.name}: {reason}"), warnings[0]
    assert "embedded 6, reused 0" in result.stderr  # nothing from the damaged shard was used
    rebuilt = features_by_path(cache)
    assert rebuilt.keys() == original.keys() and all(np.array_equal(rebuilt[k], original[k]) for k in original)
    SEEN[f"shard {damage}"] = warnings[0]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("another backbone's cache", "belongs to cache 'dinov2-vits14-0123456789abcdef'"), ("another dtype", "holds float32 features")],
)
def test_foreign_shard_is_refused(embedded: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path, damage: str, reason: str) -> None:
    """A newer, self-consistent shard that belongs elsewhere: it would win if it were trusted."""
    import shutil

    folder, original_cache, original = embedded
    cache = tmp_path / "cache"
    shutil.copytree(original_cache, cache)
    directory = cache_directory(cache)
    (shard,) = (directory / "shards").glob("*.safetensors")
    _, rows = read_shard_rows(shard)
    rng = np.random.default_rng(0)
    foreign = directory / "shards" / "00000099.safetensors"
    if damage == "another dtype":
        write_shard(foreign, rng.normal(size=(len(rows), 1280)).astype(np.float32), rows, cache=directory.name)
    else:
        write_shard(foreign, rng.normal(size=(len(rows), 384)).astype(np.float16), rows, cache="dinov2-vits14-0123456789abcdef")
    result = invoke("embed", folder, "--cache-dir", cache, *EMBED)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{foreign.name}: {reason}" in warnings[0], result.stderr
    assert "embedded 0, reused 6" in result.stderr  # the genuine older shard still serves
    again = features_by_path(cache)
    assert all(np.array_equal(again[k], original[k]) for k in original)
    assert not foreign.exists()
    SEEN[f"shard from {damage}"] = warnings[0]


# ---- checkpoint damage ------------------------------------------------------------------------------
def _head_pair(path: Path, cache: Path, seed: int = 0) -> Path:
    return untrained_head(path, cache, seed)


def _truncate(head: Path, cache: Path) -> None:
    head.write_bytes(head.read_bytes()[:-100])


def _flip_weight(head: Path, cache: Path) -> None:
    data = bytearray(head.read_bytes())
    data[-5] ^= 0x01
    head.write_bytes(bytes(data))


def _edit_json(key: str, value: object) -> Callable[[Path, Path], None]:
    def edit(head: Path, cache: Path) -> None:
        meta_path = head.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        meta[key] = value
        meta_path.write_text(json.dumps(meta))

    return edit


def _edit_param(head: Path, cache: Path) -> None:
    meta_path = head.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["params"]["entropy_weight"] = 0.5
    meta_path.write_text(json.dumps(meta))


def _torn_pair(head: Path, cache: Path) -> None:
    """Weights of a newer save beside the JSON of an older one: a kill between the two writes."""
    other = head.with_name("other.safetensors")
    _head_pair(other, cache, seed=1)
    head.write_bytes(other.read_bytes())


def _no_json(head: Path, cache: Path) -> None:
    head.with_suffix(".json").unlink()


def _other_backbone(head: Path, cache: Path) -> None:
    """Same width, different backbone: the feature_dim check alone would accept it."""
    identity = dict(backbone_identity(cache))
    identity.update(model="dinov2-vits14", weights="0123456789abcdef")
    torch_seed = 3
    import torch

    torch.manual_seed(torch_seed)
    save_checkpoint(head, create_objective("scan", 1280, 3), {"backbone": identity})


HEAD_DAMAGE: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "truncated weights": (_truncate, "does not match the checksum"),
    "edited weights": (_flip_weight, "does not match the checksum"),
    "edited JSON (clusters)": (_edit_json("clusters", 4), "does not describe the weights"),
    "edited JSON (hyper-parameter)": (_edit_param, "does not describe the weights"),
    "torn pair": (_torn_pair, "does not match the checksum"),
    "missing JSON": (_no_json, "has no description"),
    "older format version": (_edit_json("format", "imgcluster-head/1"), "has format imgcluster-head/1"),
    "another backbone": (_other_backbone, "was trained on features of dinov2-vits14"),
}


def test_intact_head_is_accepted(embedded: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """The control for the cases below: the same steps without damage succeed."""
    folder, cache, _ = embedded
    head = _head_pair(tmp_path / "head.safetensors", cache)
    out = tmp_path / "out.csv"
    result = invoke("assign", folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED)
    assert result.exit_code == 0, result.stderr
    assert out.is_file()


@pytest.mark.parametrize("damage", sorted(HEAD_DAMAGE))
def test_damaged_head_is_refused(embedded: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path, damage: str) -> None:
    folder, cache, _ = embedded
    head = _head_pair(tmp_path / "head.safetensors", cache)
    mutate, reason = HEAD_DAMAGE[damage]
    mutate(head, cache)
    out = tmp_path / "out.csv"
    result = invoke("assign", folder, "--cache-dir", cache, "--head", head, "--out", out, *EMBED)
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0], result.stderr
    assert "Traceback" not in result.stderr and "\n" not in errors[0]
    assert not out.exists()
    SEEN[f"head {damage}"] = errors[0]
