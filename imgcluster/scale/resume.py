"""Which listed files a job embeds: each bucket of the listing against the same bucket of the store.

The store keeps a path's rows in ``part-<bucket>/``, the bucket a hash of the path
(:func:`imgcluster.featurestore.bucket_of`). Hashing the listing's paths the same way splits the
comparison into 256 independent pieces: :func:`plan_bucket` reads one bucket's identity columns
(path, size, mtime_ns, etag; never the features) and keeps the listed rows the store lacks. A Ray
job runs it per bucket in ``groupby("bucket").map_groups`` tasks (:func:`plan_group`); a small
listing is planned in this process bucket by bucket (:func:`plan_table`), holding one bucket's
identities at a time. Either way the result is the listing's rows to embed (``kind`` "embed"),
the unchanged files recorded as unreadable ("skipped", ``note`` the reason) and the store files
found torn ("problem", ``note`` the message, no path); reused rows are the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster import featurestore
from imgcluster.scale.sources import manifest_schema

if TYPE_CHECKING:
    import pyarrow as pa

BUCKET = "bucket"
EMBED, SKIPPED, PROBLEM = "embed", "skipped", "problem"
# path -> (size, mtime_ns, etag, reason) of files recorded as unreadable: read once by the driver (usually few)
SkippedRows = dict[str, tuple[Any, ...]]


def plan_schema() -> pa.Schema:
    import pyarrow as pa

    return manifest_schema().append(pa.field("kind", pa.string())).append(pa.field("note", pa.string()))


def matches(listed: tuple[Any, ...], stored: tuple[Any, ...]) -> bool:
    """Whether a listed (size, mtime_ns, etag) is the version the store recorded: the etag decides
    when both have one, else the mtime."""
    size, mtime, etag = listed
    if size != stored[0]:
        return False
    if etag is not None and stored[2] is not None:
        return bool(etag == stored[2])
    return mtime is not None and mtime == stored[1]


def with_buckets(block: pa.Table) -> pa.Table:
    """The block with each path's store bucket, to group the listing by."""
    import pyarrow as pa

    buckets = np.fromiter((featurestore.bucket_of(p) for p in block.column("path").to_pylist()), dtype=np.int32, count=block.num_rows)
    return block.append_column(BUCKET, pa.array(buckets, pa.int32()))


def plan_bucket(rows: pa.Table, uri: str, bucket: int, skipped: SkippedRows) -> pa.Table:
    """``rows`` (listed paths of one bucket) the store at ``uri`` lacks, the unchanged ones recorded
    as unreadable, and the bucket's torn files, as :func:`plan_schema` rows."""
    import pyarrow as pa

    problems: list[str] = []
    done = featurestore.bucket_stamps(uri, bucket, problems.append)
    listed = zip(*(rows.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "etag")))
    keep, kinds, notes = [], [], []
    for i, (path, *stamp) in enumerate(listed):
        if path in done and matches(tuple(stamp), done[path]):
            continue
        if path in skipped and matches(tuple(stamp), skipped[path]):
            keep.append(i)
            kinds.append(SKIPPED)
            notes.append(str(skipped[path][3]))
        else:
            keep.append(i)
            kinds.append(EMBED)
            notes.append("")
    kept = rows.select(manifest_schema().names).take(pa.array(keep, pa.int64()))
    out = kept.append_column("kind", pa.array(kinds, pa.string())).append_column("note", pa.array(notes, pa.string()))
    if problems:
        n = len(problems)
        torn = {
            "path": pa.nulls(n, pa.string()), "size": pa.nulls(n, pa.int64()), "mtime_ns": pa.nulls(n, pa.int64()),
            "etag": pa.nulls(n, pa.string()), "kind": pa.array([PROBLEM] * n, pa.string()), "note": pa.array(problems, pa.string()),
        }  # fmt: skip
        out = pa.concat_tables([out.cast(plan_schema()), pa.table(torn, schema=plan_schema())])
    return out.cast(plan_schema())


def plan_group(group: pa.Table, uri: str, skipped: SkippedRows) -> pa.Table:
    """Ray Data's ``map_groups`` step: one bucket of the listing (with its ``bucket`` column) planned."""
    if not group.num_rows:
        return plan_schema().empty_table()
    return plan_bucket(group, uri, int(group.column(BUCKET)[0].as_py()), skipped)


def plan_table(listing: pa.Table, uri: str, skipped: SkippedRows) -> pa.Table:
    """:func:`plan_bucket` over a listing held in this process, one bucket at a time."""
    import pyarrow as pa

    buckets = with_buckets(listing).column(BUCKET).to_numpy()
    order = np.argsort(buckets, kind="stable")
    bounds = np.flatnonzero(np.diff(buckets[order])) + 1
    pieces = [
        plan_bucket(listing.take(pa.array(rows)), uri, int(buckets[rows[0]]), skipped) for rows in np.split(order, bounds) if len(rows)
    ]
    return pa.concat_tables([plan_schema().empty_table(), *pieces])


def of_kind(block: pa.Table, kinds: tuple[str, ...]) -> pa.Table:
    """The rows of a planned block whose ``kind`` is one of ``kinds``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return block.filter(pc.is_in(block.column("kind"), pa.array(list(kinds), pa.string())))
