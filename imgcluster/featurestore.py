"""The Ray engine's feature store: parquet shards at a URI (local, ``file://``, ``s3://``, ``gs://``).

Layout (docs/scale.md): ``_imgcluster.json`` says which model made the features (its cache key,
as :func:`imgcluster.cache.cache_key` computes it); ``part-<bucket>/<uuid>.parquet`` hold the rows,
bucketed by the first byte of the SHA-1 of the path, so every copy of a path lands in one bucket
and a reader de-duplicates one bucket at a time; ``_skipped/<uuid>.parquet`` lists files that
could not be embedded, with the reason. Files are never modified or overwritten: a writer adds
new ones (under a temporary name renamed into place where the filesystem can), so a killed job
leaves at worst one torn file, which readers report and ignore. When a path has several rows (a
retried batch, a file changed and embedded again), the row in the newest file wins.

pyarrow is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster.errors import ImgclusterError, literal

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

FORMAT = "imgcluster-features/1"
META_NAME = "_imgcluster.json"
SKIPPED_DIR = "_skipped"
MANIFEST_NAME = "_manifest.parquet"  # a listed prefix, kept for the next run (imgcluster.scale.sources)
PART_PREFIX = "part-"
N_BUCKETS = 256

# (size, mtime_ns, etag): what a row was made from; a rerun re-embeds a path whose file differs.
Stamp = tuple[int, "int | None", "str | None"]
ProblemFn = Callable[[str], None]


@dataclass
class FeatureStoreMeta:
    """``_imgcluster.json``: what made the features; a store holds features of one ``key`` only."""

    model: str
    key: str
    identity: dict[str, Any]
    dim: int
    dtype: str = "float16"
    compute: str = "float32"
    source: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = META_NAME) -> FeatureStoreMeta:
        try:
            raw = json.loads(text)
        except ValueError:
            raise ImgclusterError(f"{where} is damaged (not JSON)") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            found = raw.get("format") if isinstance(raw, dict) else None
            raise ImgclusterError(f"{where} is not an imgcluster feature store description (format {found!r}, expected {FORMAT!r})")
        try:
            meta = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except TypeError as exc:
            raise ImgclusterError(f"{where} is damaged ({exc})") from None
        if not (isinstance(meta.key, str) and isinstance(meta.model, str) and isinstance(meta.dim, int) and meta.dim > 0):
            raise ImgclusterError(f"{where} is damaged (model, key or dim missing)")
        return meta


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a URI; a plain path is a local folder (made absolute)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise ImgclusterError(f"cannot open {uri}: {exc}") from None
    return _bounded(fs, uri), path.rstrip("/") or "/"


# An unreachable object store fails each call within bounded time, rather than in pyarrow's
# defaults: a gs:// call retried for 15 minutes (a SIGTERM waits for it: the signal's handler runs
# when the call returns), an s3:// call made by URI retried up to 10 times (about 100 s against an
# endpoint that accepts and never answers). A gs:// URI's own ``retry_limit_seconds`` wins.
GCS_RETRY_SECONDS = 30
S3_ATTEMPTS = 3


def _bounded(fs: pafs.FileSystem, uri: str) -> pafs.FileSystem:
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.GcsFileSystem) and "retry_limit_seconds=" not in uri.partition("?")[2]:
        options = fs.__reduce__()[1][0]  # the options from_uri resolved, as pickling passes them on
        return pafs.GcsFileSystem(**{**options, "retry_time_limit": datetime.timedelta(seconds=GCS_RETRY_SECONDS)})
    if isinstance(fs, pafs.S3FileSystem):
        return pafs.S3FileSystem(**fs.__reduce__()[1][0], retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS))
    return fs


def bucket_of(path: str) -> int:
    """The bucket a path's rows go to: stable across runs and machines."""
    return hashlib.sha1(path.encode("utf-8", "surrogateescape")).digest()[0]


def _is_local(fs: pafs.FileSystem) -> bool:
    import pyarrow.fs as pafs

    return isinstance(fs, pafs.LocalFileSystem)


