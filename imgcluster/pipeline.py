"""The steps behind each command, as typed functions the CLI calls. Nothing here prints."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcluster.backbones import Backbone, create_backbone, resolve_model_name
from imgcluster.cache import EmbeddingCache, Failure, default_cache_root, embeddings_dir, read_failures, write_failures
from imgcluster.config import FORMAT_NOTE, EmbedConfig, skipped_path, to_dict
from imgcluster.embedding import (
    compute_precision,
    content_hash,
    default_batch_size,
    default_workers,
    embed_files,
    folder_batch,
    plan_loader,
    shared_memory_free,
)
from imgcluster.errors import ImgclusterError, ParameterError, first_sentences
from imgcluster.featurestore import unstorable
from imgcluster.identity import SOURCE_FIELD, forget_record, identity_source, normalised, recorded_identity
from imgcluster.int8 import chosen_runtime, ensure_quantised, recorded_runtime_failure
from imgcluster.int8 import runtime_name as int8_runtime_name
from imgcluster.listing import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, ImageFile
from imgcluster.load import ImageDecodeError
from imgcluster.lock import folder_lock
from imgcluster.onnxruntime_backend import ExportError, ensure_exported, plan_runtime
from imgcluster.preflight import FolderListing, check_dtype, check_folder, list_folder, outside_links, positive_from_env
from imgcluster.progress import NOT_CACHED, SAVED, SAVING
from imgcluster.signals import Interrupted, stops_as_interrupt

FLUSH_EVERY = 512  # images per cache shard: what an interruption can lose at most


def flush_every() -> int:
    """Images per cache shard; ``$IMGCLUSTER_FLUSH_EVERY`` overrides it (small values for tests)."""
    return int(positive_from_env("IMGCLUSTER_FLUSH_EVERY", FLUSH_EVERY))


FLUSH_SECONDS = 30.0  # also save at least this often: slow folders (large photos on a CPU) keep their work too


def flush_seconds() -> float:
    """Seconds of embedding between saves at most; ``$IMGCLUSTER_FLUSH_SECONDS`` overrides it (tests)."""
    return positive_from_env("IMGCLUSTER_FLUSH_SECONDS", FLUSH_SECONDS)


@dataclass
class Embeddings:
    """The features of a folder's images, and what made them (returned by :func:`imgcluster.embed`)."""

    paths: list[str]  # relative to ``folder``, scan order, decodable images only
    features: np.ndarray  # [N, d] float32, row i for paths[i]
    skipped: list[tuple[str, str]]  # (relative path, reason) of files that could not be embedded
    embedded: int  # images embedded in this run
    reused: int  # images whose features came from the cache
    model: str
    identity: dict[str, Any]  # the backbone: model, weights, preprocessing (what a head must match)
    cache_dir: Path  # where the features are cached
    folder: Path
    config: EmbedConfig
    compute: str = "float32"  # precision the features were computed in (bfloat16 under CUDA autocast)
    runtime: str = "torch"  # what ran the backbone: torch, onnx (ONNX Runtime) or onnx-int8/<recipe and ranges' digest>
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __repr__(self) -> str:
        # The generated repr printed every path and a feature matrix: 4,000 characters for 125 images in a notebook.
        return (
            f"Embeddings({len(self.paths)} images of {str(self.folder)!r}, {self.model} features {list(self.features.shape)}, "
            f"{self.embedded} embedded, {self.reused} reused, {len(self.skipped)} skipped)"
        )

    def write_skipped(self, beside: Path | None = None, raw_csv: bool = False) -> Path | None:
        """Write the skipped files (``path``, ``reason``) to ``<beside stem>-skipped.csv``, or to
        ``skipped.csv`` in the cache; returns that path, or None when nothing was skipped. A list
        an earlier run left there is then removed, so it never describes another run."""
        path = skipped_path(beside) if beside is not None else self.cache_dir / "skipped.csv"
        if not self.skipped:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        write_skipped(path, self.skipped, raw_csv)
        return path


