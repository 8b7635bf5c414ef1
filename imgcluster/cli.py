"""The ``imgcluster`` command line: parse, pick the device, show progress, call the library."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

try:  # recent typer releases bundle their own click, whose errors derive from TyperException
    from typer.exceptions import TyperException as CommandLineError
except ImportError:  # pragma: no cover - older typer raises click's own
    from click import ClickException as CommandLineError  # type: ignore[assignment]

from imgcluster import __version__
from imgcluster.atomic import check_writable, is_stream
from imgcluster.config import (
    DEFAULT_CLUSTERS,
    DEFAULT_KNN,
    DEFAULT_OBJECTIVE,
    AssignConfig,
    EmbedConfig,
    TrainConfig,
    sidecar_path,
    write_sidecar,
)
from imgcluster.errors import ImgclusterError, ParameterError, UserError, first_sentences
from imgcluster.ui import UI, count


class OneLineErrors(TyperGroup):
    """Usage mistakes (a bad option value, a missing argument) as one ``error:`` line and exit code 2.

    Typer draws them as a multi-line panel; batch scripts and their logs want one line, like the
    runtime errors in :func:`handled`.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except CommandLineError as exc:
            ctx = getattr(exc, "ctx", None)  # usage errors carry the command they came from
            where = f"{ctx.command_path} --help" if ctx is not None else "imgcluster --help"
            message = exc.format_message().strip()
            if message:  # empty when the help was shown instead (no arguments at all)
                typer.echo(f"error: {message} (see {where})", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    name="imgcluster",
    help="Sort a folder of images into groups without labels.\n\n"
    "Quick start: [bold]imgcluster assign ./photos --out clusters.csv[/bold]",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _positive(value: float) -> float:
    """Option callback for values that must be strictly positive (Typer's ``min`` cannot exclude 0)."""
    if not value > 0:
        raise typer.BadParameter(f"must be above 0, got {value:g}")
    return value


# ---- options shared by several commands --------------------------------------------------------
Folder = Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder of images (searched recursively).", show_default=False)]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Backbone: auto, dinov2-vits14, dinov2-vitb14, dino-vits16, clip-vitb16, efficientnet-lite0. "
        "auto = dinov2-vits14 when its weights can be had, else the bundled offline efficientnet-lite0.",
    ),
]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Load backbone weights from a local file (.safetensors or .pth).")]
CacheOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir",
        help="A cache root shared by any number of folders (each gets its own sub-folder). "
        "Default: $IMGCLUSTER_CACHE, else FOLDER/.imgcluster.",
    ),
]
EmbedBatchOpt = Annotated[
    Optional[int],
    typer.Option("--embed-batch-size", min=1, help="Images per forward pass. Default: 16 on the CPU, 256 on CUDA; less for small folders."),
]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help="Image decoding processes. Default: from the CPU count.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Storage type of cached features: float16 or float32.")]
SymlinkOpt = Annotated[bool, typer.Option("--follow-symlinks", help="Follow links that point outside FOLDER.")]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="torch.compile the backbone on CUDA (faster on large folders; ignored on the CPU).")
]
LockTimeoutOpt = Annotated[
    float,
    typer.Option("--lock-timeout", min=0, help="Seconds to wait while another run uses the same cache. Default 0: fail at once."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
ObjectiveOpt = Annotated[str, typer.Option("--objective", "-o", help="Clustering objective (see `imgcluster objectives`).")]
ClustersOpt = Annotated[
    str,
    typer.Option(
        "--clusters", "-k", metavar="K|auto", help="Number of clusters K, or auto: chosen from the features between --k-min and --k-max."
    ),
]
KMinOpt = Annotated[int, typer.Option("--k-min", min=2, help="Smallest K that --clusters auto considers.")]
KMaxOpt = Annotated[int, typer.Option("--k-max", min=2, help="Largest K that --clusters auto considers.")]
EpochsOpt = Annotated[
    int,
    typer.Option("--epochs", min=1, help="Training epochs. Unless given, small folders train longer, to reach 300 optimiser steps."),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=2, help="Training batch size.")]
LrOpt = Annotated[float, typer.Option("--lr", callback=_positive, help="Learning rate (AdamW).")]
# At most 1,000: the table is N x k (8 GB at 1M images and k = 1,000) and faiss-gpu stops at 2,048.
KnnOpt = Annotated[int, typer.Option("--knn", min=1, max=1000, help="Neighbours mined per image for consistency pairs (1-1000).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: same seed and input give the same result on the CPU.")]
BalanceOpt = Annotated[
    Optional[float],
    typer.Option(
        "--balance",
        min=0.0,
        help="Weight of the objective's pull towards equal cluster sizes, times its paper default: below 1 for "
        "imbalanced folders, above 1 when clusters come out empty (scan, temi, secu, dsc2i, mixture-em).",
    ),
]
SelfLabelOpt = Annotated[
    bool, typer.Option("--self-label", help="scan: add SCAN's self-labelling stage on confident images (class-balanced CE).")
]
UcoOpt = Annotated[bool, typer.Option("--uco", help="ddc: add the companion objectives on the input and hidden layers.")]
OptionOpt = Annotated[
    Optional[list[str]], typer.Option("--option", help="Objective hyper-parameter KEY=VALUE (repeatable), e.g. entropy_weight=5.")
]


@contextmanager
def handled(ui: UI) -> Iterator[None]:
    """One-line errors with exit codes; tracebacks only for bugs, and only with IMGCLUSTER_DEBUG=1."""
    from imgcluster.signals import note_stop, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            yield
    except ParameterError as exc:  # a bad value: named by its flag, exit 2 as for Click's usage errors
        ui.error(exc.render(FlagNames()))
        raise typer.Exit(2) from None
    except UserError as exc:
        ui.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except ImgclusterError as exc:
        ui.error(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the message says what was kept, when known
        ui.error(str(exc) or "interrupted; every finished batch is kept in the cache and the next run resumes from there")
        raise typer.Exit(note_stop(exc)) from None
    except typer.Exit:
        raise
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as other tools do
        _silence_stdout()
        raise typer.Exit(PIPE_CLOSED) from None
    except Exception as exc:
        if os.environ.get("IMGCLUSTER_DEBUG") == "1":
            raise
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, on CUDA; not imported here to keep --help fast
            ui.error(
                f"the GPU ran out of memory ({first_sentences(exc, 2)}); lower --batch-size (training) or "
                "--embed-batch-size (embedding), or run with --device cpu"
            )
            raise typer.Exit(1) from None
        ui.error(f"unexpected {type(exc).__name__}: {exc} (run with IMGCLUSTER_DEBUG=1 for details)")
        raise typer.Exit(1) from None


# Library parameters whose flag is not simply ``--`` + the name with dashes.
FLAG_OVERRIDES = {"n_clusters": "--clusters", "folder": "FOLDER", "embed_batch_size": "--embed-batch-size"}


class FlagNames(dict[str, str]):
    """Maps a library parameter name to the flag a user typed: ``k_max`` -> ``--k-max``."""

    def get(self, key: str, default: str | None = None) -> str:  # type: ignore[override]
        return FLAG_OVERRIDES.get(key, "--" + key.replace("_", "-"))


PIPE_CLOSED = 141  # 128 + SIGPIPE, the status a shell reports for a writer whose pipe closed


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imgcluster {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Sort a folder of images into groups without labels."""


# ---- helpers the commands share ----------------------------------------------------------------
def _parse_options(options: list[str] | None) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option takes KEY=VALUE, got {item!r}", exit_code=2)
        try:
            parsed[key.strip()] = json.loads(raw)
        except ValueError:
            parsed[key.strip()] = raw
    return parsed


def _embed(ui: UI, config: EmbedConfig, device: Any, lock_timeout: float = 0.0) -> Any:
    from imgcluster.pipeline import EmbedHooks, embed_folder

    with ui.progress("embedding") as bar:

        def on_start(todo: int, reused: int) -> None:
            ui.info(f"{count(todo + reused, 'image')}: {reused} cached, {todo} to embed")
            bar.start(todo)

        hooks = EmbedHooks(
            on_ready=lambda model, cache: ui.info(f"model {model} on {device}; cache {cache}"),
            on_start=on_start,
            on_advance=bar.advance,
            on_warning=ui.warn,
            on_wait=ui.info,
        )
        result = embed_folder(config, device, hooks, lock_timeout)
    ui.info(f"embedded {result.embedded}, reused {result.reused}, skipped {len(result.skipped)} in {result.seconds:.1f}s")
    return result


# assign's options that shape a head's training: meaningless with --head, whose training is done.
TRAINING_PARAMETERS = (
    "objective", "clusters", "k_min", "k_max", "epochs", "batch_size", "lr", "knn", "seed", "balance", "self_label", "uco", "option",
)  # fmt: skip


def _refuse_training_options(ctx: typer.Context) -> None:
    """A usage error naming the training options given with ``--head``, rather than ignoring them."""
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    given = [flags.get(name, name) for name in TRAINING_PARAMETERS if _given(ctx, name)]
    if given:
        raise UserError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to training, "
            "and --head uses a head that is already trained; "
            "leave them out, or leave out --head to train a new one",
            exit_code=2,
        )


def _report_skipped(ui: UI, result: Any, beside: Path | None) -> Path | None:
    """Write the list of skipped files beside the output CSV (``photos-clusters-skipped.csv``) or
    in the cache (``skipped.csv``), and say so in one line. A list left by an earlier run that
    skipped files is removed when this run skipped none, so it never describes another run."""
    from imgcluster.pipeline import write_skipped

    path = beside.with_name(f"{beside.stem}-skipped.csv") if beside is not None else result.cache_dir / "skipped.csv"
    if not result.skipped:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    write_skipped(path, result.skipped)
    ui.warn(f"skipped {count(len(result.skipped), 'unreadable file')}; details in {path}")
    return path


LOG_EPOCH_LINES = 10


def _train(ui: UI, result: Any, config: TrainConfig, device: Any) -> Any:
    from imgcluster.objectives import objective_class
    from imgcluster.pipeline import mine_neighbours
    from imgcluster.train import effective_schedule, train_objective

    neighbours = mine_neighbours(result.features, config.knn, device)
    n = len(result.features)
    batch, epochs = effective_schedule(n, config)
    if epochs > config.epochs and objective_class(config.objective).trainable:  # why a run takes longer than asked
        ui.info(f"{n} images: {epochs} epochs of batch {batch} instead of {config.epochs}, to reach {config.min_steps} steps")
    with ui.progress(f"training {config.objective}", unit="epochs") as bar:
        started = False

        def on_epoch(log: Any, total: int) -> None:
            nonlocal started
            if not started:
                bar.start(total)
                started = True
            bar.advance(1, status=f"loss {log.loss:.4f}")
            # Without a progress bar: about ten loss lines however long the run (all are in the checkpoint's JSON).
            every = -(-total // LOG_EPOCH_LINES)
            if not ui.interactive and (log.epoch == 1 or log.epoch % every == 0 or log.epoch == total):
                ui.info(f"epoch {log.epoch}/{total} [{log.stage}] loss {log.loss:.4f} ({log.seconds:.1f}s)")

        try:
            trained = train_objective(result.features, neighbours, config, device, on_epoch)
        except KeyboardInterrupt as exc:
            from imgcluster.signals import Interrupted

            raise Interrupted.wrap(
                exc,
                f"interrupted while training: the features of all {len(result.paths)} images stay cached in {result.cache_dir}; "
                "no head or CSV was written by this run, the next run trains again from the cached features",
            ) from None
    ui.info(f"trained {config.objective} (K={config.clusters}) in {trained.seconds:.1f}s")
    if trained.empty_clusters:
        ui.warn(
            f"{trained.empty_clusters} of {config.clusters} clusters are empty; "
            "try fewer --clusters, or --balance 2 for a stronger pull towards equal cluster sizes"
        )
    return trained


def _save_head(
    result: Any,
    trained: Any,
    embed_config: EmbedConfig,
    train_config: TrainConfig,
    out: Path | None,
    choose_k: dict[str, Any] | None = None,
) -> Path:
    from imgcluster.checkpoint import save_checkpoint
    from imgcluster.pipeline import head_path_for

    path = out or head_path_for(result.cache_dir, train_config)
    save_checkpoint(
        path,
        trained.objective,
        {
            "backbone": result.identity,
            "train": train_config.__dict__,
            "embed": embed_config.__dict__,
            "images": len(result.paths),
            "empty_clusters": trained.empty_clusters,
            "train_seconds": trained.seconds,
            "schedule": trained.schedule,
            "history": [log.__dict__ for log in trained.history],
            **({"choose_k": choose_k} if choose_k is not None else {}),
        },
    )
    return path


def _parse_clusters(clusters: str, k_min: int, k_max: int) -> int | None:
    """``--clusters``: a whole number, or None for ``auto``; checked before any embedding."""
    from imgcluster.choose_k import parse_clusters

    try:
        requested = parse_clusters(clusters)
    except ValueError as exc:
        raise UserError(str(exc), exit_code=2) from None
    if requested is None and k_max < k_min:
        raise UserError(f"--k-max ({k_max}) must not be below --k-min ({k_min})", exit_code=2)
    return requested


def _auto_clusters(
    ui: UI, config: TrainConfig, requested: int | None, k_min: int, k_max: int, features: Any
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """``--clusters auto``: choose K from the cached features, say why on stderr, return the evidence to record."""
    import dataclasses

    from imgcluster.choose_k import choose_k

    if requested is not None:
        return config, None
    try:
        choice = choose_k(features, k_min, k_max, seed=config.seed)
    except ValueError as exc:
        raise UserError(str(exc), exit_code=2) from None
    ui.info(choice.explanation)
    return dataclasses.replace(config, clusters=choice.k), choice.to_dict()


OUTLIER_RULE = "confidence < min_confidence, or cosine distance to the cluster's mean feature > median + 3 * 1.4826 * MAD of that cluster"


def _near_duplicates(ui: UI, result: Any, threshold: float | None, out_path: Path | None, device: Any) -> dict[str, Any] | None:
    """``--near-duplicates``: write ``<csv stem>-duplicates.csv`` and say how many groups it holds."""
    if threshold is None or out_path is None:
        return None
    from imgcluster.duplicates import duplicates_path, find_near_duplicates, write_duplicates

    groups = find_near_duplicates(result.features, threshold, use_gpu=device.type == "cuda")
    path = write_duplicates(duplicates_path(out_path), result.paths, groups)
    images = sum(len(g.members) for g in groups)
    ui.info(f"{count(len(groups), 'near-duplicate group')} ({count(images, 'image')}, cosine similarity >= {threshold}) in {path}")
    return {"threshold": threshold, "groups": len(groups), "images": images, "csv": str(path)}


def _train_config(
    objective: str,
    clusters: int,
    epochs: int,
    batch_size: int,
    lr: float,
    knn: int,
    seed: int,
    options: list[str] | None,
    epochs_given: bool = False,
    **shortcuts: Any,
) -> TrainConfig:
    """The train config, with the ``shortcuts`` (balance, self_label, uco) folded into the objective's options.

    Small folders train for more than the default epochs (to reach ``min_steps``); epochs the user
    asked for with ``--epochs`` are run as asked.
    """
    from imgcluster.objectives import objective_flags

    return TrainConfig(
        objective=objective, clusters=clusters, epochs=epochs, batch_size=batch_size, lr=lr, knn=knn, seed=seed,
        min_steps=0 if epochs_given else TrainConfig.min_steps,
        objective_options=objective_flags(objective, _parse_options(options), **shortcuts),
    )  # fmt: skip


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set parameter ``name`` (on the command line or through the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


# ---- commands ----------------------------------------------------------------------------------
@app.command(
    epilog="Examples:\n\n  imgcluster embed ./photos\n\n  imgcluster embed ./photos --model efficientnet-lite0 --cache-dir /tmp/cache",
)
def embed(
    folder: Folder,
    model: ModelOpt = "auto",
    weights: WeightsOpt = None,
    cache_dir: CacheOpt = None,
    embed_batch_size: EmbedBatchOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float16",
    follow_symlinks: SymlinkOpt = False,
    compile_model: CompileOpt = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    quiet: QuietOpt = False,
) -> None:
    """Compute and cache backbone features; a second run embeds only new or changed images."""
    from imgcluster.pipeline import resolve_device

    ui = UI(quiet)
    with handled(ui):
        config = EmbedConfig(
            str(folder), model, _str(weights), _str(cache_dir), embed_batch_size, workers, dtype, follow_symlinks, compile_model
        )
        result = _embed(ui, config, resolve_device(device), lock_timeout)
        _report_skipped(ui, result, None)


@app.command(
    epilog="Examples:\n\n  imgcluster train ./photos --clusters 8\n\n"
    "  imgcluster train ./photos --objective temi --out head.safetensors",
)
def train(
    ctx: typer.Context,
    folder: Folder,
    objective: ObjectiveOpt = DEFAULT_OBJECTIVE,
    clusters: ClustersOpt = str(DEFAULT_CLUSTERS),
    k_min: KMinOpt = 2,
    k_max: KMaxOpt = 20,
    epochs: EpochsOpt = TrainConfig.epochs,
    batch_size: BatchOpt = TrainConfig.batch_size,
    lr: LrOpt = TrainConfig.lr,
    knn: KnnOpt = DEFAULT_KNN,
    seed: SeedOpt = 0,
    balance: BalanceOpt = None,
    self_label: SelfLabelOpt = False,
    uco: UcoOpt = False,
    option: OptionOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Checkpoint path (.safetensors; a .json goes beside it).")] = None,
    model: ModelOpt = "auto",
    weights: WeightsOpt = None,
    cache_dir: CacheOpt = None,
    embed_batch_size: EmbedBatchOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float16",
    follow_symlinks: SymlinkOpt = False,
    compile_model: CompileOpt = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    quiet: QuietOpt = False,
) -> None:
    """Embed (cached) and train a clustering head; saves a reusable checkpoint."""
    from imgcluster.pipeline import resolve_device

    ui = UI(quiet)
    with handled(ui):
        dev = resolve_device(device)
        embed_config = EmbedConfig(
            str(folder), model, _str(weights), _str(cache_dir), embed_batch_size, workers, dtype, follow_symlinks, compile_model
        )
        requested = _parse_clusters(clusters, k_min, k_max)
        train_config = _train_config(
            objective, DEFAULT_CLUSTERS if requested is None else requested, epochs, batch_size, lr, knn, seed, option,
            epochs_given=_given(ctx, "epochs"), balance=balance, self_label=self_label, uco=uco,
        )  # fmt: skip
        if out is not None:
            check_writable(out)
        result = _embed(ui, embed_config, dev, lock_timeout)
        _report_skipped(ui, result, None)
        train_config, choice = _auto_clusters(ui, train_config, requested, k_min, k_max, result.features)
        trained = _train(ui, result, train_config, dev)
        path = _save_head(result, trained, embed_config, train_config, out, choice)
        ui.info(f"head saved to {path}")


@app.command(
    epilog="Examples:\n\n  imgcluster assign ./photos                       # whole pipeline, CSV in ./photos-clusters.csv\n\n"
    "  imgcluster assign ./photos --clusters 5 --out - > clusters.csv\n\n"
    "  imgcluster assign ./photos --clusters auto --near-duplicates 0.98 --out clusters.csv\n\n"
    "  imgcluster assign ./new-photos --head ./photos/.imgcluster/embeddings/*/heads/secu-k10-seed0.safetensors",
)
def assign(
    ctx: typer.Context,
    folder: Folder,
    out: Annotated[
        Optional[str], typer.Option("--out", help="CSV path, or - for stdout. Default: ./<folder name>-clusters.csv.")
    ] = None,
    head: Annotated[Optional[Path], typer.Option("--head", help="Use a trained head checkpoint instead of training one.")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Add the objective's explanation columns (dsc2i: distances).")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also write an HTML report beside the CSV (see `imgcluster report`).")] = False,
    min_confidence: Annotated[
        float,
        typer.Option(
            "--min-confidence",
            min=0.0,
            max=1.0,
            help="Mark images whose confidence is below this as outliers (outlier column); images far from their "
            "cluster's centre (cosine distance above median + 3 robust SD in that cluster) are marked too.",
        ),
    ] = 0.5,
    near_duplicates: Annotated[
        Optional[float],
        typer.Option(
            "--near-duplicates",
            metavar="THRESHOLD",
            help="Also list groups of near-identical images (cosine similarity >= THRESHOLD, e.g. 0.98) in "
            "<csv stem>-duplicates.csv beside the CSV.",
        ),
    ] = None,
    objective: ObjectiveOpt = DEFAULT_OBJECTIVE,
    clusters: ClustersOpt = str(DEFAULT_CLUSTERS),
    k_min: KMinOpt = 2,
    k_max: KMaxOpt = 20,
    epochs: EpochsOpt = TrainConfig.epochs,
    batch_size: BatchOpt = TrainConfig.batch_size,
    lr: LrOpt = TrainConfig.lr,
    knn: KnnOpt = DEFAULT_KNN,
    seed: SeedOpt = 0,
    balance: BalanceOpt = None,
    self_label: SelfLabelOpt = False,
    uco: UcoOpt = False,
    option: OptionOpt = None,
    model: ModelOpt = "auto",
    weights: WeightsOpt = None,
    cache_dir: CacheOpt = None,
    embed_batch_size: EmbedBatchOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float16",
    follow_symlinks: SymlinkOpt = False,
    compile_model: CompileOpt = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    quiet: QuietOpt = False,
) -> None:
    """Write a CSV of cluster labels (path, cluster, confidence), one row per image.

    Without --head it runs the whole pipeline: scan, embed (cached), mine neighbours, train, assign.
    """
    import numpy as np

    from imgcluster.assign import mark_outliers, predict, write_assignments
    from imgcluster.checkpoint import check_backbone, load_checkpoint
    from imgcluster.pipeline import resolve_device

    ui = UI(quiet)
    with handled(ui):
        dev = resolve_device(device)
        out = out or f"{Path(folder).resolve().name}-clusters.csv"
        out_path = None if out == "-" else Path(out)
        if out_path is not None and out_path.is_dir():
            raise UserError(f"--out {out} is a folder; give a file name", exit_code=2)
        # Files that describe the CSV (its .json, the skipped list, the report) go beside it: only
        # when it is a regular file, not stdout, /dev/null or a pipe.
        beside = out_path if out_path is not None and not is_stream(out_path) else None
        where = "stdout" if out_path is None else f"{out}, which is not a regular file"
        if report and beside is None:
            raise UserError(f"--report needs --out FILE: the report is written beside the CSV, not beside {where}", exit_code=2)
        if near_duplicates is not None and beside is None:
            raise UserError(f"--near-duplicates needs --out FILE: its CSV is written beside the CSV, not beside {where}", exit_code=2)
        if near_duplicates is not None and not 0.0 < near_duplicates <= 1.0:
            raise UserError(f"--near-duplicates is a cosine similarity in (0, 1], got {near_duplicates}", exit_code=2)
        requested = _parse_clusters(clusters, k_min, k_max) if head is None else None
        choice: dict[str, Any] | None = None
        if out_path is not None:
            check_writable(out_path)  # fail before the embedding, not after it
        head_meta: dict[str, Any] | None = None
        train_config: TrainConfig | None = None
        if head is not None:
            _refuse_training_options(ctx)
            trained_objective, head_meta = load_checkpoint(head)
            if model == "auto" and weights is None:
                model = head_meta.get("backbone", {}).get("model", model)
        else:  # objective options are checked now, not after the embedding
            train_config = _train_config(
                objective, DEFAULT_CLUSTERS if requested is None else requested, epochs, batch_size, lr, knn, seed, option,
                epochs_given=_given(ctx, "epochs"), balance=balance, self_label=self_label, uco=uco,
            )  # fmt: skip
        embed_config = EmbedConfig(
            str(folder), model, _str(weights), _str(cache_dir), embed_batch_size, workers, dtype, follow_symlinks, compile_model
        )
        result = _embed(ui, embed_config, dev, lock_timeout)
        if head_meta is not None:
            if int(head_meta["feature_dim"]) != result.features.shape[1]:
                raise UserError(
                    f"head {head} expects {head_meta['feature_dim']}-d features but {result.model} gives "
                    f"{result.features.shape[1]}-d; use --model {head_meta.get('backbone', {}).get('model', '?')}"
                )
            assert head is not None  # head_meta comes from it
            check_backbone(head_meta, result.identity, head)
            choice = head_meta.get("choose_k")
        else:
            assert train_config is not None
            train_config, choice = _auto_clusters(ui, train_config, requested, k_min, k_max, result.features)
            trained = _train(ui, result, train_config, dev)
            trained_objective = trained.objective
            head = _save_head(result, trained, embed_config, train_config, None, choice)
            ui.info(f"head saved to {head}")
        if not result.paths:
            raise UserError(f"none of the images in {folder} could be read")
        assignment = predict(trained_objective, result.features, dev, explain=explain)
        chance = 1.0 / trained_objective.n_clusters
        if float(assignment.confidence.max()) < chance + 0.01:
            ui.warn(
                f"the head is no surer of any image than chance (confidence at most {float(assignment.confidence.max()):.3f}, "
                f"chance {chance:.3f}): these clusters mean nothing; try more images or fewer --clusters"
            )
        found = mark_outliers(assignment, result.features, min_confidence)
        write_assignments(out, result.paths, assignment)
        ui.info(
            f"{count(found.count, 'outlier')} of {len(result.paths)} ({100 * found.count / max(1, len(result.paths)):.0f}%): "
            f"{int(found.low_confidence.sum())} below --min-confidence {min_confidence}, "
            f"{int(found.far_from_centre.sum())} far from their cluster's centre"
        )
        duplicates = _near_duplicates(ui, result, near_duplicates, beside, dev)
        skipped_csv = _report_skipped(ui, result, beside)
        assign_config = AssignConfig(str(Path(folder).resolve()), out, _str(head), explain)  # absolute: `report` runs from anywhere
        labels, counts = np.unique(assignment.cluster, return_counts=True)
        sizes = {int(k): int(v) for k, v in zip(labels, counts)}
        if beside is not None:
            write_sidecar(
                sidecar_path(beside),
                assign=assign_config,
                embed=embed_config,
                train=train_config if train_config is not None else (head_meta or {}).get("train"),
                backbone=result.identity,
                head={"path": str(head), "objective": trained_objective.name, "clusters": trained_objective.n_clusters},
                **({"choose_k": choice} if choice is not None else {}),
                result={
                    "images": len(result.paths),
                    "skipped": len(result.skipped),
                    "skipped_csv": _str(skipped_csv),
                    "cluster_sizes": sizes,
                    "outliers": {"min_confidence": min_confidence, "rule": OUTLIER_RULE, **found.summary()},
                    "near_duplicates": duplicates,
                },
            )
        if out_path is not None:
            ui.info(f"wrote {count(len(result.paths), 'assignment')} to {out_path} ({count(len(sizes), 'cluster')})")
        if report and beside is not None:
            _write_report(ui, beside, features=(result.paths, result.features))


@app.command(
    epilog="Examples:\n\n  imgcluster evaluate photos-clusters.csv ./labelled-photos\n\n"
    "  imgcluster evaluate clusters.csv sample_data --json > scores.json",
)
def evaluate(
    assignments: Annotated[Path, typer.Argument(metavar="CSV", help="CSV written by `imgcluster assign`.", show_default=False)],
    labelled_folder: Annotated[
        Path, typer.Argument(metavar="LABELLED_FOLDER", help="Folder whose sub-folder names are the labels.", show_default=False)
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the scores as JSON on stdout (the tables then go to stderr, unless --quiet).")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score an assignment against a labelled folder: ACC (Hungarian), NMI, ARI, AMI, purity.

    The scores are the command's output: tables on stdout, or JSON with --json.
    """
    from rich.console import Console

    from imgcluster.scoring import evaluate as run_evaluation

    ui = UI(quiet)
    with handled(ui):
        evaluation = run_evaluation(assignments, labelled_folder)
        if as_json:
            if not quiet:
                _print_evaluation(ui.console, evaluation)
            sys.stdout.write(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        else:
            # Rendered first, then written: rich ends a broken pipe with exit 1, the write below
            # reaches handled(), which ends it as `| head` expects (141, silently).
            buffer = io.StringIO()
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100
            _print_evaluation(Console(file=buffer, width=width, highlight=False, soft_wrap=True), evaluation)
            sys.stdout.write(buffer.getvalue())
            sys.stdout.flush()


def _write_report(ui: UI, assignments: Path, **options: Any) -> None:
    """Thumbnails under a progress bar, then one line saying where the report went."""
    from imgcluster.report import ReportHooks, write_report

    with ui.progress("thumbnails") as bar:
        hooks = ReportHooks(on_start=bar.start, on_advance=bar.advance, on_warning=ui.warn)
        made = write_report(assignments, hooks=hooks, **options)
    ui.info(
        f"report written to {made.html} ({count(made.clusters, 'cluster')}, {made.shown} of {count(made.rows, 'image')} shown, "
        f"{made.bytes / 1e6:.1f} MB, {made.seconds:.1f}s)"
    )
    if made.montages:
        ui.info(f"{count(len(made.montages), 'montage')} in {made.montages[0].parent}")


@app.command(
    epilog="Examples:\n\n  imgcluster report photos-clusters.csv                 # writes photos-clusters.html\n\n"
    "  imgcluster report clusters.csv --labels ./labelled-photos --montage\n\n"
    "  imgcluster report clusters.csv --per-cluster 24 --out /tmp/clusters.html",
)
def report(
    assignments: Annotated[Path, typer.Argument(metavar="CSV", help="CSV written by `imgcluster assign`.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML path. Default: <csv stem>.html beside the CSV.")] = None,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="Labelled folder (sub-folder names are labels): show each cluster's label mix.")
    ] = None,
    folder: Annotated[
        Optional[Path], typer.Option("--folder", help="Image folder, when the CSV has no sidecar JSON or the images moved.")
    ] = None,
    montage: Annotated[bool, typer.Option("--montage", help="Also write a PNG contact sheet per cluster in <csv stem>-montage/.")] = False,
    per_cluster: Annotated[
        int, typer.Option("--per-cluster", min=1, help="Most typical images shown per cluster; a third as many least confident join them.")
    ] = 48,
    quiet: QuietOpt = False,
) -> None:
    """Write one self-contained HTML page of thumbnails per cluster; open it from disk in any browser."""
    ui = UI(quiet)
    with handled(ui):
        if out is not None and (str(out) == "-" or is_stream(out)):
            raise UserError("the report is a file with pictures beside it: give --out FILE.html", exit_code=2)
        _write_report(ui, assignments, out=out, labels=labels, folder=folder, montage=montage, per_cluster=per_cluster)


@app.command(
    epilog="Examples:\n\n  imgcluster objectives\n\n"
    "  imgcluster assign ./photos --objective scan --option entropy_weight=3 --self-label",
)
def objectives() -> None:
    """List the clustering objectives and their hyper-parameters (for --option)."""
    import dataclasses

    from imgcluster.objectives import DEFAULT_OBJECTIVE, list_objectives, objective_class

    with handled(UI()):
        for name in list_objectives():
            cls = objective_class(name)
            doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else ""
            typer.echo(f"{name}{' (default)' if name == DEFAULT_OBJECTIVE else ''}: {summary}")
            ranges = getattr(cls.Params, "ranges", {})
            for f in dataclasses.fields(cls.Params):
                allowed = f"  ({ranges[f.name].describe()})" if f.name in ranges else ""
                typer.echo(f"    {f.name} = {f.default!r}{allowed}")


def _print_evaluation(console: Any, evaluation: Any) -> None:
    from rich.table import Table

    e = evaluation
    table = Table(title="clustering scores", title_justify="left")  # one score a row: fits any terminal
    table.add_column("score")
    table.add_column("value", justify="right")
    rows = {
        "ACC (Hungarian)": f"{e.acc:.4f}", "NMI": f"{e.nmi:.4f}", "ARI": f"{e.ari:.4f}", "AMI": f"{e.ami:.4f}",
        "purity": f"{e.purity:.4f}", "images matched": str(e.matched),
        "rows not in the folder": str(e.unmatched_assignments), "images not in the CSV": str(e.unassigned_images),
        "clusters": str(e.clusters), "classes": str(e.classes),
    }  # fmt: skip
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)
    per = Table(title="per-cluster purity", title_justify="left")
    for column in ("cluster", "size", "majority label", "purity"):
        per.add_column(column, justify="right")
    for p in e.per_cluster:
        per.add_row(str(p.cluster), str(p.size), p.majority_label, f"{p.purity:.3f}")
    console.print(per)


def _str(value: Path | str | None) -> str | None:
    return None if value is None else str(value)


def main() -> None:
    from imgcluster.signals import exit_by_signal, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM while still importing ends like Ctrl-C, not mid-way
            app(prog_name="imgcluster")
    except SystemExit:
        exit_by_signal()  # after Ctrl-C or SIGTERM: end by that signal, so a calling script stops too
        raise
