"""What a Ray job embeds: a local folder, an ``s3://``/``gs://`` prefix, or a manifest of files.

Every source becomes rows ``path, size, mtime_ns, etag`` (a *manifest*). A folder's paths are
relative to it (as in the single-machine cache); an object's path is its full URI.

A large prefix is never listed row by row in one process. Its top levels are listed one folder
at a time (breadth first until there are enough sub-prefixes or the tree ends): in this process
by :func:`split_listing` for a small source, which returns *units* (a folder's own files, or a
sub-prefix listed recursively), and in Ray tasks by :func:`list_level` for a large one, which
returns a level's files as blocks and its sub-folders' names. :func:`list_unit` lists one unit
in blocks of at most :data:`LIST_BLOCK_ROWS` rows; the job keeps each block as a part of
``_manifest.parquet/`` in the features location, so a later run can take it as ``manifest`` and
list nothing. A folder is read as a stream of directory entries; an ``s3://`` prefix a page of
1,000 keys at a time (:mod:`imgcluster.scale.s3_pages`), so a flat prefix is never held whole and
a first look can stop partway; a ``gs://`` prefix through ``pyarrow.fs``, which returns a level
whole (so it is listed in Ray tasks only). Linked folders in a local source are left by every
piece to one last walk (:func:`list_links`), as the single-machine listing walks them after every
real folder. Credentials come from the environment, as ``pyarrow.fs`` and boto3 read them
(AWS_*, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.featurestore import MANIFEST_NAME, resolve, write_parquet_file
from imgcluster.listing import IMAGE_EXTENSIONS, OUTPUT_MARKER, list_images, list_linked
from imgcluster.scale import s3_pages

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

OBJECT_SCHEMES = ("s3://", "gs://", "gcs://")
LIST_BLOCK_ROWS = 65536  # rows per listing block (and per kept manifest part): about 13 MB of paths
NO_MTIME = -1  # mtime_ns of a row without one (an object listed by etag), in Ray batches, which hold no nulls
INCOMPLETE_MARK = "_incomplete"  # in a kept manifest folder while its listing runs; readers refuse it


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
    try:
        info = fs.get_file_info(root)
    except OSError as exc:  # an unreachable or unnamed bucket ("s3://"): one line, as resolve says it, not an unexpected error
        raise ImgclusterError(f"cannot open {source}: {_reason(exc)}") from None
    is_object_store = source.startswith(OBJECT_SCHEMES)
    if info.type == pafs.FileType.NotFound and not is_object_store:  # an object prefix is no object of its own
        raise ParameterError(f"{{source}} {source} does not exist")
    if info.type == pafs.FileType.File:
        raise ParameterError(f"{{source}} {source} is a file; give a folder, a prefix, or a list of files as {{manifest}}")
    return Source(source, root, relative=not is_object_store)


def _reason(exc: OSError) -> str:
    """A storage client's message without the GCS client's trailing metadata (it repeats the message)."""
    return str(exc).split(" error_info={", 1)[0]


@dataclass(frozen=True)
class Unit:
    """A piece of a listing: the files directly in ``prefix`` (relative to the source's root, "" for
    the root), or with ``recursive`` everything under it."""

    prefix: str
    recursive: bool


@dataclass
class Split:
    """The top of a source's tree: its units, the image files seen in the levels listed, whether
    the tree ended there (every unit is one folder's own files), and the linked folders met."""

    units: list[Unit]
    files_seen: int
    complete: bool
    links: list[str] = dataclasses.field(default_factory=list)  # linked folders met in the levels listed: see list_links


def split_listing(
    source: Source,
    target: int,
    follow_symlinks: bool = False,
    max_files: int | None = None,
    max_level: int | None = None,
    outside: list[str] | None = None,
) -> Split:
    """List the top levels of ``source`` breadth first, one folder at a time, until at least
    ``target`` sub-prefixes wait or the tree ends; each listed folder with images is a unit, each
    waiting sub-prefix a recursive one. Holds one folder's sub-folder names and the waiting ones,
    never its files. The look stops partway, as soon as more than ``max_files`` images were seen
    or one level holds more than ``max_level`` entries (a flat prefix): that level then becomes a
    recursive unit of its own and the split is not complete. ``outside`` takes the links the
    levels listed left out because they lead outside the folder (the recursive units' are
    :func:`list_unit`'s to count)."""
    units: list[Unit] = []
    links: list[str] = []
    waiting = [""]
    seen = 0
    while waiting and len(waiting) < target:
        prefix = waiting.pop(0)
        files, entries, folders = 0, 0, []
        for entry in _level_entries(source, prefix, follow_symlinks, stat=False, outside=outside):
            entries += 1
            if isinstance(entry, Folder):
                folders.append(entry)
            else:
                files += 1
            if (max_files is not None and seen + files > max_files) or (max_level is not None and entries > max_level):
                units.append(Unit(prefix, recursive=True))  # given up: the level and all below it, listed elsewhere
                return Split([*units, *(Unit(p, recursive=True) for p in waiting)], seen + files, False, links)
        seen += files
        if files:
            units.append(Unit(prefix, recursive=False))
        for folder in sorted(folders, key=lambda f: f.prefix):
            (links if folder.linked else waiting).append(folder.prefix)  # a linked folder is listed last, as list_images does
    units.extend(Unit(prefix, recursive=True) for prefix in waiting)
    return Split(units, seen, not any(u.recursive for u in units), links)


@dataclass(frozen=True)
class Folder:
    """A sub-folder met in a level's listing: its prefix, and whether a link leads to it."""

    prefix: str
    linked: bool


FileRow = tuple[str, int, int | None]  # a manifest row: path, size, mtime_ns


@dataclass(frozen=True)
class LeftOut:
    """The symbolic links a listing (or a piece of one) left out because they lead outside the
    folder: how many, and the first in the single-machine walk's order (depth first, by name), what
    :func:`imgcluster.preflight.outside_links` says of them. A piece returns this, not the links:
    a folder of a million links would otherwise be a million names sent to the driver."""

    count: int = 0
    first: str | None = None

    @classmethod
    def of(cls, links: list[str]) -> LeftOut:
        return cls(len(links), min(links, key=_walk_order)) if links else cls()

    def __add__(self, other: LeftOut) -> LeftOut:
        firsts = [f for f in (self.first, other.first) if f is not None]
        return LeftOut(self.count + other.count, min(firsts, key=_walk_order) if firsts else None)


def _walk_order(rel: str) -> tuple[tuple[str, ...], str]:
    """The order a depth-first walk by name meets paths in: a folder's own entries before those below it."""
    parts = rel.split("/")
    return tuple(parts[:-1]), parts[-1]


def _level_entries(
    source: Source, prefix: str, follow_symlinks: bool, stat: bool = True, outside: list[str] | None = None
) -> Iterator[Folder | FileRow]:
    """The sub-folders and image files directly in ``prefix`` (sizes and mtimes only with ``stat``;
    the links left out, because they lead outside the folder, appended to ``outside``).
    A local folder is streamed, never sorted whole, and so is an s3:// level (a page at a time);
    a gs:// level comes whole from pyarrow (one FileInfo per object)."""
    if source.relative:
        folder = Path(source.root, prefix)
        try:
            entries = os.scandir(folder)
        except OSError:
            return  # the unit's own listing (list_images) says nothing either: as the single-machine listing
        with entries:
            for entry in entries:
                rel = posixpath.join(prefix, entry.name)
                try:
                    if entry.is_symlink() and not _link_followed(source, Path(entry.path), follow_symlinks):
                        if outside is not None:
                            outside.append(rel)
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        if not entry.name.startswith(".") and not Path(entry.path, OUTPUT_MARKER).exists():
                            yield Folder(rel, entry.is_symlink())
                    elif entry.is_file(follow_symlinks=True) and _is_image(rel):
                        st = entry.stat(follow_symlinks=True) if stat else None
                        yield (rel, st.st_size, st.st_mtime_ns) if st is not None else (rel, 0, None)
                except (OSError, RuntimeError):
                    continue
        return
    yield from _object_entries(source, prefix, recursive=False)


def list_level(
    source: Source, prefix: str, follow_symlinks: bool, manifest_uri: str | None, name: str
) -> Iterator[pa.Table | tuple[list[Folder], LeftOut]]:
    """A Ray task's share of :func:`split_listing`: the files directly in ``prefix`` in blocks
    (each kept as manifest part ``{name}-{n}`` when ``manifest_uri`` is given), then, last, its
    sub-folders and the links it left out. The caller keeps the blocks as references and reads only the last item."""
    folders: list[Folder] = []
    outside: list[str] = []

    def files() -> Iterator[FileRow]:
        for entry in _level_entries(source, prefix, follow_symlinks, outside=outside):
            if isinstance(entry, Folder):
                folders.append(entry)
            else:
                yield entry

    for n, block in enumerate(_blocks(files())):
        if manifest_uri is not None:
            write_manifest_part(manifest_uri, f"{name}-{n:06d}", block)
        yield block
    yield sorted(folders, key=lambda f: f.prefix), LeftOut.of(outside)


def _link_followed(source: Source, path: Path, follow_symlinks: bool) -> bool:
    """As list_images decides: a link is followed when it stays inside the folder, or when asked."""
    if follow_symlinks:
        return True
    real_root = Path(source.root).resolve()
    target = path.resolve()
    return target == real_root or real_root in target.parents


def _reached_directly(source: Source, link: Path) -> bool:
    """Whether list_images's walk of real folders visits the folder a path leads to: inside the
    root, through no hidden folder and no folder imgcluster wrote. A listing in pieces asks this
    in place of the set of folders one walk keeps (see :func:`imgcluster.listing.list_linked`)."""
    real_root = Path(source.root).resolve()
    try:
        target = link.resolve(strict=True)
        parts = target.relative_to(real_root).parts
    except (OSError, RuntimeError, ValueError):
        return False  # outside the root (followed only when asked) or broken: the link's own unit decides
    folder = real_root
    for part in parts:
        folder = folder / part
        if part.startswith(".") or (folder / OUTPUT_MARKER).exists():
            return False
    return True


def list_unit(
    source: Source, unit: Unit, follow_symlinks: bool = False, links: list[str] | None = None, outside: list[str] | None = None
) -> Iterator[pa.Table]:
    """One unit's images (as the single-machine listing finds them) in blocks of at most
    :data:`LIST_BLOCK_ROWS` rows, in no order across blocks. In a local folder, ``links`` takes
    the linked folders a recursive unit meets, left for :func:`list_links`; without it they are
    walked here (right for the whole source, unit "", only); ``outside`` takes the links a
    recursive unit left out because they lead outside the folder (a folder's own files, a unit
    :func:`split_listing` made, had theirs counted there)."""
    if source.relative:
        yield from _blocks(_folder_rows(source, unit, follow_symlinks, links, outside))
        return
    yield from _blocks(e for e in _object_entries(source, unit.prefix, unit.recursive) if not isinstance(e, Folder))


def list_links(
    source: Source, links: list[str], follow_symlinks: bool = False, limit: int | None = None, outside: list[str] | None = None
) -> Iterator[pa.Table]:
    """The images reached through the linked folders ``links`` (relative to the source's root)
    that the pieces of a listing met, as the single-machine listing finds them after every real
    folder: in the order its walk meets the links, each folder once, none that the real folders'
    walk visits (links in the linked folders are followed in turn). With ``limit``, the walk stops
    soon after finding more than that many."""
    if not links:
        return
    order = sorted(links, key=lambda rel: (tuple(rel.split("/")[:-1]), rel.rsplit("/", 1)[-1]))  # the walk's: depth first, by name
    root = Path(source.root)
    reached = functools.partial(_reached_directly, source)
    found = list_linked(root, [(rel, root / rel) for rel in order], follow_symlinks, reached, limit, outside)
    yield from _blocks((f.rel, f.size, f.mtime_ns) for f in found)


def pages_listing(source: Source) -> bool:
    """Whether an object prefix is listed a page at a time (s3://, through boto3's paginator): a
    listing can then stop partway, and no process holds more than a page of a flat prefix. pyarrow
    returns a level whole (``gs://``)."""
    return source.uri.startswith("s3://")


def _object_entries(source: Source, prefix: str, recursive: bool) -> Iterator[Folder | FileRow]:
    """The image objects under ``prefix`` (all of them, or with their sub-folders, those directly in it)."""
    fs, root = _filesystem(source.uri)
    where = posixpath.join(root, prefix) if prefix else root
    if pages_listing(source):
        entries = s3_pages.entries(_s3_client(source.uri), where, recursive, f"cannot list {source.uri}")
    else:
        entries = _pyarrow_entries(fs, where, recursive, source.uri)
    scheme = source.uri.split("://", 1)[0]
    for key, size, mtime_ns in entries:
        rel = posixpath.relpath(key.rstrip("/"), root)
        if key.endswith("/"):
            if not posixpath.basename(rel).startswith("."):
                yield Folder(rel, False)
        elif _is_image(rel):
            yield f"{scheme}://{key}", size, mtime_ns


def _pyarrow_entries(fs: pafs.FileSystem, where: str, recursive: bool, uri: str) -> Iterator[tuple[str, int, int | None]]:
    """pyarrow's listing of ``where`` (held whole): files as (path, size, mtime_ns), folders as ("path/", 0, None)."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(where, recursive=recursive, allow_not_found=True))
    except OSError as exc:  # an unreachable store, or no bucket named ("s3://" lists the account's buckets)
        raise ImgclusterError(f"cannot list {uri}: {_reason(exc)}") from None
    for info in infos:
        if info.type == pafs.FileType.Directory and not recursive:
            yield info.path + "/", 0, None
        elif info.type == pafs.FileType.File:
            yield info.path, info.size, info.mtime_ns


@functools.lru_cache(maxsize=16)
def _s3_client(uri: str) -> Any:
    """One boto3 client per location and process, set up as pyarrow's filesystem for ``uri`` is."""
    return s3_pages.client(_filesystem(uri)[0])


def _folder_rows(
    source: Source, unit: Unit, follow_symlinks: bool, links: list[str] | None, outside: list[str] | None
) -> Iterator[tuple[str, int, int | None]]:
    folder = Path(source.root, unit.prefix)
    if unit.recursive:
        base = f"{unit.prefix}/" if unit.prefix else ""
        met: list[tuple[str, Path]] | None = [] if links is not None else None
        left: list[str] = []
        for f in list_images(folder, follow_symlinks=follow_symlinks, within=Path(source.root), links=met, outside=left):
            yield base + f.rel, f.size, f.mtime_ns
        if links is not None and met is not None:
            links.extend(base + rel for rel, _ in met)
        if outside is not None:
            outside.extend(base + rel for rel in left)
        return
    for entry in _level_entries(source, unit.prefix, follow_symlinks):
        if not isinstance(entry, Folder):
            yield entry


def _blocks(rows: Iterator[tuple[str, int, int | None]]) -> Iterator[pa.Table]:
    import pyarrow as pa

    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int | None] = []

    def block() -> pa.Table:
        return pa.table({"path": paths, "size": sizes, "mtime_ns": mtimes, "etag": [None] * len(paths)}, schema=manifest_schema())

    for path, size, mtime in rows:
        paths.append(path)
        sizes.append(size)
        mtimes.append(mtime)
        if len(paths) == LIST_BLOCK_ROWS:
            yield block()
            paths, sizes, mtimes = [], [], []
    if paths:
        yield block()