@dataclass
class EmbedHooks:
    """Callbacks the CLI uses for progress; the library stays silent."""

    on_ready: Callable[[str, Path, str], None] = lambda model, cache_dir, runtime: None
    on_start: Callable[[int, int], None] = lambda to_embed, reused: None
    on_advance: Callable[[int], None] = lambda n: None
    on_warning: Callable[[str], None] = lambda message: None
    on_wait: Callable[[str], None] = lambda message: None  # waiting for another run's cache lock
    on_mark: Callable[[str, str], None] = lambda stage, message: None  # (stage, one of progress.MARKS)
    on_build: Callable[[str], None] = lambda model: None  # building the model (seconds); a fully cached run never does


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ParameterError("{device} cuda was asked for but no CUDA GPU is available; use {device} auto or cpu")
    if requested not in ("cpu", "cuda"):
        raise ParameterError(f"{{device}} must be auto, cpu or cuda, not {requested!r}")
    return torch.device(requested)


@contextlib.contextmanager
def _stops_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so finished batches are flushed either way."""
    with stops_as_interrupt():
        yield


def _utf8_name(rel: str) -> bool:
    """Linux names are bytes; one that is not UTF-8 cannot go into the cache, a CSV or JSON."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def embed_folder(
    config: EmbedConfig,
    device: torch.device,
    hooks: EmbedHooks | None = None,
    lock_timeout: float = 0.0,
    only: Collection[str] | None = None,
    listing: FolderListing | None = None,
) -> Embeddings:
    """Embed every image under ``config.folder``, reusing cached features of unchanged files.

    ``lock_timeout`` is how long to wait for another run that holds the same cache; ``only``
    limits the run to these relative paths, in that order, and keeps the cached features of the
    folder's other files; ``listing`` is the folder's scan when the preflight checks made it
    (:func:`imgcluster.preflight.list_folder`), so the folder is not walked twice.
    """
    hooks = hooks or EmbedHooks()
    start = time.perf_counter()
    folder = check_folder(Path(config.folder))
    check_dtype(config.dtype)
    cache_root = default_cache_root(folder, config.cache_dir)
    if only is not None:
        listing = FolderListing([])
        listing.files = _named_files(folder, only, listing.unsupported)
    elif listing is None:
        listing = list_folder(folder, config.cache_dir, config.follow_symlinks)
    files, unsupported, unreachable = listing.files, listing.unsupported, listing.unreachable
    if listing.outside and files:  # with no files, the error below (or the preflight's) says it
        hooks.on_warning(outside_links(listing.outside))
    if unsupported:
        kinds = " ".join(sorted({Path(rel).suffix.lower() for rel in unsupported}))
        hooks.on_warning(f"left out {len(unsupported)} file(s) in formats imgcluster cannot read ({kinds}); convert them to JPEG or PNG")
    if unreachable:
        first, reason = unreachable[0]
        hooks.on_warning(f"could not read {len(unreachable)} folder(s) or file(s) while scanning (first: {first}: {reason})")
    if not files:
        looked_for = " ".join(sorted(IMAGE_EXTENSIONS))
        raise ImgclusterError(f"no images found in {folder} (looked for {looked_for})")
    model_name, warning = resolve_model_name(config.model, config.weights)
    runtime = plan_runtime(config.runtime, device.type, model_name, config.weights)
    if warning:
        hooks.on_warning(warning)
    # The model is built only when something must be embedded: a cached run reads its identity,
    # and so its cache folder, from the record left by the run that built it (imgcluster.identity).
    source = identity_source(model_name, config.weights)
    backbone: Backbone | None = None
    identity = recorded_identity(cache_root, source)
    if identity is None:
        hooks.on_build(model_name)
        backbone = create_backbone(model_name, config.weights, device)
        identity = normalised(backbone.identity())
    compute = compute_precision(device)
    runtime_warning: str | None = None
    chosen = config.runtime == "auto"  # by the rule, not by the user: what it cannot run here, it runs in torch without a word
    if runtime == "onnx-int8":  # named by its recipe and activation ranges: int8 features never share a cache
        runtime = chosen_runtime(model_name, identity) if chosen else int8_runtime_name(model_name, identity)
    if runtime != "torch" and (failure := recorded_runtime_failure(identity, runtime)) is not None:  # not tried again
        runtime = "torch"
        if not chosen:  # auto said why the first time (below)
            runtime_warning = _onnx_refusal(model_name, failure)
            hooks.on_warning(runtime_warning)
    onnx_model: Path | None = None
    while True:
        directory = embeddings_dir(cache_root, model_name, identity, config.dtype, compute, runtime)
        hooks.on_ready(model_name, directory, runtime)
        with folder_lock(directory, lock_timeout, on_wait=hooks.on_wait, read_only_ok=True) as writable:
            description = {
                "embed": to_dict(config), "backbone": identity, "compute": compute, "runtime": runtime, "note": FORMAT_NOTE,
                SOURCE_FIELD: source,
            }  # fmt: skip
            cache = EmbeddingCache.open(directory, config.dtype, description, writable=writable)
            failed = read_failures(directory)
            todo, skipped, known = _plan(files, cache, config, failed)
            if todo and backbone is None:
                hooks.on_build(model_name)
                backbone = create_backbone(model_name, config.weights, device)
                if normalised(backbone.identity()) != identity:
                    if writable:  # the record named another model's cache: add nothing to it, and never trust it again
                        forget_record(directory, description)
                    identity = normalised(backbone.identity())
                    continue
            if todo and runtime != "torch" and onnx_model is None:
                assert backbone is not None
                onnx_model, runtime_warning = _onnx_model(backbone, runtime)
                if runtime_warning:  # features of torch go to torch's cache: start again there
                    hooks.on_warning(runtime_warning)
                    runtime = "torch"
                    continue
            rows, reused = _embed_and_keep(
                config, device, hooks, cache, writable, backbone, files, todo, skipped, len(known), compact=only is None,
                onnx_model=onnx_model,
            )  # fmt: skip
            if writable:
                _remember_failures(directory, failed, files, todo, skipped, known, whole_folder=only is None)
        skipped.update(unreachable)  # after the counts above, which are of the files found
        paths = [rel for rel, v in rows if v is not None]
        features = np.zeros((0, int(identity["feature_dim"])), np.float32)
        if paths:
            features = np.stack([v for _, v in rows if v is not None]).astype(np.float32)
        return Embeddings(
            paths=paths,
            features=features,
            skipped=sorted(skipped.items()),
            embedded=len(todo) - sum(f.rel in skipped for f in todo),
            reused=reused,
            model=model_name,
            identity=identity,
            cache_dir=directory,
            folder=folder,
            config=config,
            compute=compute,
            runtime=runtime,
            warnings=[w for w in (warning, runtime_warning) if w],
            seconds=time.perf_counter() - start,
        )


