"""``imgcluster.embed``: the features of a folder's images (or of a list of image files), cached."""

from __future__ import annotations

import numbers
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgcluster.config import EmbedConfig
from imgcluster.errors import ParameterError, literal
from imgcluster.head_config import check_flags, check_whole
from imgcluster.models import check_model_name
from imgcluster.onnxruntime_backend import check_runtime
from imgcluster.preflight import FolderListing, check_dtype, check_environment, check_inputs, check_weights_file
from imgcluster.progress import ProgressFn, Reporter, check_progress, count, keeping_warnings
from imgcluster.signals import Interrupted
from imgcluster.userpath import expand_home, path_argument

if TYPE_CHECKING:
    from imgcluster.pipeline import Embeddings

__all__ = ["embed"]

PathLike = str | os.PathLike[str]


def embed(
    folder_or_paths: PathLike | Sequence[PathLike],
    model: str = "auto",
    *,
    weights: PathLike | None = None,
    cache_dir: PathLike | None = None,
    device: str = "auto",
    dtype: str = "float16",
    embed_batch_size: int | None = None,
    workers: int | None = None,
    follow_symlinks: bool = False,
    compile_model: bool = False,
    lock_timeout: float = 0.0,
    rehash: bool = False,
    reembed: bool = False,
    runtime: str = "auto",
    progress: ProgressFn | None = None,
) -> Embeddings:
    """Embed every image in a folder (recursively), reusing the cached features of unchanged files.

    A list of image files is embedded as part of their closest common folder: paths in the
    result are relative to it (``Embeddings.folder``) and the cache is that folder's, so a later
    run on the whole folder reuses these features. Files that cannot be decoded are skipped
    and listed in ``Embeddings.skipped`` with the reason; ``Embeddings.warnings`` keeps every warning.
    A cached feature is reused while the file's size, mtime, ctime and inode are unchanged;
    ``rehash`` reuses it only when the file's content hash matches, ``reembed`` embeds every image
    again. ``runtime`` runs the model in ``torch`` or ``onnx`` (ONNX Runtime, CPU only, exported once per
    backbone and kept in the user's cache folder), or ``onnx-int8`` (that export quantised to int8
    with activation ranges shipped in the package, :mod:`imgcluster.int8`); ``auto`` is onnx-int8 for the bundled
    EfficientNet-Lite0 on the CPU (half of torch's time) and torch otherwise, or always with ``$IMGCLUSTER_RUNTIME=torch``
    (:func:`imgcluster.onnxruntime_backend.auto_runtime`). Each runtime's features are cached apart. ``progress`` receives
    :class:`imgcluster.progress.Event` objects (stages ``model`` and ``embed``; ``mark`` events time
    the model's preparation, decoding, forward passes and cache writes); nothing is printed.
    """
    check_embedding_options(embed_batch_size, workers, lock_timeout, dtype)
    check_flags(follow_symlinks=follow_symlinks, compile_model=compile_model, rehash=rehash, reembed=reembed)
    check_progress(progress)
    weights, cache_dir = expand_home(weights), expand_home(cache_dir)
    folder, only = _folder_and_files(folder_or_paths)
    listing = None
    if only is None:  # before torch is imported: a mistake costs a fraction of a second
        listing = check_inputs(folder, model, follow_symlinks=follow_symlinks, cache_dir=cache_dir, weights=weights)
    else:
        check_model_name(model)
        check_weights_file(weights)
        check_environment()
    return embed_checked(
        folder, only, model, listing=listing, weights=weights, cache_dir=cache_dir, device=device, dtype=dtype,
        embed_batch_size=embed_batch_size, workers=workers, follow_symlinks=follow_symlinks, compile_model=compile_model,
        lock_timeout=lock_timeout, rehash=rehash, reembed=reembed, runtime=runtime, progress=progress,
    )  # fmt: skip