def list_source(source: Source, follow_symlinks: bool = False) -> pa.Table:
    """The whole manifest of ``source`` in one table, sorted by path: for small sources and tests
    (a Ray job lists by :func:`split_listing` and :func:`list_unit` instead)."""
    import pyarrow as pa

    table = pa.concat_tables([*list_unit(source, Unit("", recursive=True), follow_symlinks), manifest_schema().empty_table()])
    return table.sort_by("path")


def _is_image(rel: str) -> bool:
    """An image name that no hidden folder holds, as the folder listing decides."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and not any(p.startswith(".") for p in parts) and PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS


def manifest_files(uri: str) -> list[str]:
    """The parquet files of a manifest: the file itself, or a folder's parts (names starting with
    "." or "_" left out, as pyarrow's datasets do). A folder a listing is still writing is refused."""
    import pyarrow.fs as pafs

    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.NotFound:
        raise ParameterError(f"cannot read the {{manifest}} {uri}: it does not exist")
    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=False)) if i.type == pafs.FileType.File]
    if any(i.base_name == INCOMPLETE_MARK for i in infos):
        raise ParameterError(f"the {{manifest}} {uri} is incomplete: the listing that wrote it was stopped; run without it to list again")
    parts = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and i.base_name[0] not in "._"
    )
    if not parts:
        raise ParameterError(f"the {{manifest}} {uri} holds no parquet files")
    return parts