def _plan(
    files: list[ImageFile], cache: EmbeddingCache, config: EmbedConfig, failed: dict[str, Failure]
) -> tuple[list[ImageFile], dict[str, str], set[str]]:
    """The files to embed; those skipped without trying (names that are not UTF-8, and files that
    failed before and have not changed since: ``reembed`` and ``rehash`` try those again); and
    which of the skipped are the latter."""
    skipped: dict[str, str] = {f.rel: "file name is not valid UTF-8; rename the file" for f in files if not _utf8_name(f.rel)}
    known: set[str] = set()
    if config.reembed:
        todo = [f for f in files if f.rel not in skipped]
    elif config.rehash:
        todo = _verify_by_content(cache, [f for f in files if f.rel not in skipped])
    else:
        todo = [f for f in files if f.rel not in skipped and cache.lookup(f) is None]
        for file in todo:
            before = failed.get(file.rel)
            if before is not None and before.matches(file):
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(before.at))
                skipped[file.rel] = f"{before.reason} (unchanged since it failed on {when})"
                known.add(file.rel)
        todo = [f for f in todo if f.rel not in known]
    return todo, skipped, known


def _lasting(reason: str) -> bool:
    """Whether a failure is the file's own (it cannot be decoded) rather than this run's: a decode
    timeout (the machine may be busy) or a file changing or vanishing meanwhile is tried again."""
    return not any(s in reason for s in ("decoding took longer", "changed while it was read", "disappeared"))