def write_parquet_file(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write one parquet file so that it appears complete or not at all where the filesystem allows.

    Local files are written under a hidden temporary name and renamed; object stores make an
    object visible only when its upload completes.
    """
    import pyarrow.parquet as pq

    parent = posixpath.dirname(path)
    fs.create_dir(parent, recursive=True)
    target = posixpath.join(parent, f".{posixpath.basename(path)}.tmp") if _is_local(fs) else path
    try:
        with fs.open_output_stream(target) as out:
            pq.write_table(table, out, compression="zstd", use_dictionary=False)
        if target != path:
            fs.move(target, path)
    except OSError as exc:
        if target != path:
            try:
                fs.delete_file(target)
            except OSError:
                pass
        raise ImgclusterError(f"cannot write {path}: {exc}") from None


def _write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    parent = posixpath.dirname(path)
    fs.create_dir(parent, recursive=True)
    target = posixpath.join(parent, f".{posixpath.basename(path)}.tmp") if _is_local(fs) else path
    try:
        with fs.open_output_stream(target) as out:
            out.write(text.encode("utf-8"))
        if target != path:
            fs.move(target, path)
    except OSError as exc:
        raise ImgclusterError(f"cannot write {path}: {exc}") from None


def _read_text(fs: pafs.FileSystem, path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        with fs.open_input_stream(path) as handle:
            return bytes(handle.read()).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImgclusterError(f"cannot read {path}: {exc}") from None


def _stamp_arrays(n: int, sizes: Sequence[int], mtimes: Sequence[int | None], etags: Sequence[str | None]) -> dict[str, pa.Array]:
    import pyarrow as pa

    if not (len(sizes) == len(mtimes) == len(etags) == n):
        raise ValueError("paths, sizes, mtimes and etags must have one entry per row")
    return {
        "size": pa.array(list(sizes), pa.int64()),
        "mtime_ns": pa.array(list(mtimes), pa.int64()),
        "etag": pa.array(list(etags), pa.string()),
    }


def unstorable(features: np.ndarray, dtype: str = "float16", holder: str = "the store") -> dict[int, str]:
    """The rows of ``features`` that ``holder``, keeping them as ``dtype``, cannot hold, with why: NaN
    or infinity, or a value that ``dtype`` would turn into infinity (float16: beyond 65504), which
    every later read would take for a feature (the local cache refused such a shard as damaged on
    the next run, so the image was embedded again on every run). The store's writer refuses them;
    the embed job and the local cache's embedding loop record them as skipped instead."""
    values = np.asarray(features)
    with np.errstate(over="ignore", invalid="ignore"):
        rows = np.flatnonzero(~np.isfinite(values.astype(dtype)).all(axis=1))
    why = {}
    for row in rows:
        x = np.asarray(values[row], np.float64)
        if not np.isfinite(x).all():
            why[int(row)] = "its features are not finite numbers (NaN or infinity)"
        else:
            why[int(row)] = (
                f"its features reach {np.abs(x).max():.6g}, beyond {np.dtype(dtype).name}'s largest value "
                f"{float(np.finfo(dtype).max):g}, which {holder} would hold as infinity"
            )
    return why


def check_finite(where: str, paths: Sequence[str], features: np.ndarray, what: str = "") -> None:
    """Refuse rows read from a store whose features are NaN or infinite (a store written before the
    writer refused them held features beyond 65504 as infinity): clustering them gives labels that
    mean nothing, without a word. ``what`` says which rows were read (" in the sample")."""
    broken = np.flatnonzero(~np.isfinite(features).all(axis=1)) if len(features) else np.zeros(0, int)
    if broken.size:
        n = f"{broken.size} row" + ("s" if broken.size != 1 else "")
        raise ImgclusterError(
            f"the feature store {where} holds {n} with NaN or infinite features{what} (e.g. {literal(paths[int(broken[0])])}); "
            "embed its source into a new location (a rerun into this one keeps the rows it has)"
        )


def row_schema(dim: int) -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("etag", pa.string()),
            ("feature", pa.list_(pa.float16(), dim)),
        ]
    )


def skipped_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("etag", pa.string()), ("reason", pa.string())]
    )