def manifest_rows(uri: str) -> int:
    """A manifest's row count, from the parquet footers only, which are checked on the way: the
    columns a manifest needs, and one schema for all its parts (a Ray Dataset of parts that
    disagree fails in Ray's own words)."""
    import pyarrow.parquet as pq

    fs, _ = resolve(uri)
    total = 0
    first: tuple[str, pa.Schema] | None = None
    for path in manifest_files(uri):
        try:
            with fs.open_input_file(path) as handle:
                footer = pq.ParquetFile(handle).metadata
        except (OSError, ValueError) as exc:
            raise ParameterError(f"cannot read the {{manifest}} {uri}: {exc}") from None
        schema = footer.schema.to_arrow_schema()
        _check_columns(set(schema.names), uri)
        if first is None:
            first = (path, schema)
        elif not schema.equals(first[1]):
            raise ParameterError(
                f"the {{manifest}} {uri}: its parts have different columns or types ({posixpath.basename(first[0])}: "
                f"{_describe(first[1])}; {posixpath.basename(path)}: {_describe(schema)})"
            )
        total += footer.num_rows
    return total


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)


def _check_columns(names: set[str], uri: str) -> None:
    if not {"path", "size"} <= names or not names & {"mtime_ns", "etag"}:
        raise ParameterError(f"the {{manifest}} {uri} needs the columns path, size and mtime_ns or etag; it has {', '.join(sorted(names))}")


