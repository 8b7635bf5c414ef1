"""What a Ray job embeds: a local folder, an ``s3://``/``gs://`` prefix, or a manifest of files.

Every source becomes one table of rows ``path, size, mtime_ns, etag`` (a *manifest*). A folder's
paths are relative to it (as in the single-machine cache); an object's path is its full URI.
A prefix is listed with one recursive ``pyarrow.fs`` listing (S3 and GCS page through it on the
store's side, 1,000 keys a request); the listing is written into the features location as
``_manifest.parquet``, so a later run can take it as ``manifest`` and list nothing. Credentials
come from the environment, as ``pyarrow.fs`` reads them (AWS_*, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import functools
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from imgcluster.errors import ParameterError
from imgcluster.featurestore import MANIFEST_NAME, resolve, write_parquet_file
from imgcluster.listing import IMAGE_EXTENSIONS, list_images

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

OBJECT_SCHEMES = ("s3://", "gs://", "gcs://")


def manifest_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("etag", pa.string())])


@dataclass(frozen=True)
class Source:
    """Where the files are: ``uri`` as given, its filesystem root, and whether paths are relative to it."""

    uri: str
    root: str  # the folder or prefix, as the filesystem names it
    relative: bool  # True for a local folder: paths in the manifest are relative to ``root``

    def locate(self, path: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem and path to open a manifest row's file with: the source's own for its
        files (with the options its URI carries), another one for a manifest's full URIs elsewhere."""
        fs, root = _filesystem(self.uri)
        if "://" not in path:
            return fs, posixpath.join(root, path)
        scheme, _, rest = path.partition("://")
        if self.uri.startswith(f"{scheme}://") and rest.startswith(root.rstrip("/") + "/"):
            return fs, rest
        return _filesystem(f"{scheme}://{rest.split('/', 1)[0]}")[0], rest


@functools.lru_cache(maxsize=16)
def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """One filesystem client per location and process: an S3 client costs a connection and a credentials lookup."""
    return resolve(uri)


def open_source(source: str) -> Source:
    """Check that ``source`` exists and say how its paths are written."""
    import pyarrow.fs as pafs

    fs, root = resolve(source)
    info = fs.get_file_info(root)
    is_object_store = source.startswith(OBJECT_SCHEMES)
    if info.type == pafs.FileType.NotFound and not is_object_store:  # an object prefix is no object of its own
        raise ParameterError(f"{{source}} {source} does not exist")
    if info.type == pafs.FileType.File:
        raise ParameterError(f"{{source}} {source} is a file; give a folder, a prefix, or a list of files as {{manifest}}")
    return Source(source, root, relative=not is_object_store)


def list_source(source: Source, follow_symlinks: bool = False) -> pa.Table:
    """The manifest of every image under ``source`` (images as the single-machine listing finds them)."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    if source.relative:
        files = list_images(Path(source.root), follow_symlinks=follow_symlinks)
        columns = {
            "path": [f.rel for f in files],
            "size": [f.size for f in files],
            "mtime_ns": [f.mtime_ns for f in files],
            "etag": [None] * len(files),
        }
        return pa.table(columns, schema=manifest_schema())
    fs, root = resolve(source.uri)
    scheme = source.uri.split("://", 1)[0]
    paths, sizes, mtimes = [], [], []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File or not _is_image(posixpath.relpath(info.path, root)):
            continue
        paths.append(f"{scheme}://{info.path}")
        sizes.append(info.size)
        mtimes.append(info.mtime_ns)
    order = sorted(range(len(paths)), key=paths.__getitem__)
    columns = {"path": [paths[i] for i in order], "size": [sizes[i] for i in order], "mtime_ns": [mtimes[i] for i in order]}
    return pa.table({**columns, "etag": [None] * len(order)}, schema=manifest_schema())


def _is_image(rel: str) -> bool:
    """An image name that no hidden folder holds, as the folder listing decides."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and not any(p.startswith(".") for p in parts) and PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS


def read_manifest(uri: str) -> pa.Table:
    """A manifest parquet: ``path`` and ``size``, with ``mtime_ns`` or ``etag`` (or both) to tell versions apart."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    try:
        with fs.open_input_file(path) as handle:
            table = pq.read_table(handle)
    except (OSError, ValueError) as exc:
        raise ParameterError(f"cannot read the {{manifest}} {uri}: {exc}") from None
    names = set(table.schema.names)
    if not {"path", "size"} <= names or not names & {"mtime_ns", "etag"}:
        raise ParameterError(f"the {{manifest}} {uri} needs the columns path, size and mtime_ns or etag; it has {', '.join(sorted(names))}")
    n = table.num_rows
    columns = {}
    for field in manifest_schema():
        column = table.column(field.name) if field.name in names else pa.nulls(n, field.type)
        try:
            columns[field.name] = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ParameterError(f"the {{manifest}} {uri}: column {field.name} is {column.type}, expected {field.type}") from None
    if columns["path"].null_count or columns["size"].null_count:
        raise ParameterError(f"the {{manifest}} {uri} has rows without a path or size")
    return pa.table(columns, schema=manifest_schema())


def write_manifest(table: pa.Table, features_uri: str) -> str:
    """Keep a prefix's listing beside its features; returns where."""
    fs, root = resolve(features_uri)
    write_parquet_file(fs, posixpath.join(root, MANIFEST_NAME), table)
    return features_uri.rstrip("/") + "/" + MANIFEST_NAME
