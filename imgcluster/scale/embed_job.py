"""``embed_to_store``: embed a folder, a prefix or a manifest on Ray into a feature store.

The driver lists the source (or reads the manifest), builds the model once to learn its cache key
and width, and subtracts what the store already holds (same path, size and mtime or etag) and
what it recorded as not embeddable; with nothing left it returns without starting Ray. The rest
streams through Ray Data: CPU tasks decode (:mod:`imgcluster.scale.decode`), an actor pool
embeds (:mod:`imgcluster.scale.embed_actor`), tasks write parquet shards
(:mod:`imgcluster.featurestore`). Files are only ever added, never overwritten, so whatever was
written before a crash or a stop stays and counts on the next run.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster import featurestore
from imgcluster.errors import ParameterError
from imgcluster.progress import ProgressFn, Reporter, count
from imgcluster.scale.decode import NO_MTIME, decode_batch
from imgcluster.scale.embed_actor import ActorSpec, EmbedActor, crash_from_environment
from imgcluster.scale.engine import import_ray, quiet_data_context, ray_session, require_ray
from imgcluster.scale.sources import Source, list_source, open_source, read_manifest, write_manifest
from imgcluster.signals import Interrupted

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EmbedInterrupted", "RayEmbedConfig", "StoreSummary", "embed_to_store"]

WRITE_ROWS = 4096  # rows per write task: about 16 rows per bucket file; fewer, larger files than one per embedded batch
RETRIES = 3  # task retries and actor restarts


@dataclass
class RayEmbedConfig:
    """The job as given, saved in ``_imgcluster.json``."""

    source: str
    features_out: str
    model: str = "auto"
    weights: str | None = None
    manifest: str | None = None
    address: str | None = None
    batch_size: int | None = None
    num_gpus: float | None = None
    actors: int | None = None
    retry_skipped: bool = False
    follow_symlinks: bool = False


@dataclass
class StoreSummary:
    """What a job did: rows embedded now, reused from the store, and skipped with reasons."""

    uri: str
    embedded: int
    reused: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run's and those recorded before
    seconds: float = 0.0
    manifest: str | None = None  # where the listing of a prefix was kept
    problems: list[str] = field(default_factory=list)  # torn store files ignored


class EmbedInterrupted(Interrupted):
    """A stopped job: every file written so far is kept and a rerun embeds only what is missing."""

    def __init__(self, summary: StoreSummary, signum: int) -> None:
        super().__init__(
            f"interrupted; {summary.embedded} embedded rows confirmed in {summary.uri} (and any other finished batch) are kept, "
            "and the next run embeds only what is missing",
            signum,
        )
        self.summary = summary


def embed_to_store(
    source: str,
    features_out: str,
    *,
    model: str = "auto",
    weights: str | None = None,
    manifest: str | None = None,
    address: str | None = None,
    batch_size: int | None = None,
    num_gpus: float | None = None,
    actors: int | None = None,
    retry_skipped: bool = False,
    follow_symlinks: bool = False,
    progress: ProgressFn | None = None,
) -> StoreSummary:
    """Embed every image of ``source`` (a folder, an ``s3://``/``gs://`` prefix) into the store at ``features_out``.

    ``manifest``: a parquet list of files (path, size, mtime_ns or etag) to embed instead of
    listing ``source``; its relative paths are relative to ``source``. ``address``: a Ray cluster
    (``"auto"``, ``"host:port"``, ``"ray://host:port"``); None starts a local instance.
    ``num_gpus``: GPUs per embedding actor (default: 1 when this machine has a GPU and Ray runs
    locally, else none; give it to use a remote cluster's GPUs);
    ``actors``: embedding actors (default one per GPU, or one). ``retry_skipped`` tries again
    the files recorded as not embeddable. ``progress`` receives :class:`imgcluster.progress.Event`
    objects; nothing is printed. A stop (Ctrl-C, SIGTERM) raises :class:`EmbedInterrupted`.
    """
    start = time.monotonic()
    if batch_size is not None and batch_size < 1:
        raise ParameterError("{batch_size} must be at least 1")
    if num_gpus is not None and num_gpus < 0:
        raise ParameterError("{num_gpus} must be 0 or more")
    if actors is not None and actors < 1:
        raise ParameterError("{actors} must be at least 1")
    require_ray()
    config = RayEmbedConfig(
        source, features_out, model, weights, manifest, address, batch_size, num_gpus, actors, retry_skipped, follow_symlinks
    )
    report = Reporter(progress, "embed")
    src = open_source(source)
    report.at("model").info(f"loading the model ({model}) ...")
    backbone_name, meta = _describe_model(model, weights, num_gpus, config, report)
    store = featurestore.open_store(features_out, meta)
    if manifest is not None:
        listing = read_manifest(manifest)
        kept = None
    else:
        listing = list_source(src, follow_symlinks)
        if not listing.num_rows:
            raise ParameterError(f"{{source}} {source} holds no images")
        kept = write_manifest(listing, features_out) if not src.relative else None
    problems: list[str] = []
    todo, reused, old_skips = _plan(listing, features_out, retry_skipped, problems.append)
    for problem in problems:
        report.warning(problem)
    report.info(
        f"{count(listing.num_rows, 'image')}: {reused} in the store, {len(old_skips)} recorded as unreadable, {todo.num_rows} to embed"
    )
    summary = StoreSummary(features_out, 0, reused, list(old_skips), 0.0, kept, problems)
    if todo.num_rows:
        spec = ActorSpec(backbone_name, weights, meta.key, meta.dtype, 0, False, 1, crash_from_environment())
        _run(store, src, todo, spec, meta, config, listing.num_rows, summary, report)
    summary.seconds = time.monotonic() - start
    report.info(f"embedded {summary.embedded}, reused {summary.reused}, skipped {len(summary.skipped)} in {summary.seconds:.1f}s")
    return summary


def _describe_model(
    model: str, weights: str | None, num_gpus: float | None, config: RayEmbedConfig, report: Reporter
) -> tuple[str, featurestore.FeatureStoreMeta]:
    """The model's name and the store description: built here once, on the CPU, for its key and width."""
    from imgcluster.backbones import create_backbone, resolve_model_name
    from imgcluster.cache import cache_key

    name, warning = resolve_model_name(model, weights)
    if warning:
        report.warning(warning)
    backbone = create_backbone(name, weights)
    # The precision the actors compute in: bfloat16 autocast on GPUs (as on one machine), float32 on CPUs.
    compute = "bfloat16" if (num_gpus is None or num_gpus > 0) and _cluster_has_gpus(config.address, num_gpus) else "float32"
    identity = backbone.identity()
    meta = featurestore.FeatureStoreMeta(
        model=name, key=cache_key(identity, "float16", compute), identity=identity, dim=backbone.feature_dim, compute=compute,
        source=config.source, config=dataclasses.asdict(config),
    )  # fmt: skip
    return name, meta


def _cluster_has_gpus(address: str | None, num_gpus: float | None) -> bool:
    """Whether the actors will have GPUs: asked for, or found on this machine when running locally.

    A remote cluster's resources are only known once connected; asking for ``num_gpus`` is how a
    job says it wants them there.
    """
    if num_gpus is not None:
        return num_gpus > 0
    if address is not None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _matches(listed: tuple[int, int | None, str | None], stored: tuple[Any, ...]) -> bool:
    size, mtime, etag = listed
    if size != stored[0]:
        return False
    if etag is not None and stored[2] is not None:
        return bool(etag == stored[2])
    return mtime is not None and mtime == stored[1]


def _plan(
    listing: pa.Table, uri: str, retry_skipped: bool, on_problem: featurestore.ProblemFn
) -> tuple[pa.Table, int, list[tuple[str, str]]]:
    """(rows to embed, rows the store already has, (path, reason) of unchanged files recorded as unreadable)."""
    done = featurestore.done_rows(uri, on_problem)
    skipped = {} if retry_skipped else featurestore.skipped_rows(uri, on_problem)
    keep, reused, old_skips = [], 0, []
    for i, row in enumerate(zip(*(listing.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "etag")))):
        path, stamp = row[0], row[1:]
        if path in done and _matches(stamp, done[path]):
            reused += 1
        elif path in skipped and _matches(stamp, skipped[path]):
            old_skips.append((path, skipped[path][3]))
        else:
            keep.append(i)
    import pyarrow as pa

    return listing.take(pa.array(keep, pa.int64())), reused, old_skips


def _ray_table(todo: pa.Table) -> pa.Table:
    """Ray batches hold no nulls: a missing mtime becomes NO_MTIME, a missing etag ""."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return todo.set_column(2, "mtime_ns", pc.fill_null(todo.column("mtime_ns"), pa.scalar(NO_MTIME, pa.int64()))).set_column(
        3, "etag", pc.fill_null(todo.column("etag"), "")
    )


def write_batch(batch: dict[str, np.ndarray], store: featurestore.FeatureStore) -> dict[str, np.ndarray]:
    """Ray Data's last stage: the embedded rows into bucket files, the others into ``_skipped``."""
    reasons = np.asarray(batch["reason"], dtype=object)
    paths = [str(p) for p in batch["path"]]
    sizes = [int(s) for s in batch["size"]]
    mtimes = [None if int(m) == NO_MTIME else int(m) for m in batch["mtime_ns"]]
    etags = [str(e) or None for e in batch["etag"]]
    ok = reasons == ""
    pick = np.flatnonzero(ok)
    store.write(
        [paths[i] for i in pick], [sizes[i] for i in pick], [mtimes[i] for i in pick], [etags[i] for i in pick], batch["feature"][pick]
    )
    bad = np.flatnonzero(~ok)
    store.write_skipped(
        [paths[i] for i in bad], [sizes[i] for i in bad], [mtimes[i] for i in bad], [etags[i] for i in bad], [str(reasons[i]) for i in bad]
    )
    return {"path": np.array(paths, dtype=object), "reason": reasons}


def _run(
    store: featurestore.FeatureStore,
    src: Source,
    todo: pa.Table,
    spec: ActorSpec,
    meta: featurestore.FeatureStoreMeta,
    config: RayEmbedConfig,
    n_listed: int,
    summary: StoreSummary,
    report: Reporter,
) -> None:
    import torch

    from imgcluster.embedding import default_batch_size
    from imgcluster.load import decode_timeout

    ray = import_ray()
    report.at("model").info("starting Ray" + (f" at {config.address}" if config.address else " (a local instance)") + " ...")
    with ray_session(config.address), quiet_data_context():
        from ray.data import ActorPoolStrategy

        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        use_gpu = meta.compute == "bfloat16"  # decided with the key, before Ray started (see _cluster_has_gpus)
        per_actor_gpus = (config.num_gpus or 1.0) if use_gpu else 0.0
        if use_gpu and gpus < per_actor_gpus:
            raise ParameterError(f"{{num_gpus}} {per_actor_gpus:g} per actor, but the Ray cluster has {gpus:g} GPUs")
        cpus = max(1, int(resources.get("CPU", 1)))
        n_actors = config.actors or (max(1, int(gpus // per_actor_gpus)) if use_gpu else 1)
        actor_cpus = 1 if use_gpu else max(1, cpus // (2 * n_actors))
        device = torch.device("cuda" if use_gpu else "cpu")
        batch_size = config.batch_size or default_batch_size(device, n_listed)
        spec = dataclasses.replace(spec, batch_size=batch_size, use_gpu=use_gpu, threads=actor_cpus)
        table = _ray_table(todo)
        # One block per batch: each decode task is a batch's worth of work, the unit a stop or a retry repeats.
        blocks = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)]
        ds = ray.data.from_arrow(blocks)
        # Retries are bounded (Ray Data's default for actors is forever: a file that crashes the
        # model every time would loop); Ray 2.60 takes them only through the keyword arguments it
        # deprecates for 2.64, so its warning is silenced here, where the version is pinned.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
            fn_kwargs={"source": src, "data_config": _data_config(meta), "timeout": decode_timeout()},
            max_retries=RETRIES, retry_exceptions=True,
        )  # fmt: skip
        ds = ds.map_batches(
            EmbedActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size, batch_format="numpy",
            compute=ActorPoolStrategy(size=n_actors), num_cpus=actor_cpus, num_gpus=per_actor_gpus if use_gpu else 0,
            max_restarts=RETRIES, max_task_retries=RETRIES,
        )  # fmt: skip
        ds = ds.map_batches(
            write_batch, batch_size=min(WRITE_ROWS, max(batch_size, math.ceil(table.num_rows / 4))), batch_format="numpy",
            num_cpus=0.25, fn_kwargs={"store": store}, max_retries=RETRIES, retry_exceptions=True,
        )  # fmt: skip
        report.start(todo.num_rows)
        try:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
                reasons = batch["reason"]
                bad = [(str(p), str(r)) for p, r in zip(batch["path"], reasons) if r != ""]
                summary.skipped.extend(bad)
                summary.embedded += len(reasons) - len(bad)
                report.advance(len(reasons))
        except KeyboardInterrupt as exc:
            raise EmbedInterrupted(summary, getattr(exc, "signum", 2)) from None


def _data_config(meta: featurestore.FeatureStoreMeta) -> dict[str, Any]:
    """The backbone's preprocessing as timm takes it (the identity stores tuples as lists)."""
    raw = dict(meta.identity["data_config"])
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