def embed_checked(
    folder: Path,
    only: list[str] | None,
    model: str,
    *,
    listing: FolderListing | None = None,
    weights: PathLike | None,
    cache_dir: PathLike | None,
    device: str,
    dtype: str,
    embed_batch_size: int | None,
    workers: int | None,
    follow_symlinks: bool,
    compile_model: bool,
    lock_timeout: float,
    rehash: bool = False,
    reembed: bool = False,
    runtime: str = "auto",
    progress: ProgressFn | None,
) -> Embeddings:
    """:func:`embed` once :mod:`imgcluster.preflight` has passed ``folder`` (``only``: some of its files;
    ``listing``: the scan the checks made)."""
    check_runtime(runtime)
    progress, warnings = keeping_warnings(progress)
    report = Reporter(progress, "embed")
    report.at("model").info(f"starting with model {model} (importing torch) ...")  # that takes seconds; "starting (auto)" said nothing
    started = [False]  # the embedding began: from then on a stop's line says what was kept
    try:
        from imgcluster.pipeline import EmbedHooks, embed_folder, resolve_device

        dev = resolve_device(device)
        config = EmbedConfig(
            str(folder), model, _str(weights), _str(cache_dir), embed_batch_size, workers, dtype, follow_symlinks, compile_model,
            rehash=rehash, reembed=reembed, runtime=runtime,
        )  # fmt: skip

        def on_start(todo: int, reused: int) -> None:
            started[0] = True
            report.info(f"{count(todo + reused, 'image')}: {reused} cached, {todo} to embed")
            report.start(todo)

        hooks = EmbedHooks(
            on_ready=lambda name, cache, runtime: report.at("model").info(f"model {name} on {dev}{_runtime_note(runtime)}; cache {cache}"),
            on_start=on_start,
            on_advance=report.advance,
            on_warning=report.warning,
            on_wait=report.info,
            on_mark=lambda stage, message: report.at(stage).mark(message),
            on_build=lambda name: report.at("model").info(f"loading the model ({name}) ..."),
        )
        result = embed_folder(config, dev, hooks, lock_timeout, only, listing)
    except KeyboardInterrupt as exc:
        if str(exc):  # the embedding said what it kept
            raise
        raise Interrupted.wrap(exc, STOPPED_AFTER if started[0] else STOPPED_BEFORE) from None
    result.warnings = warnings
    report.info(f"embedded {result.embedded}, reused {result.reused}, skipped {len(result.skipped)} in {result.seconds:.1f}s")
    return result


def _runtime_note(runtime: str) -> str:
    """`` (onnx-int8)`` for a model not run in torch: the line that names the model and the device names
    what ``auto`` chose for them, and so for the runtime (the int8 recipe's digest is in the cache's name)."""
    return "" if runtime == "torch" else f" ({runtime.split('/')[0]})"


# What a stop that the embedding loop did not describe keeps: before it (importing torch, loading
# the model, reading the cache), nothing; after it (compacting the cache), every feature, whose
# shards stay valid. Their line said "every finished batch is kept in the cache" either way.
STOPPED_BEFORE = "interrupted while starting (loading torch, the model and the cache): nothing was embedded by this run"
STOPPED_AFTER = "interrupted while saving the cache: every image embedded is saved in it, and the next run finds it there"


def check_embedding_options(embed_batch_size: int | None, workers: int | None, lock_timeout: float, dtype: str) -> None:
    """What the command line's option types refuse, refused from Python too, by name and before
    any work (a batch size of 0 was taken as the default without a word)."""
    check_dtype(dtype)
    check_whole("embed_batch_size", embed_batch_size, 1)
    check_whole("workers", workers, 0)
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, numbers.Real) or not lock_timeout >= 0:
        raise ParameterError(f"{{lock_timeout}} is a number of seconds, 0 or more; got {lock_timeout!r}")


def _folder_and_files(source: PathLike | Sequence[PathLike]) -> tuple[Path, list[str] | None]:
    """A folder as it is; a list of files as (their closest common folder, their paths relative to it)."""
    if isinstance(source, bytes):  # a file-system name as bytes, not a list of numbers
        source = os.fsdecode(source)
    if isinstance(source, (str, os.PathLike)):
        return Path(path_argument(source, "folder_or_paths", "a folder or a list of image files")), None
    if not isinstance(source, Iterable):
        raise ParameterError(f"{{folder_or_paths}} takes a folder or a list of image files, not {literal(repr(source))}")
    items = list(source)
    odd = next((p for p in items if not isinstance(p, (str, bytes, os.PathLike))), None)
    if odd is not None:  # a TypeError from pathlib
        raise ParameterError(f"{{folder_or_paths}} takes a folder or a list of image files, and the list holds {literal(repr(odd))}")
    files = [Path(expand_home(os.fsdecode(p))).absolute() for p in items]
    if not files:
        raise ParameterError("{folder_or_paths} is an empty list; give a folder or some image files")
    twice = next((f for f, n in Counter(files).items() if n > 1), None)
    if twice is not None:  # it gave one row for both: the features no longer lined up with the list
        raise ParameterError(f"{{folder_or_paths}} lists {literal(twice)} more than once; each file has one row of features")
    folder = Path(os.path.commonpath([f.parent for f in files]))
    return folder, [f.relative_to(folder).as_posix() for f in files]


def _str(value: PathLike | None) -> str | None:
    return None if value is None else os.fspath(value)