@dataclass
class FeatureStore:
    """A store opened for writing; picklable, so Ray workers write through it directly."""

    uri: str
    meta: FeatureStoreMeta

    def write(
        self,
        paths: Sequence[str],
        sizes: Sequence[int],
        mtimes: Sequence[int | None],
        etags: Sequence[str | None],
        features: np.ndarray,
    ) -> list[str]:
        """Add rows, one new file per bucket present; returns the files written. Features a float16
        store cannot hold (:func:`unstorable`) are refused, naming the first such path."""
        import pyarrow as pa

        n = len(paths)
        if n == 0:
            return []
        if np.shape(features) != (n, self.meta.dim):
            raise ValueError(f"features of shape {np.shape(features)}, expected ({n}, {self.meta.dim})")
        if problems := unstorable(features):
            row, why = next(iter(problems.items()))
            more = f" (and {len(problems) - 1} other rows)" if len(problems) > 1 else ""
            raise ImgclusterError(f"cannot store the features of {literal(paths[row])}{more} in {self.uri}: {why}")
        array = np.ascontiguousarray(features, dtype=np.float16)
        fs, root = resolve(self.uri)
        stamps = _stamp_arrays(n, sizes, mtimes, etags)
        flat = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1), pa.float16()), self.meta.dim)
        table = pa.table({"path": pa.array(list(paths), pa.string()), **stamps, "feature": flat}, schema=row_schema(self.meta.dim))
        buckets = np.fromiter((bucket_of(p) for p in paths), dtype=np.int64, count=n)
        written = []
        for bucket in np.unique(buckets):
            rows = table.take(pa.array(np.flatnonzero(buckets == bucket)))
            target = posixpath.join(root, f"{PART_PREFIX}{int(bucket):03d}", f"{uuid.uuid4().hex}.parquet")
            write_parquet_file(fs, target, rows)
            written.append(target)
        return written

    def write_skipped(
        self,
        paths: Sequence[str],
        sizes: Sequence[int],
        mtimes: Sequence[int | None],
        etags: Sequence[str | None],
        reasons: Sequence[str],
    ) -> str | None:
        """Record files that could not be embedded (one new file); returns it, or None for no rows."""
        import pyarrow as pa

        n = len(paths)
        if n == 0:
            return None
        if len(reasons) != n:
            raise ValueError("one reason per path")
        fs, root = resolve(self.uri)
        table = pa.table(
            {
                "path": pa.array(list(paths), pa.string()),
                **_stamp_arrays(n, sizes, mtimes, etags),
                "reason": pa.array(list(reasons), pa.string()),
            },
            schema=skipped_schema(),
        )
        target = posixpath.join(root, SKIPPED_DIR, f"{uuid.uuid4().hex}.parquet")
        write_parquet_file(fs, target, table)
        return target


def read_meta(uri: str) -> FeatureStoreMeta:
    """The description of the store at ``uri``; an ImgclusterError when there is none."""
    fs, root = resolve(uri)
    text = _read_text(fs, posixpath.join(root, META_NAME))
    if text is None:
        raise ImgclusterError(f"no imgcluster features at {uri} ({META_NAME} not found)")
    return FeatureStoreMeta.from_json(text, f"{uri}/{META_NAME}")


def open_store(uri: str, meta: FeatureStoreMeta, create: bool = True) -> FeatureStore:
    """Open the store at ``uri`` to add rows made as ``meta`` says, creating it when ``create``.

    A store made by another model, weights, preprocessing or precision (another key) is refused:
    its rows and these would mix. A folder that holds other files and no store is refused too,
    so a mistyped location never fills someone's folder with shards.
    """
    fs, root = resolve(uri)
    text = _read_text(fs, posixpath.join(root, META_NAME))
    if text is not None:
        found = FeatureStoreMeta.from_json(text, f"{uri}/{META_NAME}")
        if found.key != meta.key:
            why = ""
            if found.model == meta.model and found.compute != meta.compute:
                why = f" (computed in {found.compute}; this run computes in {meta.compute})"
            raise ImgclusterError(
                f"{uri} holds features of {found.model} (key {found.key}), not of {meta.model} (key {meta.key}){why}; "
                "write to another location, or delete it first"
            )
        return FeatureStore(uri, found)
    if not create:
        raise ImgclusterError(f"no imgcluster features at {uri} ({META_NAME} not found)")
    _check_new_location(fs, root, uri)
    _write_text(fs, posixpath.join(root, META_NAME), meta.to_json())
    return FeatureStore(uri, meta)


