"""The on-disk embedding cache: reuse features of unchanged files, survive interruption.

Layout under ``<cache root>/embeddings/<model>-<key>/``, where the cache root is ``FOLDER/.imgcluster``
or, under a root shared by many folders, ``<root>/folders/<name>-<hash of the folder's path>``: ``config.json`` says how the features
were made; ``shards/<seq>.safetensors`` each hold a block of features with, in the header, the
(path, size, mtime) of every row, the cache it belongs to (``<model>-<key>``) and a checksum.
Shards are written atomically and never modified, so a killed run leaves only complete shards;
on load a later shard overrides an earlier one, and a shard that is torn, edited, of another
format version, dtype or width, or copied from another backbone's cache is reported and ignored.
After a run the live rows are compacted into one shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.atomic import atomic_open, atomic_write_text
from imgcluster.listing import ImageFile

FORMAT_VERSION = "2"  # 2: shards name the cache they belong to
CACHE_DIRNAME = ".imgcluster"


def shared_cache_root(cache_dir: str | None) -> Path | None:
    """The root many folders may share: ``--cache-dir``, else ``$IMGCLUSTER_CACHE``; None for the default."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("IMGCLUSTER_CACHE"):
        return Path(os.environ["IMGCLUSTER_CACHE"])
    return None


def default_cache_root(folder: Path, cache_dir: str | None) -> Path:
    """This folder's cache: ``FOLDER/.imgcluster``, or a sub-folder of its own under a shared root.

    Rows are keyed by paths relative to FOLDER, so two folders in one cache would each drop the
    other's rows (and overwrite each other's heads); a shared root keeps one cache per folder,
    named after the folder and a hash of its absolute path.
    """
    shared = shared_cache_root(cache_dir)
    if shared is None:
        return Path(folder) / CACHE_DIRNAME
    resolved = Path(folder).resolve()
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in resolved.name)[:40] or "root"
    return shared / "folders" / f"{name}-{digest}"


def cache_key(identity: dict[str, Any], dtype: str, compute: str = "float32") -> str:
    """Names the cache of one backbone, storage dtype and compute precision.

    Features computed in bfloat16 (CUDA autocast) differ from float32 ones (cosine ~0.998), so they
    get a cache of their own and a run never mixes the two. float32 leaves the key as it was before
    the field existed, so caches written then stay valid.
    """
    fields = {"backbone": identity, "dtype": dtype, "format": FORMAT_VERSION}
    if compute != "float32":
        fields["compute"] = compute
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def embeddings_dir(cache_root: Path, model_name: str, identity: dict[str, Any], dtype: str, compute: str = "float32") -> Path:
    """The one place that names a backbone's cache folder, for the run that writes it and for readers."""
    return Path(cache_root) / "embeddings" / f"{model_name}-{cache_key(identity, dtype, compute)}"


@dataclass
class Entry:
    size: int
    mtime_ns: int
    shard: int
    row: int