def read_manifest(uri: str) -> pa.Table:
    """A whole manifest in this process (small ones: a Ray job reads a large one in tasks, :func:`manifest_blocks`)."""
    import pyarrow as pa

    return pa.concat_tables([manifest_schema().empty_table(), *(b for path in manifest_files(uri) for b in manifest_blocks(uri, path))])


def manifest_blocks(uri: str, path: str) -> Iterator[pa.Table]:
    """One parquet file of the manifest at ``uri``, in checked blocks of at most :data:`LIST_BLOCK_ROWS` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, _ = resolve(uri)
    try:
        with fs.open_input_file(path) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=LIST_BLOCK_ROWS):
                yield check_manifest(pa.Table.from_batches([batch]), uri)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ParameterError(f"cannot read the {{manifest}} {uri}: {exc}") from None


def read_manifest_blocks(batch: dict[str, Any], uri: str) -> Iterator[pa.Table]:
    """Ray Data's manifest step: each parquet file named in ``batch["file"]``, in checked blocks."""
    for path in batch["file"]:
        yield from manifest_blocks(uri, str(path))


def check_manifest(table: pa.Table, uri: str) -> pa.Table:
    """A block of a manifest in the manifest schema: ``path`` and ``size``, with ``mtime_ns`` or
    ``etag`` (or both) to tell versions apart; a ParameterError naming what is wrong otherwise."""
    import pyarrow as pa

    names = set(table.schema.names)
    _check_columns(names, uri)
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