def check_location(uri: str) -> None:
    """Refuse, before any model is built, a location :func:`open_store` would refuse whatever the
    model: a file, or a folder that holds other files and no store (``embed photos --features-out
    photos`` built the model, then said so)."""
    fs, root = resolve(uri)
    if _read_text(fs, posixpath.join(root, META_NAME)) is None:
        _check_new_location(fs, root, uri)


def _check_new_location(fs: pafs.FileSystem, root: str, uri: str) -> None:
    import pyarrow.fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise ImgclusterError(f"{uri} is a file, not a folder for features")
    if info.type == pafs.FileType.Directory:
        others = [i.base_name for i in fs.get_file_info(pafs.FileSelector(root)) if not _ours(i.base_name)]
        if others:
            raise ImgclusterError(f"{uri} is not empty and holds no imgcluster features (it has {others[0]!r}); choose an empty location")


def _ours(name: str) -> bool:
    return name in (META_NAME, SKIPPED_DIR, MANIFEST_NAME) or name.startswith(PART_PREFIX) or name.startswith(".")


@dataclass(frozen=True)
class _Part:
    path: str
    mtime_ns: int  # when the file was written: a newer file's row for a path wins


def _parts(fs: pafs.FileSystem, folder: str) -> list[_Part]:
    """The complete parquet files under ``folder`` (temporary files left by a killed writer excluded), oldest first."""
    import pyarrow.fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=True)):
        if info.type != pafs.FileType.File or info.base_name.startswith(".") or not info.base_name.endswith(".parquet"):
            continue
        found.append(_Part(info.path, int(info.mtime_ns or 0)))
    return sorted(found, key=lambda p: (p.mtime_ns, p.path))


def _bucket_dirs(fs: pafs.FileSystem, root: str) -> list[str]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(PART_PREFIX))


def _read_part(fs: pafs.FileSystem, part: _Part, columns: list[str], schema: pa.Schema, on_problem: ProblemFn | None) -> pa.Table | None:
    """One file's ``columns``, or None (reported) when it is torn or not of this store's schema."""
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(part.path) as handle:
            table = pq.read_table(handle, columns=columns)
        for name in columns:
            if not table.schema.field(name).type.equals(schema.field(name).type):
                raise ValueError(f"column {name} is {table.schema.field(name).type}, expected {schema.field(name).type}")
    except (OSError, ValueError, KeyError) as exc:
        _ignored(part, exc, on_problem)
        return None
    return table


def _ignored(part: _Part, exc: Exception, on_problem: ProblemFn | None) -> None:
    """Report a torn or foreign file that a read skips."""
    if on_problem is not None:
        on_problem(f"{part.path}: unreadable, ignored ({type(exc).__name__}: {exc})")


def _paths_and_features(table: pa.Table, dim: int) -> tuple[list[str], np.ndarray]:
    """A table of rows' ``path`` list and float16 ``feature`` matrix [n, dim]."""
    flat = table.column("feature").combine_chunks().values.to_numpy(zero_copy_only=False)
    return table.column("path").to_pylist(), np.asarray(flat, dtype=np.float16).reshape(table.num_rows, dim)


def _latest_rows(tables: list[tuple[int, pa.Table]]) -> dict[str, tuple[int, int]]:
    """path -> (table number, row) of its newest row; ``tables`` oldest first."""
    latest: dict[str, tuple[int, int]] = {}
    for t, table in tables:
        for row, path in enumerate(table.column("path").to_pylist()):
            latest[path] = (t, row)
    return latest


def _stamps(
    root_uri: str, folder_of: Callable[[pafs.FileSystem, str], list[str]], schema: pa.Schema, extra: list[str], on_problem: ProblemFn | None
) -> dict[str, tuple]:
    fs, root = resolve(root_uri)
    columns = ["path", "size", "mtime_ns", "etag", *extra]
    out: dict[str, tuple] = {}
    for folder in folder_of(fs, root):
        tables = [
            (i, t) for i, part in enumerate(_parts(fs, folder)) if (t := _read_part(fs, part, columns, schema, on_problem)) is not None
        ]
        values = {i: [t.column(c).to_pylist() for c in columns[1:]] for i, t in tables}
        for path, (t, row) in _latest_rows(tables).items():
            out[path] = tuple(column[row] for column in values[t])
    return out


