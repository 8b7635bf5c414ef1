"""``embed_to_store``: embed a folder, a prefix or a manifest on Ray into a feature store.

A small source (or manifest) is listed in this process first, so one without images is refused
before the model is built, as on one machine. The driver then builds the model once to learn
its cache key and width, and plans the small listing in this process: the rows the store already holds (same path, size and
mtime or etag) and the unchanged files it recorded as not embeddable are subtracted bucket by
bucket (:mod:`imgcluster.scale.resume`), and with nothing left the job returns without starting
Ray. A large one (and any gs:// prefix, which cannot be listed a page at a time) is listed in
Ray tasks, its top levels one task per folder, then one per sub-prefix and one for the linked
folders met (:mod:`imgcluster.scale.sources`), or
read as a Ray Dataset, and planned in one Ray task per bucket: the driver holds counts and object
references, never the listing or the store's rows. The rest streams through Ray Data: CPU tasks
decode (:mod:`imgcluster.scale.decode`), an actor pool embeds
(:mod:`imgcluster.scale.embed_actor`), tasks write parquet shards (:mod:`imgcluster.featurestore`).
Files are only ever added, never overwritten, so whatever was written before a crash or a stop stays and counts on the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster import featurestore
from imgcluster.errors import ParameterError
from imgcluster.head_config import check_flags
from imgcluster.progress import NOT_STORED, ProgressFn, Reporter, check_progress, count
from imgcluster.scale import resume, sources
from imgcluster.scale.embed_actor import ActorSpec, EmbedActor, crash_from_environment
from imgcluster.scale.engine import import_ray, own_errors, quiet_data_context, ray_session, require_ray
from imgcluster.scale.sources import NO_MTIME, Source, open_source
from imgcluster.signals import Interrupted
from imgcluster.userpath import expand_home

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["EmbedInterrupted", "RayEmbedConfig", "StoreSummary", "embed_to_store"]

WRITE_ROWS = 4096  # rows per write task: about 16 rows per bucket file; fewer, larger files than one per embedded batch
RETRIES = 3  # task retries and actor restarts
# A source or manifest of up to this many files is listed and planned in this process (about 200
# bytes a file: 200 MB), so a complete store needs no Ray; a larger one is listed and planned in Ray tasks.
LOCAL_PLAN_ROWS = 1_000_000
LOCAL_SPLIT_FOLDERS = 256  # folders this process lists one by one before handing a source to Ray tasks
# An object prefix's level of more entries than this (a flat prefix) is handed to Ray tasks: this
# process stops after about this many keys (100 requests of 1,000), holding one page at a time.
LOCAL_LEVEL_ENTRIES = 100_000
SPLIT_PER_CPU = 4  # a Ray listing splits a source into at least this many sub-prefixes per cluster CPU, where the tree allows


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
    check_flags(retry_skipped=retry_skipped, follow_symlinks=follow_symlinks)
    source, features_out, weights, manifest = expand_home(source), expand_home(features_out), expand_home(weights), expand_home(manifest)
    check_progress(progress)
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
    if manifest is not None and not sources.manifest_rows(manifest):  # its footers checked before a model is built for nothing
        raise ParameterError(f"the {{manifest}} {manifest} lists no files")  # as a SOURCE that holds no images
    featurestore.check_location(features_out)  # a folder of photos given as the store: said before the model is built
    summary = StoreSummary(features_out, 0, 0)
    try:  # a small source is listed before the model is built: one without images is said at once, as on one machine
        listed = _list_here(src, config)
    except KeyboardInterrupt as exc:
        raise EmbedInterrupted(summary, getattr(exc, "signum", signal.SIGINT)) from None
    report.at("model").info(f"loading the model ({model}) ...")
    backbone_name, meta = _describe_model(model, weights, num_gpus, config, report)
    store = featurestore.open_store(features_out, meta)
    skipped = {} if retry_skipped else featurestore.skipped_rows(features_out, summary.problems.append)
    spec = ActorSpec(backbone_name, weights, meta.key, meta.dtype, 0, False, 1, crash_from_environment())
    with _Session(config.address, report) as session:
        try:
            plan = None if listed is None else _plan_listed(listed, config, skipped)
            if plan is None:  # too large for this process: list and plan in Ray tasks
                session.start()
                plan = _plan_on_ray(src, config, skipped)
            _account(plan, summary, report)
            if plan.n_todo:
                session.start()
                _run(store, src, plan, spec, meta, config, summary, report)
        except KeyboardInterrupt as exc:
            raise EmbedInterrupted(summary, getattr(exc, "signum", signal.SIGINT)) from None
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
        source=_recorded_source(config.source), config=dataclasses.asdict(config),
    )  # fmt: skip
    return name, meta


def _recorded_source(source: str) -> str:
    """The source as the store records it: a local folder as an absolute path, so that its later readers (``assign``'s
    names and its count of files gone, the CSV's sidecar) find it from any working folder, not another folder of that
    name there; a URI as given."""
    import os

    return source if "://" in source else os.path.abspath(source)


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


@dataclass
class _Plan:
    """What a job has to do, as counts and a few rows: the rows to embed stay a table (a small
    source, planned here) or a Ray Dataset (planned in Ray tasks), never a list on the driver."""

    listed: int
    todo: pa.Table | Any  # a pyarrow Table or a ray.data Dataset of the manifest's columns
    n_todo: int
    others: list[dict[str, Any]]  # planned rows that are not embedded: recorded unreadable files, torn store files
    kept: str | None  # where the listing of a prefix was kept
    left_out: sources.LeftOut = field(default_factory=sources.LeftOut)  # links leading outside the folder, not followed


def _plan_here(src: Source, config: RayEmbedConfig, skipped: resume.SkippedRows) -> _Plan | None:
    """Plan a small job in this process (:func:`_list_here`, then :func:`_plan_listed`); None when it is too large."""
    listed = _list_here(src, config)
    return None if listed is None else _plan_listed(listed, config, skipped)


@dataclass
class _Listed:
    """A small source's listing made in this process, before the model is built; nothing written yet."""

    listing: pa.Table
    blocks: list[pa.Table]  # the listing's blocks, kept as the manifest of a prefix once the store is open
    left_out: sources.LeftOut


def _list_here(src: Source, config: RayEmbedConfig) -> _Listed | None:
    """List a small job in this process, so a complete store needs no Ray: a manifest of at most
    LOCAL_PLAN_ROWS rows (counted from its parquet footers), or a source whose top levels,
    listed one folder at a time, end within that many images (and, on object storage, within
    LOCAL_LEVEL_ENTRIES entries a level). None when it is larger, or when it is a prefix that
    cannot be listed a page at a time (gs://: pyarrow would hold a flat prefix whole here).
    A source without images is refused here, before the model is built."""
    import pyarrow as pa

    if config.manifest is not None:
        if sources.manifest_rows(config.manifest) > LOCAL_PLAN_ROWS:
            return None
        listing = sources.read_manifest(config.manifest)
        return _Listed(listing, [], sources.LeftOut())
    if not src.relative and not sources.pages_listing(src):
        return None
    max_level = None if src.relative else LOCAL_LEVEL_ENTRIES  # a folder's entries are a stream, counted, not requested
    outside: list[str] = []
    split = sources.split_listing(
        src, LOCAL_SPLIT_FOLDERS, config.follow_symlinks, max_files=LOCAL_PLAN_ROWS, max_level=max_level, outside=outside
    )
    if not split.complete or split.files_seen > LOCAL_PLAN_ROWS:
        return None
    blocks = [block for unit in split.units for block in sources.list_unit(src, unit, config.follow_symlinks, outside=outside)]
    room = LOCAL_PLAN_ROWS - split.files_seen
    blocks += sources.list_links(src, split.links, config.follow_symlinks, limit=room, outside=outside)
    listing = pa.concat_tables([sources.manifest_schema().empty_table(), *blocks])
    if listing.num_rows > LOCAL_PLAN_ROWS:  # linked folders too large to list here (a link out, with follow_symlinks)
        return None
    left_out = sources.LeftOut.of(outside)
    _check_found(listing.num_rows, src, left_out)
    return _Listed(listing, [] if src.relative else blocks, left_out)


def _plan_listed(listed: _Listed, config: RayEmbedConfig, skipped: resume.SkippedRows) -> _Plan:
    """The listing against the store, bucket by bucket; a prefix's listing is kept in the store as its manifest."""
    kept = None
    if config.manifest is None and listed.blocks:
        kept = sources.start_manifest(config.features_out)
        for n, block in enumerate(listed.blocks):
            sources.write_manifest_part(kept, f"{0:06d}-{n:06d}", block)
        sources.finish_manifest(kept)
    planned = resume.plan_table(listed.listing, config.features_out, skipped)
    todo = resume.of_kind(planned, (resume.EMBED,))
    others = resume.of_kind(planned, (resume.SKIPPED, resume.PROBLEM)).to_pylist()
    return _Plan(listed.listing.num_rows, todo, todo.num_rows, others, kept, listed.left_out)


def list_on_ray(src: Source, config: RayEmbedConfig) -> tuple[Any, int, str | None, sources.LeftOut]:
    """The source's listing (or the manifest) as a materialised Ray Dataset, its row count, where
    a prefix's listing was kept, and the links left out: its top levels listed by :func:`_discover_on_ray`, then one
    task per sub-prefix left, then one for the linked folders they met (listed last, as the
    single-machine listing does, so that each folder is listed once)."""
    ray = import_ray()
    kept = None
    left_out = sources.LeftOut()
    if config.manifest is not None:
        sources.manifest_rows(config.manifest)  # its footers checked here: one line for a missing column, not a task's traceback
        files = [{"file": path} for path in sources.manifest_files(config.manifest)]
        listing = map_batches(
            ray.data.from_items(files, override_num_blocks=len(files)), sources.read_manifest_blocks,
            {"max_retries": RETRIES, "retry_exceptions": [OSError]}, batch_size=1, batch_format="numpy", fn_kwargs={"uri": config.manifest},
        )  # fmt: skip
    else:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        kept = None if src.relative else sources.start_manifest(config.features_out)
        prefixes, blocks, links, left_out = _discover_on_ray(src, SPLIT_PER_CPU * cpus, config.follow_symlinks, kept)
        task = ray.remote(num_returns="streaming", max_retries=RETRIES, retry_exceptions=True)(sources.list_piece)
        pieces = [task.remote(src, config.follow_symlinks, kept, f"{i:06d}", unit=sources.Unit(p, True)) for i, p in enumerate(prefixes)]
        for piece in pieces:
            met, outside = _piece_refs(piece, blocks)
            links.extend(met)
            left_out += outside
        if links:
            left_out += _piece_refs(task.remote(src, config.follow_symlinks, kept, "links", links=links), blocks)[1]
        listing = ray.data.from_arrow_refs(blocks) if blocks else ray.data.from_arrow(sources.manifest_schema().empty_table())
    listing = _unwrapped(listing.materialize)
    listed = listing.count()
    if config.manifest is None:
        _check_found(listed, src, left_out)
        if kept is not None:
            sources.finish_manifest(kept)
    return listing, listed, kept, left_out


def _piece_refs(generator: Any, blocks: list[Any]) -> Any:
    """A listing task's block references (added to ``blocks``) and its last item, read here: the folders it names."""
    import ray

    refs = list(generator)
    last = _unwrapped(functools.partial(ray.get, refs.pop()))
    blocks.extend(refs)
    return last


def _discover_on_ray(
    src: Source, target: int, follow_symlinks: bool, kept: str | None
) -> tuple[list[str], list[Any], list[str], sources.LeftOut]:
    """:func:`sources.split_listing` with each level listed in a Ray task (:func:`sources.list_level`),
    a whole level of the tree at a time: the prefixes left to list recursively, references to
    the blocks of files the levels held, the linked folders met and the links left out. This
    process holds folder names and references, never a file's row, also for a flat prefix."""
    ray = import_ray()
    task = ray.remote(num_returns="streaming", max_retries=RETRIES, retry_exceptions=True)(sources.list_level)
    blocks: list[Any] = []
    links: list[str] = []
    waiting = [""]
    listed = 0
    left_out = sources.LeftOut()
    while waiting and len(waiting) < target:
        level = [task.remote(src, prefix, follow_symlinks, kept, f"level{listed + i:06d}") for i, prefix in enumerate(waiting)]
        listed += len(waiting)
        waiting = []
        for generator in level:
            folders, outside = _piece_refs(generator, blocks)
            left_out += outside
            for folder in folders:
                (links if folder.linked else waiting).append(folder.prefix)  # a linked folder is listed last, as list_images does
    return waiting, blocks, links, left_out


def _plan_on_ray(src: Source, config: RayEmbedConfig, skipped: resume.SkippedRows) -> _Plan:
    """List (or read the manifest) and plan in Ray tasks: the driver holds the units of the listing,
    object references and counts, and the few rows that are not embedded."""
    listing, listed, kept, left_out = list_on_ray(src, config)
    grouped = listing.map_batches(resume.with_buckets, batch_format="pyarrow").groupby(resume.BUCKET)
    planned = _unwrapped(
        grouped.map_groups(
            resume.plan_group, batch_format="pyarrow", fn_kwargs={"uri": config.features_out, "skipped": skipped}
        ).materialize
    )
    others = planned.map_batches(resume.of_kind, batch_format="pyarrow", fn_kwargs={"kinds": (resume.SKIPPED, resume.PROBLEM)}).take_all()
    todo = planned.map_batches(resume.of_kind, batch_format="pyarrow", fn_kwargs={"kinds": (resume.EMBED,)})
    n_todo = planned.count() - len(others)
    return _Plan(listed, todo, n_todo, others, kept, left_out)


def _unwrapped(run: Callable[[], Any]) -> Any:
    """Run a Ray step; an ImgclusterError raised in a task (a manifest's bad column) surfaces as
    itself, in its one line, not as Ray's wrapper with the task's traceback (:func:`engine.own_errors`)."""
    with own_errors():
        return run()


def _check_found(listed: int, src: Source, left_out: sources.LeftOut) -> None:
    if not listed:
        raise ParameterError(f"{{source}} {src.uri} holds no images" + (f"; {_left_out(left_out)}" if left_out.count else ""))


def _left_out(left_out: sources.LeftOut) -> str:
    """What the single-machine listing says of the links it left out, in the same words."""
    from imgcluster.preflight import outside_links

    assert left_out.first is not None
    return outside_links([left_out.first], left_out.count)


def _account(plan: _Plan, summary: StoreSummary, report: Reporter) -> None:
    """Fill the summary from the plan and say what the job will do."""
    old_skips = [(str(r["path"]), str(r["note"])) for r in plan.others if r["kind"] == resume.SKIPPED]
    summary.problems.extend(str(r["note"]) for r in plan.others if r["kind"] == resume.PROBLEM)
    summary.skipped.extend(old_skips)
    summary.reused = plan.listed - plan.n_todo - len(old_skips)
    summary.manifest = plan.kept
    if plan.left_out.count:
        report.warning(_left_out(plan.left_out))
    for problem in summary.problems:
        report.warning(problem)
    report.info(
        f"{count(plan.listed, 'image')}: {summary.reused} in the store, {len(old_skips)} recorded as unreadable, {plan.n_todo} to embed"
    )


class _Session(contextlib.ExitStack):
    """Ray for one job, started on first need (a job with nothing to do never starts it)."""

    def __init__(self, address: str | None, report: Reporter) -> None:
        super().__init__()
        self.address = address
        self.report = report
        self.started = False

    def start(self) -> None:
        if self.started:
            return
        self.report.at("model").info("starting Ray" + (f" at {self.address}" if self.address else " (a local instance)") + " ...")
        self.enter_context(ray_session(self.address))
        self.enter_context(quiet_data_context())
        self.started = True


DEPRECATED_REMOTE_ARGS = "`ray_remote_args` is deprecated"  # the start of Ray 2.60's warning (ray/data/dataset.py)


def map_batches(ds: Any, fn: Any, retries: dict[str, Any], **kwargs: Any) -> Any:
    """``ds.map_batches(fn, **kwargs)``, its retries bounded by the Ray ``remote`` options ``retries``.

    Ray Data's defaults retry forever (``max_retries=-1`` for tasks, ``max_restarts=-1`` and
    ``max_task_retries=-1`` for actors): a file that crashes a worker every time would loop.
    Ray 2.60 takes these options only as loose keyword arguments (``**ray_remote_args``), which
    it deprecates for 2.64 with no named replacement (docs/scale.md, "Retries"), so its warning
    is silenced for this call alone; a Ray whose ``map_batches`` no longer takes them runs with
    its own defaults.
    """
    import inspect

    signature = inspect.signature(type(ds).map_batches)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return ds.map_batches(fn, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATED_REMOTE_ARGS, category=DeprecationWarning)
        return ds.map_batches(fn, **kwargs, **retries)


def _ray_table(todo: pa.Table) -> pa.Table:
    """Ray batches hold no nulls: a missing mtime becomes NO_MTIME, a missing etag ""."""
    import pyarrow as pa
    import pyarrow.compute as pc

    todo = todo.select(sources.manifest_schema().names)
    return todo.set_column(2, "mtime_ns", pc.fill_null(todo.column("mtime_ns"), pa.scalar(NO_MTIME, pa.int64()))).set_column(
        3, "etag", pc.fill_null(todo.column("etag"), "")
    )


def write_batch(batch: dict[str, np.ndarray], store: featurestore.FeatureStore) -> dict[str, np.ndarray]:
    """Ray Data's last stage: the embedded rows into bucket files, the others into ``_skipped``
    (with the files whose features the float16 store cannot hold: :func:`featurestore.unstorable`)."""
    reasons = np.asarray(batch["reason"], dtype=object).copy()
    for row, why in featurestore.unstorable(batch["feature"]).items():
        if reasons[row] == "":
            reasons[row] = f"{NOT_STORED}{why}"
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
    plan: _Plan,
    spec: ActorSpec,
    meta: featurestore.FeatureStoreMeta,
    config: RayEmbedConfig,
    summary: StoreSummary,
    report: Reporter,
) -> None:
    """Decode, embed and write the plan's rows in a Ray session already started."""
    import torch

    from imgcluster.embedding import default_batch_size
    from imgcluster.identity import data_config_of
    from imgcluster.load import decode_timeout
    from imgcluster.scale.decode import decode_batch  # torch and timm: imported for the work, not for a refusal before it

    ray = import_ray()
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
    if config.actors is not None and n_actors * actor_cpus >= cpus:  # measured: 2 actors on a 2-CPU instance sat at 0 rows for ever
        crowded = (
            f"{{actors}} {n_actors}: the embedding actors take {n_actors * actor_cpus} of the Ray cluster's {cpus} CPUs, "
            "and the decode tasks that feed them need one more"
        )
        if config.address is None:  # a local instance does not grow
            raise ParameterError(f"{crowded}; give at most {max(1, (cpus - 1) // actor_cpus)}")
        report.warning(f"{crowded}: the job waits until the cluster has more")
    device = torch.device("cuda" if use_gpu else "cpu")
    batch_size = config.batch_size or default_batch_size(device, plan.listed)
    spec = dataclasses.replace(spec, batch_size=batch_size, use_gpu=use_gpu, threads=actor_cpus)
    # One block per batch: each decode task is a batch's worth of work, the unit a stop or a retry repeats.
    if isinstance(plan.todo, ray.data.Dataset):
        ds = plan.todo.map_batches(_ray_table, batch_format="pyarrow").repartition(target_num_rows_per_block=batch_size)
    else:
        table = _ray_table(plan.todo)
        ds = ray.data.from_arrow([table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)])
    ds = map_batches(
        ds, decode_batch, {"max_retries": RETRIES, "retry_exceptions": True}, batch_size=batch_size, batch_format="numpy", num_cpus=1,
        fn_kwargs={"source": src, "data_config": data_config_of(meta.identity), "timeout": decode_timeout()},
    )  # fmt: skip
    ds = map_batches(
        ds, EmbedActor, {"max_restarts": RETRIES, "max_task_retries": RETRIES}, fn_constructor_kwargs={"spec": spec},
        batch_size=batch_size, batch_format="numpy", compute=ActorPoolStrategy(size=n_actors), num_cpus=actor_cpus,
        num_gpus=per_actor_gpus if use_gpu else 0,
    )  # fmt: skip
    ds = map_batches(
        ds, write_batch, {"max_retries": RETRIES, "retry_exceptions": True},
        batch_size=min(WRITE_ROWS, max(batch_size, math.ceil(plan.n_todo / 4))), batch_format="numpy", num_cpus=0.25,
        fn_kwargs={"store": store},
    )  # fmt: skip
    report.start(plan.n_todo)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        reasons = batch["reason"]
        bad = [(str(p), str(r)) for p, r in zip(batch["path"], reasons) if r != ""]
        summary.skipped.extend(bad)
        summary.embedded += len(reasons) - len(bad)
        report.advance(len(reasons))
