"""The on-disk embedding cache: reuse features of unchanged files, survive interruption.

Layout under ``<cache root>/embeddings/<model>-<key>/``, where the cache root is ``FOLDER/.imgcluster``
or, under a root shared by many folders, ``<root>/folders/<name>-<hash of the folder's path>``: ``config.json`` says how the features
were made; ``shards/<seq>.safetensors`` each hold a block of features with, in the header, the
(path, size, mtime, ctime, inode, content hash) of every row, the cache it belongs to (``<model>-<key>``) and a checksum.
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
from imgcluster.errors import ImgclusterError
from imgcluster.listing import ImageFile
from imgcluster.userpath import expand_home

# One row of a shard: (path, size, mtime_ns, ctime_ns, inode, sha256 of the file's bytes).
# ctime and inode are None, and the hash "", for rows migrated from format 2, which had neither.
Row = tuple[str, int, int, "int | None", "int | None", str]

FORMAT_VERSION = "3"  # 2: shards name the cache they belong to; 3: rows keyed by ctime and inode too, with a content hash
READABLE_FORMATS = ("2", FORMAT_VERSION)  # format 2 rows are migrated: see EmbeddingCache.open
KEY_FORMAT = "2"  # in the cache folder's name: unchanged by format 3, so a format 2 cache is found and migrated
CACHE_DIRNAME = ".imgcluster"


def shared_cache_root(cache_dir: str | None) -> Path | None:
    """The root many folders may share: ``--cache-dir``, else ``$IMGCLUSTER_CACHE``; None for the default."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("IMGCLUSTER_CACHE"):  # ~ too: an env file or a unit's Environment= leaves it to the program
        return Path(expand_home(os.environ["IMGCLUSTER_CACHE"]))
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


def cache_key(identity: dict[str, Any], dtype: str, compute: str = "float32", runtime: str = "torch") -> str:
    """Names the cache of one backbone, storage dtype, compute precision and runtime.

    Features computed in bfloat16 (CUDA autocast) differ from float32 ones (cosine ~0.998), and
    ONNX Runtime's float32 features from torch's in the last bits, so each gets a cache of its own
    and a run never mixes them. float32 in torch leaves the key as it was before these fields
    existed, so caches written then stay valid.
    """
    fields = {"backbone": identity, "dtype": dtype, "format": KEY_FORMAT}
    if compute != "float32":
        fields["compute"] = compute
    if runtime != "torch":
        fields["runtime"] = runtime
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def embeddings_dir(
    cache_root: Path, model_name: str, identity: dict[str, Any], dtype: str, compute: str = "float32", runtime: str = "torch"
) -> Path:
    """The one place that names a backbone's cache folder, for the run that writes it and for readers."""
    return Path(cache_root) / "embeddings" / f"{model_name}-{cache_key(identity, dtype, compute, runtime)}"


@dataclass
class Entry:
    size: int
    mtime_ns: int
    ctime_ns: int | None  # None: migrated from format 2, which did not record it
    inode: int | None
    sha256: str  # of the file's bytes when embedded; "" when not known (format 2)
    shard: int
    row: int

    def matches(self, file: ImageFile) -> bool:
        """Same size, mtime, ctime and inode, as git's index compares them; a replacement made
        with ``cp -p`` or ``rsync -t`` keeps size and mtime but gets a new ctime (users cannot
        set it back). Format 2 rows, without ctime and inode, fall back on size and mtime."""
        return (
            self.size == file.size
            and self.mtime_ns == file.mtime_ns
            and self.ctime_ns in (None, file.ctime_ns)
            and self.inode in (None, file.inode)
        )