def done_rows(uri: str, on_problem: ProblemFn | None = None) -> dict[str, Stamp]:
    """path -> (size, mtime_ns, etag) of every embedded row (newest copy), for resuming."""
    meta = read_meta(uri)
    return _stamps(uri, _bucket_dirs, row_schema(meta.dim), [], on_problem)


def bucket_stamps(uri: str, bucket: int, on_problem: ProblemFn | None = None) -> dict[str, Stamp]:
    """:func:`done_rows` of one bucket: what a resume compares one bucket of a listing with,
    reading only the identity columns of that bucket's files (never the features)."""
    meta = read_meta(uri)

    def one_bucket(fs: pafs.FileSystem, root: str) -> list[str]:
        return [posixpath.join(root, f"{PART_PREFIX}{bucket:03d}")]

    return _stamps(uri, one_bucket, row_schema(meta.dim), [], on_problem)


def skipped_rows(uri: str, on_problem: ProblemFn | None = None) -> dict[str, tuple[int, int | None, str | None, str]]:
    """path -> (size, mtime_ns, etag, reason) of every file recorded as not embeddable (newest record)."""
    read_meta(uri)

    def skipped_dir(fs: pafs.FileSystem, root: str) -> list[str]:
        return [posixpath.join(root, SKIPPED_DIR)]

    return _stamps(uri, skipped_dir, skipped_schema(), ["reason"], on_problem)


def _bucket_rows(fs: pafs.FileSystem, folder: str, dim: int, on_problem: ProblemFn | None) -> Iterator[tuple[list[str], np.ndarray]]:
    """One bucket's de-duplicated rows, file by file (only the paths of the whole bucket are held)."""
    schema = row_schema(dim)
    parts = _parts(fs, folder)
    tables = [(i, t) for i, part in enumerate(parts) if (t := _read_part(fs, part, ["path"], schema, on_problem)) is not None]
    keep: dict[int, list[int]] = {}
    for t, row in _latest_rows(tables).values():
        keep.setdefault(t, []).append(row)
    for t in sorted(keep):
        table = _read_part(fs, parts[t], ["path", "feature"], schema, on_problem)
        if table is None:  # became unreadable between the two reads
            continue
        rows = sorted(keep[t])
        yield _paths_and_features(table.take(rows), dim)


