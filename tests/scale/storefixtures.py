"""A feature store written from the single-machine cache, so the two paths see the same features."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from imgcluster.cache import cache_key
from imgcluster.featurestore import FeatureStoreMeta, open_store

MODEL = "efficientnet-lite0"


def store_from_cache(embeddings, uri: str, split: int = 3) -> str:
    """Write ``embeddings`` (features from the cache) into a store at ``uri`` in ``split`` writes, in reverse order.

    Reverse order and several writes: the store's files do not list the rows as the folder does,
    so a same-answer test also shows that the order of the files does not matter.
    """
    meta = FeatureStoreMeta(
        model=embeddings.model, key=cache_key(embeddings.identity, "float16", embeddings.compute), identity=embeddings.identity,
        dim=int(embeddings.features.shape[1]), compute=embeddings.compute, source=str(embeddings.folder),
    )  # fmt: skip
    store = open_store(uri, meta)
    rows = np.arange(len(embeddings.paths))[::-1]
    for part in np.array_split(rows, split):
        paths = [embeddings.paths[i] for i in part]
        stats = [(Path(embeddings.folder) / p).stat() for p in paths]
        store.write(paths, [s.st_size for s in stats], [s.st_mtime_ns for s in stats], [None] * len(paths), embeddings.features[part])
    return uri


def synthetic_store(uri: str, n: int = 2000, dim: int = 256, centres: int = 10, seed: int = 0) -> str:
    """A store of ``n`` clustered random features (no images): for passes that need rows, not pictures."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(centres, dim))[rng.integers(0, centres, n)] + 0.8 * rng.normal(size=(n, dim))
    identity = {"model": "synthetic", "weights": "none", "dim": dim}
    meta = FeatureStoreMeta(model="synthetic", key=cache_key(identity, "float16"), identity=identity, dim=dim, source="/nowhere")
    store = open_store(uri, meta)
    for part in np.array_split(np.arange(n), 4):
        store.write([f"img/{i:06d}.jpg" for i in part], [1000] * len(part), [0] * len(part), [None] * len(part), x[part])
    return uri


def numbered_store(uri: str, n: int = 3000, dim: int = 8, copies: int = 1) -> str:
    """A store of ``n`` rows whose features are their row numbers (exact in float16 up to 2,048), in
    three writes; with ``copies`` > 1 every path is written again, with 2048 x copy added to its
    features (the newest copy is the row), so the files' footers count each path ``copies`` times."""
    identity = {"model": "synthetic", "weights": "none", "dim": dim}
    meta = FeatureStoreMeta(model="synthetic", key=cache_key(identity, "float16"), identity=identity, dim=dim, source="/nowhere")
    store = open_store(uri, meta)
    paths = [f"class-{i % 7}/{i:06d}.png" for i in range(n)]
    for copy in range(copies):
        for part in np.array_split(np.arange(n), 3):
            features = (np.arange(n, dtype=np.float32)[part, None] % 2048 + 2048 * copy).repeat(dim, 1)
            store.write([paths[i] for i in part], [1] * len(part), [copy] * len(part), [None] * len(part), features)
            time.sleep(0.01)  # a distinct modification time per file: the newest copy is well defined
    return uri


def planted_store(uri: str, n: int = 2000, planted: int = 8, dim: int = 64) -> tuple[str, list[str]]:
    """``n`` rows around 10 centres and ``planted`` rows of a small group far from all of them (no images)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, dim))[rng.integers(0, 10, n)] + 0.8 * rng.normal(size=(n, dim))
    odd = 4 * rng.normal(size=(1, dim)) + 0.8 * rng.normal(size=(planted, dim))
    identity = {"model": "synthetic", "weights": "none", "dim": dim}
    meta = FeatureStoreMeta(model="synthetic", key=cache_key(identity, "float16"), identity=identity, dim=dim, source="/nowhere")
    paths = [f"img/{i:06d}.jpg" for i in range(n)] + [f"odd/{i:02d}.jpg" for i in range(planted)]
    open_store(uri, meta).write(paths, [1] * len(paths), [0] * len(paths), [None] * len(paths), np.concatenate([x, odd]))
    return uri, paths[n:]


def write_unchecked(uri: str, paths: list[str], features: np.ndarray) -> None:
    """Rows written as a store written before the writer refused features float16 cannot hold (a
    value above 65504 became infinity), or by another tool: one parquet file per bucket, newest."""
    import posixpath
    import uuid

    import pyarrow as pa

    from imgcluster.featurestore import PART_PREFIX, bucket_of, read_meta, resolve, row_schema, write_parquet_file

    dim = read_meta(uri).dim
    fs, root = resolve(uri)
    with np.errstate(over="ignore"):
        flat = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(features, np.float16).reshape(-1), pa.float16()), dim)
    n = len(paths)
    table = pa.table(
        {"path": paths, "size": [1] * n, "mtime_ns": [0] * n, "etag": pa.nulls(n, pa.string()), "feature": flat}, schema=row_schema(dim)
    )
    for i, path in enumerate(paths):
        target = posixpath.join(root, f"{PART_PREFIX}{bucket_of(path):03d}", f"{uuid.uuid4().hex}.parquet")
        write_parquet_file(fs, target, table.slice(i, 1))


def infinite_outside_the_sample(tmp_path: Path) -> tuple[str, str, Path]:
    """A store of 60 rows whose one row outside a 40-row sample is infinite, and a head trained on that sample."""
    from imgcluster.scale.training import read_sample, train_from_store

    uri = synthetic_store(str(tmp_path / "store"), n=60, dim=16, centres=3)
    sampled = set(read_sample(uri, 40).paths)
    far = next(f"img/{i:06d}.jpg" for i in range(60) if f"img/{i:06d}.jpg" not in sampled)
    write_unchecked(uri, [far], np.full((1, 16), 1e5, np.float32))  # a newer copy of that row: the one read
    _, head = train_from_store(uri, out=tmp_path / "h.safetensors", n_clusters=3, epochs=1, device="cpu", train_sample=40)
    return uri, far, head