@dataclass
class EmbeddingCache:
    directory: Path
    dtype: str = "float16"
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # shards found damaged and ignored
    _arrays: dict[int, np.ndarray] = field(default_factory=dict)
    _next_seq: int = 0

    @property
    def shard_dir(self) -> Path:
        return self.directory / "shards"

    @classmethod
    def open(cls, directory: Path, dtype: str, description: dict[str, Any]) -> EmbeddingCache:
        """Load every valid shard; ``description`` is written as ``config.json``."""
        cache = cls(directory=directory, dtype=dtype)
        cache.shard_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob(".*.tmp"), *cache.shard_dir.glob(".*.tmp")]:  # left by a killed writer (we hold the lock)
            stale.unlink(missing_ok=True)
        atomic_write_text(directory / "config.json", json.dumps(description, indent=2, sort_keys=True, default=str) + "\n")
        dim = (description.get("backbone") or {}).get("feature_dim")
        for path in sorted(cache.shard_dir.glob("*.safetensors")):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            cache._next_seq = max(cache._next_seq, seq + 1)
            try:
                features, rows = read_shard(path, cache=directory.name, dtype=dtype, dim=dim)
            except ShardError as exc:
                cache.problems.append(f"{path.name}: {exc}")
                path.unlink(missing_ok=True)
                continue
            cache._arrays[seq] = features
            for row, (rel, size, mtime_ns) in enumerate(rows):
                cache.entries[rel] = Entry(size, mtime_ns, seq, row)
        return cache

    def lookup(self, file: ImageFile) -> np.ndarray | None:
        entry = self.entries.get(file.rel)
        if entry is None or entry.size != file.size or entry.mtime_ns != file.mtime_ns:
            return None
        return self._arrays[entry.shard][entry.row]

    def add(self, files: list[ImageFile], features: np.ndarray) -> None:
        """Persist one block as a new shard; after this returns the block survives any kill."""
        if not files:
            return
        seq = self._next_seq
        self._next_seq += 1
        array = np.ascontiguousarray(features, dtype=self.dtype)
        rows = [(f.rel, f.size, f.mtime_ns) for f in files]
        write_shard(self.shard_dir / f"{seq:08d}.safetensors", array, rows, cache=self.directory.name)
        self._arrays[seq] = array
        for row, f in enumerate(files):
            self.entries[f.rel] = Entry(f.size, f.mtime_ns, seq, row)

    def compact(self, live: list[ImageFile]) -> None:
        """Rewrite the rows of ``live`` files as one shard and drop the rest (deleted files)."""
        rows = [(f, v) for f in live if (v := self.lookup(f)) is not None]
        old = sorted(self._arrays)
        if len(old) <= 1 and len(rows) == len(self.entries):
            return
        if rows:
            files = [f for f, _ in rows]
            self.entries = {}
            self.add(files, np.stack([v for _, v in rows]))
        else:
            self.entries = {}
        keep = self._next_seq - 1 if rows else None
        for seq in old:
            if seq != keep:
                (self.shard_dir / f"{seq:08d}.safetensors").unlink(missing_ok=True)
                self._arrays.pop(seq, None)


class ShardError(Exception):
    pass


def _digest(array: np.ndarray, rows: str, cache: str) -> str:
    """Covers the features *and* the row table: an edited path or mtime must fail it too."""
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update(b"\0rows\0" + rows.encode("utf-8", "surrogateescape"))
    h.update(b"\0cache\0" + cache.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def write_shard(path: Path, features: np.ndarray, rows: list[tuple[str, int, int]], cache: str = "") -> None:
    """``cache`` names the cache folder the shard belongs to, so a shard copied elsewhere is refused."""
    from safetensors.numpy import save

    table = json.dumps(rows, ensure_ascii=False)
    metadata = {"format": FORMAT_VERSION, "cache": cache, "rows": table, "sha256": _digest(features, table, cache)}
    data = save({"features": features}, metadata=metadata)
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def read_shard(
    path: Path, cache: str | None = None, dtype: str | None = None, dim: int | None = None
) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Read and verify one shard; any damage raises :class:`ShardError`.

    ``cache``, ``dtype`` and ``dim``, when given, must match: features from another backbone's
    cache would otherwise pass every checksum and still be wrong here.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            features = handle.get_tensor("features")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a torn file
        raise ShardError(f"unreadable ({type(exc).__name__})") from None
    if metadata.get("format") != FORMAT_VERSION:
        raise ShardError(f"format {metadata.get('format')!r}, expected {FORMAT_VERSION}")
    try:
        rows = [tuple(r) for r in json.loads(metadata["rows"])]
    except (KeyError, ValueError, TypeError):
        raise ShardError("row table missing or damaged") from None
    if features.ndim != 2 or features.shape[0] != len(rows):
        raise ShardError("row count does not match the feature block")
    if _digest(features, metadata["rows"], metadata.get("cache", "")) != metadata.get("sha256"):
        raise ShardError("checksum mismatch")
    if cache is not None and metadata.get("cache") != cache:
        raise ShardError(f"belongs to cache {metadata.get('cache')!r} (another backbone or dtype), not {cache!r}")
    if dtype is not None and features.dtype != np.dtype(dtype):
        raise ShardError(f"holds {features.dtype} features, this cache stores {dtype}")
    if dim is not None and features.shape[1] != int(dim):
        raise ShardError(f"holds {features.shape[1]}-d features, this backbone gives {dim}-d")
    if not all(len(r) == 3 and isinstance(r[0], str) and isinstance(r[1], int) and isinstance(r[2], int) for r in rows):
        raise ShardError("row table damaged")
    return features, rows