def iter_batches(uri: str, batch_rows: int = 65536, on_problem: ProblemFn | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """Every row once (newest copy of each path), as (paths, float16 features [n, dim]) of at most ``batch_rows``.

    The order is fixed by the files present: bucket by bucket, oldest file first.
    """
    meta = read_meta(uri)
    fs, root = resolve(uri)
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    held = 0
    for folder in _bucket_dirs(fs, root):
        for p, f in _bucket_rows(fs, folder, meta.dim, on_problem):
            start = 0
            while start < len(p):
                take = min(batch_rows - held, len(p) - start)
                paths.extend(p[start : start + take])
                blocks.append(f[start : start + take])
                held += take
                start += take
                if held == batch_rows:
                    yield paths, np.concatenate(blocks)
                    paths, blocks, held = [], [], 0
    if held:
        yield paths, np.concatenate(blocks)


def count_rows(uri: str, on_problem: ProblemFn | None = None) -> int:
    """Distinct paths in the store."""
    return len(done_rows(uri, on_problem))


def read_features(uri: str, sample: int | None = None, seed: int = 0, on_problem: ProblemFn | None = None) -> tuple[list[str], np.ndarray]:
    """All rows, or a seeded uniform sample of ``sample`` of them, as (paths, float32 features)."""
    meta = read_meta(uri)
    chosen: np.ndarray | None = None
    if sample is not None:
        total = count_rows(uri, on_problem)
        if sample < total:
            chosen = np.sort(np.random.default_rng(seed).choice(total, size=sample, replace=False))
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    offset = 0
    for p, f in iter_batches(uri, on_problem=on_problem):
        if chosen is None:
            paths.extend(p)
            blocks.append(f.astype(np.float32))
        else:
            lo, hi = np.searchsorted(chosen, [offset, offset + len(p)])
            local = chosen[lo:hi] - offset
            paths.extend(p[i] for i in local)
            blocks.append(f[local].astype(np.float32))
        offset += len(p)
    features = np.concatenate(blocks) if blocks else np.zeros((0, meta.dim), np.float32)
    return paths, features


def bucket_folders(uri: str) -> list[str]:
    """The store's bucket folders, in the order :func:`iter_batches` reads them: the unit a parallel pass splits the work by."""
    fs, root = resolve(uri)
    return _bucket_dirs(fs, root)


def iter_bucket(uri: str, folder: str, on_problem: ProblemFn | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """One bucket folder's rows (newest copy of each path), file by file, in :func:`iter_batches`'s order."""
    meta = read_meta(uri)
    fs, _ = resolve(uri)
    yield from _bucket_rows(fs, folder, meta.dim, on_problem)


# ---- reading a part of the store: the sample's passes (imgcluster.scale.sample) ---------------
def footer_rows(uri: str, folder: str, on_problem: ProblemFn | None = None) -> int:
    """Rows the complete files of one bucket folder hold by their parquet footers: no data read
    (a path written twice counts twice, so this is at least the bucket's distinct rows)."""
    import pyarrow.parquet as pq

    fs, _ = resolve(uri)
    total = 0
    for part in _parts(fs, folder):
        try:
            with fs.open_input_file(part.path) as handle:
                total += pq.read_metadata(handle).num_rows
        except (OSError, ValueError) as exc:
            _ignored(part, exc, on_problem)
    return total


def select_bucket_rows(
    uri: str, folder: str, dim: int, keep: Callable[[list[str]], np.ndarray], on_problem: ProblemFn | None = None
) -> tuple[int, list[str], np.ndarray]:
    """(distinct rows of the bucket, paths and float16 features of those ``keep`` selects).

    ``keep(paths)`` gets the bucket's distinct paths and returns a boolean mask. Only the path
    column is read whole; features are read from the files that hold a kept row (newest copy of
    each path, as :func:`iter_batches`), and in them only the row groups that do.
    """
    schema = row_schema(dim)
    fs, _ = resolve(uri)
    parts = _parts(fs, folder)
    tables = [(i, t) for i, part in enumerate(parts) if (t := _read_part(fs, part, ["path"], schema, on_problem)) is not None]
    latest = _latest_rows(tables)
    wanted: dict[int, list[int]] = {}
    names = list(latest)
    for name, kept in zip(names, np.asarray(keep(names), dtype=bool) if names else []):
        if kept:
            t, row = latest[name]
            wanted.setdefault(t, []).append(row)
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    for t in sorted(wanted):
        found = _read_rows(fs, parts[t], sorted(wanted[t]), dim, schema, on_problem)
        if found is not None:  # became unreadable between the two reads
            paths.extend(found[0])
            blocks.append(found[1])
    features = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float16)
    return len(latest), paths, features


def _read_rows(
    fs: pafs.FileSystem, part: _Part, rows: list[int], dim: int, schema: pa.Schema, on_problem: ProblemFn | None
) -> tuple[list[str], np.ndarray] | None:
    """Paths and features of ``rows`` (ascending) of one file, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(part.path) as handle:
            file = pq.ParquetFile(handle)
            sizes = [file.metadata.row_group(g).num_rows for g in range(file.metadata.num_row_groups)]
            ends = np.cumsum(sizes)
            groups = np.unique(np.searchsorted(ends, rows, side="right"))
            table = file.read_row_groups([int(g) for g in groups], columns=["path", "feature"])
        if not table.schema.field("feature").type.equals(schema.field("feature").type):
            raise ValueError(f"column feature is {table.schema.field('feature').type}, expected {schema.field('feature').type}")
    except (OSError, ValueError, KeyError, IndexError) as exc:
        _ignored(part, exc, on_problem)
        return None
    starts = ends - np.asarray(sizes)
    offset = np.cumsum([0] + [sizes[g] for g in groups[:-1]])  # where each read group begins in ``table``
    local = [int(offset[np.searchsorted(groups, g)] + r - starts[g]) for r, g in zip(rows, np.searchsorted(ends, rows, side="right"))]
    return _paths_and_features(table.take(local), dim)