def _remember_failures(
    directory: Path,
    failed: dict[str, Failure],
    files: list[ImageFile],
    todo: list[ImageFile],
    skipped: dict[str, str],
    known: set[str],
    whole_folder: bool,
) -> None:
    """Record the files this run could not embed, keep the records it relied on (and, when only
    some files were embedded, those of the others); every other record goes."""
    names = {f.rel for f in files}
    kept = {rel: f for rel, f in failed.items() if rel in known or (not whole_folder and rel not in names)}
    now = time.time()
    kept.update({f.rel: Failure.of(f, skipped[f.rel], now) for f in todo if f.rel in skipped and _lasting(skipped[f.rel])})
    if kept != failed:
        write_failures(directory, kept)


def _embed_and_keep(
    config: EmbedConfig,
    device: torch.device,
    hooks: EmbedHooks,
    cache: EmbeddingCache,
    writable: bool,
    backbone: Backbone | None,
    files: list[ImageFile],
    todo: list[ImageFile],
    skipped: dict[str, str],
    known: int,
    compact: bool,
    onnx_model: Path | None = None,
) -> tuple[list[tuple[str, np.ndarray | None]], int]:
    """Embed ``todo`` into the open, locked cache (``backbone`` is None only when ``todo`` is empty)
    and, when ``compact``, keep only these files' rows; ``known`` of the ``skipped`` failed before.
    Returns each file's (path, features or None), skipped ones left out, and how many features
    were reused."""
    directory = cache.directory
    for problem in cache.problems:
        hooks.on_warning(f"cache shard damaged and ignored (will re-embed): {problem}")
    reused = len(files) - len(skipped) - len(todo)
    if len(skipped) > known:  # counted here, so the totals below add up to the files found
        hooks.on_warning(f"{len(skipped) - known} file name(s) are not valid UTF-8 and will be skipped; rename them")
    if known:
        hooks.on_warning(f"{known} file(s) that could not be embedded before are unchanged and were not tried again ({{reembed}} does)")
    hooks.on_start(len(todo), reused)
    changed: dict[str, ImageFile] = {}

    def saved(where: str = "") -> str:
        """What a stopped run kept: every flushed batch stays in the cache, as the next run finds it."""
        kept = sum(cache.lookup(changed.get(f.rel, f)) is not None for f in files) if writable else reused
        return f"{kept} of {len(files)} files are saved in the cache{where} ({kept - reused} by this run)"

    input_size = tuple(backbone.data_config["input_size"]) if backbone is not None else None
    # A size given above the folder's is cut to it, as the default is: every pass is padded to the batch size, so
    # 128 on 6 images took 2.7 GB and 2.4x the time of 8 (more on larger inputs).
    given = config.batch_size
    batch_size = min(given, folder_batch(len(files))) if given else default_batch_size(device, len(files), input_size)
    with _stops_as_interrupt():
        try:
            if todo:
                assert backbone is not None  # built by embed_folder whenever there is something to embed
                _embed_into_cache(todo, cache, backbone, device, config, batch_size, skipped, hooks, changed, onnx_model)
        except KeyboardInterrupt as exc:
            raise Interrupted.wrap(
                exc, f"interrupted while embedding: {saved(f' {directory}')}; run the same command again to resume from there"
            ) from None
        except torch.OutOfMemoryError as exc:
            raise ImgclusterError(
                f"the GPU ran out of memory embedding batches of {batch_size} images ({first_sentences(exc, 2)}): "
                f"{saved()}; run again with a smaller {{embed_batch_size}} to resume"
            ) from None
        except RuntimeError as exc:
            if "DataLoader worker (pid" not in str(exc):
                raise
            # A decode process died under us, most often at the hands of the kernel's OOM killer.
            raise ImgclusterError(
                f"a decode worker died ({first_sentences(exc, 1)}), most often because memory ran out: {saved()}; "
                "run the same command again to resume, with fewer {workers} ({workers} 0) if it happens again"
            ) from None
    if changed:
        hooks.on_warning(f"{len(changed)} file(s) changed between the scan and decoding; they were embedded as they are now")
        files = [changed.get(f.rel, f) for f in files]
    if not writable and len(todo) > 0:
        hooks.on_warning(f"the cache {directory} cannot be written: the {len(todo)} image(s) embedded by this run were not saved in it")
    if compact:  # a run on some files keeps the features of the others
        hooks.on_mark("embed", SAVING)
        not_compacted = cache.compact([f for f in files if f.rel not in skipped])
        hooks.on_mark("embed", SAVED)
        if not_compacted:
            hooks.on_warning(not_compacted)
    return [(f.rel, cache.lookup(f)) for f in files if f.rel not in skipped], reused