@dataclass
class EmbeddingCache:
    directory: Path
    dtype: str = "float16"
    entries: dict[str, Entry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # shards found damaged and ignored
    writable: bool = True  # False: a read-only cache, read without writing anything (see ``open``)
    _arrays: dict[int, np.ndarray] = field(default_factory=dict)
    _next_seq: int = 0
    _migrated: bool = False  # rows of an older format were read: compaction rewrites them

    @property
    def shard_dir(self) -> Path:
        return self.directory / "shards"

    @classmethod
    def open(cls, directory: Path, dtype: str, description: dict[str, Any], writable: bool = True) -> EmbeddingCache:
        """Load every valid shard; ``description`` is written as ``config.json``.

        A cache that cannot be written (a read-only shared cache) is opened with ``writable``
        False: it is read as it is, damaged shards are reported but stay, and what ``add`` gets
        lives in memory only. Rows of format 2 shards are kept (they match on size and mtime,
        as they did then) and written in the current format by the next compaction.
        """
        if writable and _shards_read_only(directory):
            writable = False
        cache = cls(directory=directory, dtype=dtype, writable=writable)
        if writable:
            cache.shard_dir.mkdir(parents=True, exist_ok=True)
            for stale in [*directory.glob(".*.tmp"), *cache.shard_dir.glob(".*.tmp")]:  # left by a killed writer (we hold the lock)
                stale.unlink(missing_ok=True)
            _describe(directory / "config.json", description)
        dim = (description.get("backbone") or {}).get("feature_dim")
        for path in sorted(cache.shard_dir.glob("*.safetensors")):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            cache._next_seq = max(cache._next_seq, seq + 1)
            try:
                features, rows = read_shard_rows(path, cache=directory.name, dtype=dtype, dim=dim)
            except ShardError as exc:
                cache.problems.append(f"{path.name}: {exc}")
                if writable:
                    path.unlink(missing_ok=True)
                continue
            cache._arrays[seq] = features
            for row, (rel, size, mtime_ns, ctime_ns, inode, sha256) in enumerate(rows):
                cache.entries[rel] = Entry(size, mtime_ns, ctime_ns, inode, sha256, seq, row)
                cache._migrated |= ctime_ns is None
        return cache

    def lookup(self, file: ImageFile) -> np.ndarray | None:
        entry = self.entries.get(file.rel)
        if entry is None or not entry.matches(file):
            return None
        return self._arrays[entry.shard][entry.row]

    def recorded_hash(self, rel: str) -> str:
        """The content hash the cache holds for ``rel`` ("" if none or unknown), whatever its stat."""
        entry = self.entries.get(rel)
        return entry.sha256 if entry is not None else ""

    def vector(self, rel: str) -> np.ndarray:
        entry = self.entries[rel]
        return self._arrays[entry.shard][entry.row]

    def add(self, files: list[ImageFile], features: np.ndarray, hashes: list[str]) -> None:
        """Persist one block as a new shard; after this returns the block survives any kill.

        ``hashes`` are the SHA-256 of each file's bytes as embedded. A read-only cache keeps the
        block in memory only.
        """
        if not files:
            return
        seq = self._next_seq
        array = np.ascontiguousarray(features, dtype=self.dtype)
        if self.writable:
            rows: list[Row] = [(f.rel, f.size, f.mtime_ns, f.ctime_ns, f.inode, h) for f, h in zip(files, hashes)]
            write_shard(self.shard_dir / f"{seq:08d}.safetensors", array, rows, cache=self.directory.name)
        self._next_seq += 1
        self._arrays[seq] = array
        for row, (f, h) in enumerate(zip(files, hashes)):
            self.entries[f.rel] = Entry(f.size, f.mtime_ns, f.ctime_ns, f.inode, h, seq, row)

    def compact(self, live: list[ImageFile]) -> str | None:
        """Rewrite the rows of ``live`` files as one shard and drop the rest (deleted files).

        Compaction needs room for a second copy of the features. When it cannot be written (a
        full disk) the shards already written stay as they are, valid and used, and the reason
        is returned for a warning instead of failing a run that has everything it needs.
        """
        if not self.writable:
            return None
        rows = [(f, v, self.entries[f.rel].sha256) for f in live if (v := self.lookup(f)) is not None]
        old = sorted(self._arrays)
        if len(old) <= 1 and len(rows) == len(self.entries) and not self._migrated:
            return None
        seq = self._next_seq
        if rows:
            array = np.ascontiguousarray(np.stack([v for _, v, _ in rows]), dtype=self.dtype)
            table: list[Row] = [(f.rel, f.size, f.mtime_ns, f.ctime_ns, f.inode, h) for f, _, h in rows]
            try:
                write_shard(self.shard_dir / f"{seq:08d}.safetensors", array, table, cache=self.directory.name)
            except ImgclusterError as exc:
                return f"could not compact the cache {self.directory} ({exc}); its {len(old)} shards stay valid and are used"
            self._next_seq += 1
            self._arrays[seq] = array
            self.entries = {f.rel: Entry(f.size, f.mtime_ns, f.ctime_ns, f.inode, h, seq, i) for i, (f, _, h) in enumerate(rows)}
        else:
            self.entries = {}
        self._migrated = False
        for old_seq in old:
            (self.shard_dir / f"{old_seq:08d}.safetensors").unlink(missing_ok=True)
            self._arrays.pop(old_seq, None)
        return None


FAILURES_FILE = "failed.json"  # in a backbone's cache folder: files that could not be embedded, as they were then


@dataclass(frozen=True)
class Failure:
    """A file that could not be embedded: not tried again while its size, mtime, ctime and inode stay."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    reason: str
    at: float  # when it failed, seconds since the epoch

    def matches(self, file: ImageFile) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == file.stat_key

    @classmethod
    def of(cls, file: ImageFile, reason: str, at: float) -> Failure:
        return cls(file.size, file.mtime_ns, file.ctime_ns, file.inode, reason, at)


def read_failures(directory: Path) -> dict[str, Failure]:
    """The failures recorded in ``directory``; a missing or damaged record is empty (every file is
    then simply tried again)."""
    try:
        raw = json.loads((Path(directory) / FAILURES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    files = raw.get("files") if isinstance(raw, dict) and raw.get("format") == "1" else None
    if not isinstance(files, dict):
        return {}
    failures: dict[str, Failure] = {}
    for rel, entry in files.items():
        if (
            isinstance(entry, list)
            and len(entry) == 6
            and all(_is_count(v) for v in entry[:4])
            and isinstance(entry[4], str)
            and isinstance(entry[5], (int, float))
        ):
            failures[rel] = Failure(entry[0], entry[1], entry[2], entry[3], entry[4], float(entry[5]))
    return failures


def write_failures(directory: Path, failures: dict[str, Failure]) -> None:
    """Replace the record atomically (a killed run leaves the old one or the new one); none when empty."""
    path = Path(directory) / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)
        return
    files = {rel: [f.size, f.mtime_ns, f.ctime_ns, f.inode, f.reason, f.at] for rel, f in sorted(failures.items())}
    atomic_write_text(path, json.dumps({"format": "1", "files": files}, indent=1) + "\n")


def _describe(path: Path, description: dict[str, Any]) -> None:
    """Write the cache's ``config.json`` when its text changes, and only then: a cached rerun on a
    full disk failed here, before reading the features it had. A rerun with other run options
    (``embed``: workers, batch size) that cannot rewrite it keeps the old one: the backbone it
    records, which later runs read (:mod:`imgcluster.identity`), is still this cache's."""
    text = json.dumps(description, indent=2, sort_keys=True, default=str) + "\n"
    try:
        before = path.read_text(encoding="utf-8")
    except (OSError, ValueError):  # missing or unreadable: written below
        before = None
    if before == text:
        return
    try:
        atomic_write_text(path, text)
    except ImgclusterError:
        if before is None or not _same_but_options(before, text):
            raise


def _same_but_options(before: str, after: str) -> bool:
    """Whether two ``config.json`` texts differ at most in the run's options (``embed``)."""
    try:
        old, new = json.loads(before), json.loads(after)
    except (ValueError, RecursionError):
        return False
    return isinstance(old, dict) and {k: v for k, v in old.items() if k != "embed"} == {k: v for k, v in new.items() if k != "embed"}


def _shards_read_only(directory: Path) -> bool:
    """The shards folder exists and cannot be written (a cache made read-only folder by folder)."""
    shards = directory / "shards"
    return shards.is_dir() and not os.access(shards, os.W_OK | os.X_OK)


class ShardError(Exception):
    pass


def _digest(array: np.ndarray, rows: str, cache: str) -> str:
    """Covers the features *and* the row table: an edited path or mtime must fail it too."""
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update(b"\0rows\0" + rows.encode("utf-8", "surrogateescape"))
    h.update(b"\0cache\0" + cache.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def write_shard(path: Path, features: np.ndarray, rows: list[Row], cache: str = "") -> None:
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
    """Read and verify one shard: its features and the (path, size, mtime) of each row; any damage
    raises :class:`ShardError` (see :func:`read_shard_rows`)."""
    features, rows = read_shard_rows(path, cache, dtype, dim)
    return features, [(rel, size, mtime_ns) for rel, size, mtime_ns, *_ in rows]


def read_shard_rows(path: Path, cache: str | None = None, dtype: str | None = None, dim: int | None = None) -> tuple[np.ndarray, list[Row]]:
    """Read and verify one shard, with every field of its rows; any damage raises :class:`ShardError`.

    ``cache``, ``dtype`` and ``dim``, when given, must match: features from another backbone's
    cache would otherwise pass every checksum and still be wrong here. A checksum proves only
    that nobody changed the shard by accident, so its contents are checked too: a crafted one
    (rows nested a million deep, NaN features) is refused like a torn one.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            features = handle.get_tensor("features")
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a torn file
        raise ShardError(f"unreadable ({type(exc).__name__})") from None
    if metadata.get("format") not in READABLE_FORMATS:
        raise ShardError(f"format {metadata.get('format')!r}, expected {FORMAT_VERSION}")
    table = metadata.get("rows")
    if not isinstance(table, str):
        raise ShardError("row table missing or damaged")
    try:
        raw = json.loads(table)
    except (ValueError, RecursionError):
        raise ShardError("row table missing or damaged") from None
    rows = _parse_rows(raw, metadata["format"])
    if features.ndim != 2 or features.shape[0] != len(rows):
        raise ShardError("row count does not match the feature block")
    if _digest(features, table, str(metadata.get("cache", ""))) != metadata.get("sha256"):
        raise ShardError("checksum mismatch")
    if cache is not None and metadata.get("cache") != cache:
        raise ShardError(f"belongs to cache {metadata.get('cache')!r} (another backbone or dtype), not {cache!r}")
    if dtype is not None and features.dtype != np.dtype(dtype):
        raise ShardError(f"holds {features.dtype} features, this cache stores {dtype}")
    if dim is not None and features.shape[1] != int(dim):
        raise ShardError(f"holds {features.shape[1]}-d features, this backbone gives {dim}-d")
    if features.dtype.kind != "f" or not np.isfinite(features).all():
        raise ShardError("holds features that are not finite numbers (NaN or infinity)")
    return features, rows


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_rows(raw: object, version: str) -> list[Row]:
    """The row table as typed tuples; anything else in it is damage."""
    width = 3 if version == "2" else 6
    if not isinstance(raw, list):
        raise ShardError("row table damaged")
    rows: list[Row] = []
    for r in raw:
        if not (isinstance(r, list) and len(r) == width and isinstance(r[0], str) and all(_is_count(v) for v in r[1:5])):
            raise ShardError("row table damaged")
        if width == 3:
            rows.append((r[0], r[1], r[2], None, None, ""))
        elif isinstance(r[5], str):
            rows.append((r[0], r[1], r[2], r[3], r[4], r[5]))
        else:
            raise ShardError("row table damaged")
    return rows