def manifest_folder(features_uri: str) -> str:
    """Where a listing of a prefix is kept: ``_manifest.parquet/`` in the features location."""
    return features_uri.rstrip("/") + "/" + MANIFEST_NAME


def start_manifest(features_uri: str) -> str:
    """Empty the kept manifest (an older listing, as a folder or a single file) and mark the
    folder incomplete until :func:`finish_manifest`; returns its URI."""
    import pyarrow.fs as pafs

    uri = manifest_folder(features_uri)
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    try:
        if info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif info.type == pafs.FileType.Directory:
            fs.delete_dir_contents(path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(posixpath.join(path, INCOMPLETE_MARK)) as out:
            out.write(b"a listing is writing this manifest\n")
    except OSError as exc:
        raise ParameterError(f"cannot write the listing into {{features_out}} {features_uri}: {exc}") from None
    return uri


def write_manifest_part(manifest_uri: str, name: str, table: pa.Table) -> None:
    """One block of the kept listing; the same name for the same unit and block, so a retried task replaces its own part."""
    fs, path = resolve(manifest_uri)
    write_parquet_file(fs, posixpath.join(path, f"part-{name}.parquet"), table)


def finish_manifest(manifest_uri: str) -> None:
    fs, path = resolve(manifest_uri)
    fs.delete_file(posixpath.join(path, INCOMPLETE_MARK))


def list_piece(
    source: Source, follow_symlinks: bool, manifest_uri: str | None, name: str, unit: Unit | None = None, links: list[str] | None = None
) -> Iterator[pa.Table | tuple[list[str], LeftOut]]:
    """A Ray task's piece of a listing: a recursive unit, or (without one) the linked folders
    ``links`` (:func:`list_links`), in blocks, each kept as manifest part ``{name}-{n}`` when
    ``manifest_uri`` is given; then, last, the linked folders the unit met, left for the end, and
    the links it left out."""
    met: list[str] = []
    outside: list[str] = []
    if unit is not None:
        blocks = list_unit(source, unit, follow_symlinks, met, outside)
    else:
        blocks = list_links(source, links or [], follow_symlinks, outside=outside)
    for n, block in enumerate(blocks):
        if manifest_uri is not None:
            write_manifest_part(manifest_uri, f"{name}-{n:06d}", block)
        yield block
    yield met, LeftOut.of(outside)