def _onnx_model(backbone: Backbone, runtime: str) -> tuple[Path | None, str | None]:
    """The backbone exported for ONNX Runtime (quantised for ``onnx-int8/...``), or (None, why not) to run it in torch instead."""
    failure = recorded_runtime_failure(backbone.identity(), runtime)
    if failure is None:
        try:
            return (ensure_exported(backbone) if runtime == "onnx" else ensure_quantised(backbone)), None
        except ExportError as exc:
            failure = str(exc)
    return None, _onnx_refusal(backbone.name, failure)


def _onnx_refusal(model: str, failure: str) -> str:
    return f"cannot run {model} in ONNX Runtime ({failure}); running it in torch"


def _named_files(folder: Path, names: Collection[str], unsupported: list[str]) -> list[ImageFile]:
    """The image files ``names`` (relative to ``folder``), in that order, without scanning the folder
    (their common folder may be large). A name that is no image file is a mistake, not a skip."""
    files, missing = [], []
    for rel in dict.fromkeys(names):
        path = folder / rel
        if path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
            unsupported.append(rel)
            continue
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or path.suffix.lower() not in IMAGE_EXTENSIONS:
            missing.append(rel)
            continue
        files.append(ImageFile(rel, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    if missing:
        raise ParameterError(
            f"{len(missing)} of the paths are not image files imgcluster reads (missing, a folder or another format), e.g. {missing[0]!r}",
            "folder_or_paths",
        )
    return files


def _verify_by_content(cache: EmbeddingCache, files: list[ImageFile]) -> list[ImageFile]:
    """``rehash``: keep a cached vector only for a file whose bytes hash to what was embedded,
    whatever its stat says; one kept under a new stat is recorded under it. Returns the rest."""
    todo: list[ImageFile] = []
    rekeyed: list[tuple[ImageFile, str]] = []
    for file in files:
        recorded = cache.recorded_hash(file.rel)
        try:
            same = bool(recorded) and content_hash(file.path) == recorded
        except ImageDecodeError:
            same = False
        if not same:
            todo.append(file)
        elif cache.lookup(file) is None:
            rekeyed.append((file, recorded))
    if rekeyed:
        vectors = np.stack([cache.vector(f.rel) for f, _ in rekeyed])
        cache.add([f for f, _ in rekeyed], vectors, [h for _, h in rekeyed])
    return todo


def _embed_into_cache(
    todo: list[ImageFile],
    cache: EmbeddingCache,
    backbone: Backbone,
    device: torch.device,
    config: EmbedConfig,
    batch_size: int,
    skipped: dict[str, str],
    hooks: EmbedHooks,
    changed: dict[str, ImageFile],
    onnx_model: Path | None = None,
) -> None:
    """Embed ``todo`` and save every ``flush_every()`` images or ``flush_seconds()``, whichever
    comes first, so that a killed run loses at most that much; ``changed`` gets files re-stat'ed
    at decode time."""
    every, seconds = flush_every(), flush_seconds()
    pending_files: list[ImageFile] = []
    pending_hashes: list[str] = []
    pending_feats: list[np.ndarray] = []
    saved_at = [time.monotonic()]

    def flush() -> None:
        if pending_files:
            hooks.on_mark("embed", SAVING)
            cache.add(pending_files, np.concatenate(pending_feats), pending_hashes)
            hooks.on_mark("embed", SAVED)
            pending_files.clear()
            pending_hashes.clear()
            pending_feats.clear()
        saved_at[0] = time.monotonic()

    try:
        workers = _workers(config.workers, len(todo), batch_size, device, hooks)
        plan = plan_loader(workers, batch_size, tuple(backbone.data_config["input_size"]), device.type == "cuda", shared_memory_free())
        if plan.note:
            hooks.on_warning(plan.note)
        batches = _without_worker_advice(
            embed_files(todo, backbone, device, batch_size, plan.workers, config.compile_model, plan.prefetch, hooks.on_mark, onnx_model)
        )
        for batch in batches:
            for i, reason in batch.failures:
                skipped[todo[i].rel] = reason
            # Features the cache's dtype cannot hold (float16: beyond 65504) became infinity in the shard, which the
            # next run refused as damaged and embedded again, forever: recorded as skipped instead, as a failed decode is.
            refused = unstorable(batch.features, cache.dtype, "the cache")
            for row, why in refused.items():
                skipped[todo[batch.indices[row]].rel] = f"{NOT_CACHED}{why}"
            for row, i in enumerate(batch.indices):
                if row in refused:
                    continue
                file = todo[i]
                stat, digest = batch.seen[i]
                if stat != file.stat_key:  # decoded content belongs to the stat seen at decode time
                    size, mtime_ns, ctime_ns, inode = stat
                    file = changed[file.rel] = dataclasses.replace(file, size=size, mtime_ns=mtime_ns, ctime_ns=ctime_ns, inode=inode)
                pending_files.append(file)
                pending_hashes.append(digest)
            if len(batch.indices) > len(refused):
                pending_feats.append(np.delete(batch.features, list(refused), axis=0) if refused else batch.features)
            hooks.on_advance(len(batch.indices) + len(batch.failures))
            if len(pending_files) >= every or time.monotonic() - saved_at[0] >= seconds:
                flush()
    finally:
        flush()  # on Ctrl-C too: every finished batch is kept


def _workers(given: int | None, todo: int, batch_size: int, device: torch.device, hooks: EmbedHooks) -> int:
    """Decode workers for ``todo`` images: never more than batches (a worker beyond that is a process
    that starts and waits), and one line when more were asked for than this process has cores."""
    workers = default_workers(todo, device) if given is None else given
    workers = min(workers, -(-todo // batch_size))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if given is not None and workers > cores:
        hooks.on_warning(f"{{workers}} {given} is more than the {cores} CPU cores this run may use: decoding can get slower, not faster")
    return workers


def _without_worker_advice(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches`` without torch's advice on the worker count, which it printed twice over several
    lines (its own ``UserWarning``, with the code that raised it); :func:`_workers` says it in one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
        yield from batches


def write_skipped(path: Path, skipped: list[tuple[str, str]], raw_csv: bool = False) -> None:
    """Names that are not UTF-8 are written with backslash escapes, so the CSV itself stays UTF-8."""
    from imgcluster.atomic import atomic_open
    from imgcluster.csvfile import CsvWriter

    with atomic_open(path, "w", newline="") as handle:
        writer = CsvWriter(handle, raw_csv, lineterminator="\r\n")
        writer.writerow(["path", "reason"])
        writer.writerows((printable_name(rel), reason) for rel, reason in skipped)


def printable_name(rel: str) -> str:
    """``rel`` as valid UTF-8: undecodable bytes (kept by Python as surrogates) become ``\\xNN``."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def head_path_for(cache_dir: Path, config: Any, paths: Sequence[str] = (), features: np.ndarray | None = None) -> Path:
    """Default checkpoint location: inside the embedding cache it was trained on.

    Named ``<objective>-k<K>-seed<S>-<hash>``, the hash covering the whole training config, the
    cache (backbone, dtype) and the images and features trained on: a run with other options,
    or on a folder that changed since, writes a head of its own instead of replacing the one an
    earlier CSV's sidecar names.
    """
    h = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True, default=str).encode())
    h.update(b"\0cache\0" + cache_dir.name.encode("utf-8", "surrogateescape"))
    h.update(b"\0paths\0" + "\0".join(paths).encode("utf-8", "surrogateescape"))
    if features is not None:
        h.update(b"\0features\0" + np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return cache_dir / "heads" / f"{config.objective}-k{config.clusters}-seed{config.seed}-{h.hexdigest()[:12]}.safetensors"
