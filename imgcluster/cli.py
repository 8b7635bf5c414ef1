"""The ``imgcluster`` command line: parse, pick the device, show progress, call the library."""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # recent typer releases bundle their own click, whose errors derive from TyperException
    from typer.exceptions import TyperException as CommandLineError
except ImportError:  # pragma: no cover - older typer raises click's own
    from click import ClickException as CommandLineError  # type: ignore[assignment]

import imgcluster
from imgcluster import __version__
from imgcluster.atomic import is_stream, stdout_failed, writing_stdout
from imgcluster.config import DEFAULT_CLUSTERS, DEFAULT_KNN, DEFAULT_OBJECTIVE, TrainConfig
from imgcluster.errors import ImgclusterError, ParameterError, first_sentences, literal
from imgcluster.head_config import TRAINING
from imgcluster.progress import Event, count, skipped_files
from imgcluster.scale.limits import DEFAULT_NPROBE, RAY_KNN_THRESHOLD
from imgcluster.scale.sample import DEFAULT_TRAIN_SAMPLE
from imgcluster.ui import UI, ProgressTask, one_line
from imgcluster.userpath import expand_home


def _plain_flags(params: Sequence[Any]) -> None:
    """No ``<bool>`` after an on/off flag in the help: it takes no value."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class Command(TyperCommand):
    """Help as a user types the command: ``FOLDER``, not typer's ``{FOLDER}``, and bare flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _plain_flags(params)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece for piece in super().collect_usage_pieces(ctx)]


def _empty(typed: str, command: str) -> str:
    return f"{typed} is empty (a variable that is not set?): give a path (see imgcluster {command} --help)"


def _home(arg: str) -> str:
    """``~`` at the start of a value expanded, as the shell does for a separate word: it leaves
    ``--out=~/x.csv`` as it is, and the run wrote into a new folder named ``~`` (which ``rm -rf ~``
    would then remove the user's home for)."""
    name, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    return f"{name}{sep}{expand_home(value)}" if value.startswith("~") else arg


class OneLineErrors(TyperGroup):
    """Usage mistakes (a bad option value, a missing argument) as one ``error:`` line and exit code 2.

    Typer draws them as a multi-line panel; batch scripts and their logs want one line, like the
    runtime errors in :func:`handled`.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _plain_flags(params)  # --version, and the --install-completion typer adds
        return params

    # Help and --version are written while the arguments are parsed (make_context, for a
    # command inside invoke), outside any command's handled().
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _outside_commands():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _outside_commands():
            return super().invoke(ctx)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            args = [_home(arg) for arg in (sys.argv[1:] if args is None else args)]
        except ParameterError as homeless:  # a ~ that names no home folder
            typer.echo(f"error: {homeless}", err=True)
            sys.exit(2)
        problem = self._raw_path_problem(args)
        if problem is not None:
            typer.echo(f"error: {problem}", err=True)
            sys.exit(2)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except CommandLineError as raised:
            exc = _in_number_words(raised)
            ctx = getattr(exc, "ctx", None)  # usage errors carry the command they came from, most of them
            where = f"{ctx.command_path} --help" if ctx is not None else self._help_for(args)
            message = _path_taken_for_option(exc, args) or exc.format_message().strip()
            if message:  # empty when the help was shown instead (no arguments at all)
                typer.echo(f"error: {message} (see {where})", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def _raw_path_problem(self, args: Sequence[str]) -> str | None:
        """What is wrong with a path as typed, which its parsed value no longer shows; read from the
        raw arguments, as the command's parser splits them.

        A path given as "" parses as Path("."): `export --to "$DIR"` with DIR unset exported into
        the current folder and `assign "$DIR"` clustered it. An ``--out`` ending in ``/`` names a
        folder, and its slash is dropped: `--out results/` wrote a file named ``results``.
        """
        name = next((a for a in args if not a.startswith("-")), "")
        command = self.commands.get(name)
        if command is None:
            return None
        options = {opt: p for p in command.params if p.param_type_name == "option" for opt in p.opts}
        positionals = [p for p in command.params if p.param_type_name == "argument"]
        rest = list(args[list(args).index(name) + 1 :])
        only_positional, position, i = False, 0, 0
        while i < len(rest):
            arg = rest[i]
            if not only_positional and arg == "--":
                only_positional = True
            elif not only_positional and arg.startswith("-") and arg != "-":
                flag, equals, value = arg.partition("=")
                param = options.get(flag)
                if param is not None and not getattr(param, "is_flag", False):
                    if not equals:
                        i += 1
                        value = rest[i] if i < len(rest) else "-"
                    if value == "" and param.name in PATH_PARAMETERS:
                        return _empty(flag, name)
                    if param.name == "out" and value.endswith(("/", os.sep)) and value.strip("/" + os.sep):
                        folder_like = f"{flag} {value} ends in {value[-1]}, as a folder's name does"
                        return f"{folder_like}: give a file name (see imgcluster {name} --help)"
            else:
                if arg == "" and position < len(positionals) and positionals[position].name in PATH_PARAMETERS:
                    param = positionals[position]
                    return _empty(param.metavar or (param.name or "").upper(), name)
                position += 1
            i += 1
        return None

    def _help_for(self, args: Sequence[str] | None) -> str:
        """The help of the command typed, for an error that names no command (an option missing its
        value, ``assign x -k``, pointed at ``imgcluster --help``)."""
        typed = next((a for a in (sys.argv[1:] if args is None else args) if not a.startswith("-")), None)
        return f"imgcluster {typed} --help" if typed in self.commands else "imgcluster --help"


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

class BadNumber(typer.BadParameter):
    """A number option's value that is not a number, or outside the option's range, worded as the
    library words its own and naming the flag (``--knn must be a whole number from 1 to 1000, got
    0``), not as Typer's validator does ("Invalid value for '--knn': Input should be greater than
    or equal to 1")."""

    def __init__(self, param: Any, typed: object, low: float | None, high: float | None, *, whole: bool, above: bool = False,
                 ctx: Any = None) -> None:  # fmt: skip
        def number(x: float) -> str:  # 2000000, not 2e+06
            return str(x) if isinstance(x, int) else f"{x:g}"

        bounds = "a whole number" if whole else "a number"
        if low is not None and (above or high is None):
            bounds += f" {'above' if above else 'of at least'} {number(low)}"
        elif low is not None and high is not None:
            bounds += f" from {number(low)} to {number(high)}"
        elif high is not None:
            bounds += f" of at most {number(high)}"
        super().__init__(f"must be {bounds}, got {typed}", ctx=ctx, param=param)

    def format_message(self) -> str:
        return f"{self.param.opts[0] if self.param is not None else 'the value'} {self.message}"


def _path_taken_for_option(exc: CommandLineError, args: Sequence[str]) -> str | None:
    """For an unknown option that is the name of a file or folder (``assign -photos``: "No such option: -p"), how to
    write it so that it is read as a path."""
    option = getattr(exc, "option_name", None)  # click's NoSuchOption: -p of -photos
    if not option:
        return None
    typed = next((a for a in args if a.startswith(option) and a != "-" and os.path.lexists(a)), None)
    if typed is None:
        return None
    return f"{typed} is read as an option; a path that starts with - is written ./{typed}"


def _in_number_words(exc: CommandLineError) -> CommandLineError:
    """Typer's refusal of a number option's value (not a number, or outside its ``min``/``max``: every
    ranged whole-number option) as :class:`BadNumber`; any other error as it is. Typer keeps the
    value as typed in its validator's error."""
    param = getattr(exc, "param", None)
    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    errors = getattr(exc.__cause__, "errors", None)
    if isinstance(exc, BadNumber) or kind not in (int, float) or not callable(errors):
        return exc
    typed = (errors() or [{}])[0].get("input")
    if typed is None:
        return exc
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    return BadNumber(param, typed, low, high, whole=kind is int, ctx=getattr(exc, "ctx", None))


def _within(low: float, high: float | None = None, *, above: bool = False) -> Any:
    """Option callback for a number in [low, high] (``high`` None: no upper bound; ``above``: over
    ``low``, which Typer's ``min`` cannot say). Click's own range check let NaN through its
    comparisons and called it too large ("less than or equal to 1")."""

    def check(param: typer.CallbackParam, value: float | None) -> float | None:
        if value is not None and not ((value > low if above else low <= value) and (high is None or value <= high)):
            raise BadNumber(param, f"{value:g}", low, high, whole=False, above=above)
        return value

    return check


_positive = _within(0, above=True)


# ---- options shared by several commands --------------------------------------------------------
Folder = Annotated[Path, typer.Argument(metavar="FOLDER", help="Folder of images (searched recursively).", show_default=False)]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="NAME",
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
    typer.Option(
        "--embed-batch-size",
        min=1,
        help="Images per forward pass. Default: 8 on the CPU (fewer for larger inputs), 256 on CUDA. "
        "A folder smaller than the batch uses its own size (rounded up to 8).",
    ),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers",
        min=0,
        help="Image decoding processes. Default: one per CPU core but one, at most 8 (16 with CUDA); none for folders "
        "under 64 images.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="auto (CUDA when available), cpu or cuda.")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", metavar="float16|float32", help="Storage type of cached features: float16 or float32.")
]
SymlinkOpt = Annotated[
    bool,
    typer.Option("--follow-symlinks", help="Follow symbolic links that lead outside the image folder; by default they are left out."),
]
CompileOpt = Annotated[
    bool, typer.Option("--compile", help="torch.compile the backbone on CUDA (faster on large folders; ignored on the CPU).")
]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout", callback=_within(0), help="Seconds to wait while another run uses the same cache. Default 0: fail at once."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        metavar="NAME",
        help="What runs the backbone: auto (onnx-int8 for efficientnet-lite0 with its bundled weights on the CPU, else "
        "torch; IMGCLUSTER_RUNTIME=torch keeps it torch), torch, onnx (ONNX Runtime, CPU only; the model is exported once "
        "into ~/.cache/imgcluster) or onnx-int8 (the same, quantised to int8 with shipped activation ranges; "
        "EfficientNet-Lite0 only). Each caches its features apart.",
    ),
]
RehashOpt = Annotated[
    bool,
    typer.Option("--rehash", help="Reuse a cached feature only if the file's content hash matches (slower: reads every file)."),
]
ReembedOpt = Annotated[bool, typer.Option("--reembed", help="Embed every image again, replacing its cached features.")]
RawCsvOpt = Annotated[
    bool,
    typer.Option(
        "--raw-csv",
        help="Write CSV cells as they are: without it a cell starting with = + - @ ' a tab or a carriage return gets a "
        "leading ' so that spreadsheets do not run it as a formula (evaluate and report read both forms).",
    ),
]
ObjectiveOpt = Annotated[
    str, typer.Option("--objective", "-o", metavar="NAME", help="Clustering objective (see `imgcluster objectives`).")
]
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
    typer.Option(
        "--epochs",
        min=1,
        help="Training epochs, all trained when given. Unless given, small folders train longer, to reach 300 optimiser steps, "
        "and secu and scan stop once the clusters settle.",
    ),
]
BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=2,
        help="Training batch size (images per optimiser step); at most a quarter of the images, but 16 or a smaller "
        "folder's all.",
    ),
]
LrOpt = Annotated[float, typer.Option("--lr", callback=_positive, help="Learning rate (AdamW).")]
# At most 1,000: the table is N x k (8 GB at 1M images and k = 1,000) and faiss-gpu stops at 2,048.
KnnOpt = Annotated[int, typer.Option("--knn", min=1, max=1000, help="Neighbours mined per image for consistency pairs (1-1000).")]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed, 0 to 2**64 - 1: same seed and input give the same result on the CPU.")
]
BalanceOpt = Annotated[
    Optional[float],
    typer.Option(
        "--balance",
        callback=_within(0),
        help="Weight of the objective's pull towards equal cluster sizes, times its paper default: below 1 for "
        "imbalanced folders, above 1 when clusters come out empty (scan, temi, secu, dsc2i, mixture-em).",
    ),
]
SelfLabelOpt = Annotated[
    bool, typer.Option("--self-label", help="scan: add SCAN's self-labelling stage on confident images (class-balanced CE).")
]
UcoOpt = Annotated[bool, typer.Option("--uco", help="ddc: add the companion objectives on the input and hidden layers.")]
OptionOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--option",
        metavar="KEY=VALUE",
        help="An objective's hyper-parameter (repeatable), e.g. hidden=64; `imgcluster objectives` lists each one's.",
    ),
]
# train and assign from a feature store (imgcluster.scale) instead of a folder.
MaybeFolder = Annotated[
    Optional[Path],
    typer.Argument(metavar="FOLDER", help="Folder of images (searched recursively); not with --features.", show_default=False),
]
FeaturesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--features", metavar="URI",
        help="Run from a feature store (a path, file://, s3:// or gs:// URI that `embed --features-out` wrote) instead of FOLDER.",
    ),
]  # fmt: skip
TrainSampleOpt = Annotated[
    int,
    typer.Option(
        "--train-sample", min=2,
        help="With --features: train on all rows up to this many, above it on a seeded uniform sample of this many.",
    ),
]  # fmt: skip
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        metavar="local|ray",
        help="With --features: local (this process) or ray (Ray tasks read the training sample's buckets, and assign "
        "labels the rows as a Ray Data job; see docs/scale.md).",
    ),
]
RayAddressOpt = Annotated[
    Optional[str],
    typer.Option("--ray-address", help="With --engine ray: the cluster (auto, host:port or ray://host:port). Default: a local Ray."),
]
KnnThresholdOpt = Annotated[
    int,
    typer.Option(
        "--knn-threshold", metavar="N",
        help="With --features: up to N sample rows, one machine's kNN search (training, the isolation test); above, a partitioned "
        "search as Ray tasks. Raise it when one machine (a GPU) still handles the sample.",
    ),
]  # fmt: skip
NprobeOpt = Annotated[
    int,
    typer.Option(
        "--nprobe", metavar="N",
        help="With --features, above --knn-threshold: partitions each row's neighbours are searched in (more: better recall, slower).",
    ),
]  # fmt: skip


# What a stop that no stage has described keeps, by command (embed, train and assign: the default).
STOPPED = {
    "embed": "interrupted; every finished batch is kept in the cache and the next run resumes from there",
    "export": "interrupted: no image was moved or changed; what was exported stays, and the same command exports the rest",
    "report": "interrupted: no report was written",
    "nothing": "interrupted; nothing was written",
}


@contextmanager
def handled(ui: UI, stopped: str = STOPPED["embed"]) -> Iterator[None]:
    """One-line errors with exit codes; tracebacks only for bugs, and only with IMGCLUSTER_DEBUG=1.

    ``stopped`` is the line for a Ctrl-C or SIGTERM that carries no message of its own: export and
    report said that finished batches were kept in the cache, which they do not have.
    """
    from imgcluster.signals import note_stop, stops_as_interrupt

    try:
        with stops_as_interrupt():
            yield
    except ParameterError as exc:  # a bad value: named by its flag, exit 2 as for Click's usage errors
        ui.error(exc.render(FlagNames()))
        raise typer.Exit(2) from None
    except ImgclusterError as exc:
        ui.error(exc.render(FlagNames()))
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP: the message says what was kept, when known
        with contextlib.suppress(OSError):  # a dropped ssh connection's stderr: the work is saved, the exit code still says why
            ui.error(str(exc) or stopped)
        raise typer.Exit(128 + note_stop(exc)) from None  # what a shell reports for a process that signal stopped
    except typer.Exit:
        raise
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as other tools do
        _silence_stdout()
        raise typer.Exit(PIPE_CLOSED) from None
    except Exception as exc:
        if os.environ.get("IMGCLUSTER_DEBUG") == "1":
            raise
        if (unencodable := _unencodable_name(exc)) is not None:
            ui.error(unencodable)
            raise typer.Exit(1) from None
        if type(exc).__name__ == "OutOfMemoryError":  # torch's, on CUDA; not imported here to keep --help fast
            ui.error(
                f"the GPU ran out of memory ({first_sentences(exc, 2)}); lower --batch-size (training) or "
                "--embed-batch-size (embedding), or run with --device cpu"
            )
            raise typer.Exit(1) from None
        ui.error(f"unexpected {type(exc).__name__}: {exc} (run with IMGCLUSTER_DEBUG=1 for details)")
        raise typer.Exit(1) from None


def _unencodable_name(exc: Exception) -> str | None:
    """The line for a file name read from a CSV or a sidecar (UTF-8 text) that this system's file-name encoding cannot
    hold (``PYTHONUTF8=0`` with ``LC_ALL=C``, a Latin-1 locale): every file call on it raised an unexpected
    UnicodeEncodeError. None for any other error."""
    if not isinstance(exc, UnicodeEncodeError) or codecs.lookup(exc.encoding).name != codecs.lookup(sys.getfilesystemencoding()).name:
        return None
    return (
        f"a file name holds {exc.object[exc.start : exc.end]!r}, which this system's file-name encoding ({exc.encoding}) "
        "cannot hold: run imgcluster in a UTF-8 locale (LANG=C.UTF-8) or with PYTHONUTF8=1"
    )


# Library parameters whose command-line parameter has another name.
CLI_NAMES = {
    "address": "ray_address", "n_clusters": "clusters", "objective_options": "option", "folder_or_paths": "folder",
}  # fmt: skip
# Library parameters whose flag is not simply ``--`` + the name with dashes, when the command has no such parameter.
FLAG_OVERRIDES = {
    "n_clusters": "--clusters",
    "folder": "FOLDER",
    "folder_or_paths": "FOLDER",
    "objective_options": "--option",
    "compile_model": "--compile",
}


class FlagNames(dict[str, str]):
    """Maps a library parameter name to what a user typed for it in the running command:
    ``k_max`` -> ``--k-max``, ``folder`` -> ``FOLDER`` for ``assign`` but ``--folder`` for ``report``."""

    def __init__(self) -> None:
        super().__init__()
        try:  # recent typer releases bundle their own click, which keeps the running command
            from typer._click.globals import get_current_context
        except ImportError:  # pragma: no cover - older typer uses click itself
            from click import get_current_context  # type: ignore[no-redef]

        ctx = get_current_context(silent=True)
        self._typed: dict[str, str] = {}
        for param in ctx.command.params if ctx is not None else []:
            if param.name:
                self._typed[param.name] = param.opts[0] if param.param_type_name == "option" else (param.metavar or param.name.upper())

    def get(self, key: str, default: str | None = None) -> str:  # type: ignore[override]
        typed = self._typed.get(CLI_NAMES.get(key, key))
        return typed or FLAG_OVERRIDES.get(key, "--" + key.replace("_", "-"))


# Parameters whose "" is refused before parsing (see OneLineErrors._raw_path_problem); --cache-dir "" keeps
# meaning the default, and --out "" is refused by the library.
PATH_PARAMETERS = frozenset({"folder", "source", "assignments", "labelled_folder", "to", "labels", "head", "weights"})
PIPE_CLOSED = 141  # 128 + SIGPIPE, the status a shell reports for a writer whose pipe closed


@contextmanager
def _outside_commands() -> Iterator[None]:
    """What :func:`handled` does for a command, while the arguments are parsed and the help drawn.

    Click turned a closed stdout (`imgcluster --help | head`) into exit code 1, a Ctrl-C into a
    silent exit 130 and a full disk behind stdout into a traceback; they end as in a command:
    141 and silent, one line and the signal, one line and exit code 1.
    """
    from imgcluster.signals import STOPPED_STARTING, note_stop

    try:
        yield
    except KeyboardInterrupt as exc:
        with contextlib.suppress(OSError):  # stderr gone with the terminal (SIGHUP): the exit code still says why
            typer.echo(f"error: {STOPPED_STARTING}", err=True)
        raise typer.Exit(128 + note_stop(exc)) from None
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(PIPE_CLOSED) from None
    except OSError as exc:  # the help or --version meeting a full disk behind stdout
        if os.environ.get("IMGCLUSTER_DEBUG") == "1":  # a command's own error, which handled() let through for its traceback
            raise
        typer.echo(f"error: {stdout_failed(exc)}", err=True)
        raise typer.Exit(1) from None
    except SystemExit as exc:  # rich, drawing the help, points stdout at /dev/null and exits 1
        if exc.code == 1 and _stdout_is_null():
            raise typer.Exit(PIPE_CLOSED) from None
        raise


def _stdout_is_null() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.stdout.fileno()), os.stat(os.devnull))
    except (OSError, ValueError):
        return False


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
class Printer:
    """Shows the library's progress events: lines on stderr, one bar per stage on a terminal."""

    STAGES: ClassVar[dict[str, tuple[str, str]]] = {
        "embed": ("embedding", "images"), "train": ("training", "steps"), "report": ("thumbnails", "images"),
    }  # fmt: skip

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.flags = FlagNames()
        self._bar: contextlib.ExitStack | None = None
        self._task: ProgressTask | None = None
        self._next_line = 0  # tenths of a training run: the next loss line shown without a bar

    def __enter__(self) -> Printer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._task = None

    def __call__(self, event: Event) -> None:
        text = event.render(self.flags)
        if event.kind == "info":
            self.ui.info(text)
        elif event.kind == "warning":
            self.ui.warn(text)
        elif event.kind == "start":
            self._close()
            description, unit = self.STAGES.get(event.stage, (event.stage, "steps"))
            self._bar = contextlib.ExitStack()
            self._task = self._bar.enter_context(self.ui.progress(text or description, unit=unit))
            self._task.start(event.total)
            self._next_line = 0
        elif event.kind == "advance":
            if self._task is not None:
                self._task.update(event.done, status=event.status)
            if event.stage == "train" and event.message and not self.ui.interactive and self._loss_line(event.done, event.total):
                self.ui.info(text)  # without a bar: about ten loss lines (epoch ends), however long the run
            if event.done >= event.total:
                self._close()

    def _loss_line(self, done: int, total: int) -> bool:
        """The first epoch's line, then one each time training passes another tenth of its steps, and the last."""
        show = self._next_line == 0 or done >= total or done * LOG_EPOCH_LINES >= self._next_line * total
        if show:
            self._next_line = done * LOG_EPOCH_LINES // max(total, 1) + 1
        return show


LOG_EPOCH_LINES = 10


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ParameterError(f"{{objective_options}} takes KEY=VALUE, got {item!r}")
        try:
            parsed[key.strip()] = json.loads(raw)
        except ValueError:
            parsed[key.strip()] = raw
    return parsed


def _embedding(
    model: str, weights: Path | None, cache_dir: Path | None, embed_batch_size: int | None, workers: int | None, device: str,
    dtype: str, follow_symlinks: bool, compile_model: bool, lock_timeout: float, rehash: bool, reembed: bool, runtime: str,
) -> dict[str, Any]:  # fmt: skip
    """The embedding options, as the library's keyword arguments."""
    return {
        "model": model, "weights": weights, "cache_dir": cache_dir, "embed_batch_size": embed_batch_size, "workers": workers,
        "device": device, "dtype": dtype, "follow_symlinks": follow_symlinks, "compile_model": compile_model,
        "lock_timeout": lock_timeout, "rehash": rehash, "reembed": reembed, "runtime": runtime,
    }  # fmt: skip


def _training(
    ctx: typer.Context, objective: str, clusters: str, k_min: int, k_max: int, epochs: int, batch_size: int, lr: float, knn: int,
    seed: int, balance: float | None, self_label: bool, uco: bool, option: list[str] | None,
) -> dict[str, Any]:  # fmt: skip
    """The training options, as the library's keyword arguments. Epochs the user gave are run as
    given; otherwise (None) small folders train longer, to reach 300 optimiser steps."""
    return {
        "objective": objective, "n_clusters": clusters, "k_min": k_min, "k_max": k_max,
        "epochs": epochs if _given(ctx, "epochs") else None, "batch_size": batch_size, "lr": lr, "knn": knn, "seed": seed,
        "balance": balance, "self_label": self_label, "uco": uco, "objective_options": _parse_options(option),
    }  # fmt: skip


# assign's options that shape a head's training: meaningless with --head, whose training is done (--knn-threshold and
# --nprobe also shape the isolation test's neighbour search of assign --features, so they stay allowed).
TRAINING_PARAMETERS = (*(CLI_NAMES.get(name, name) for name in TRAINING), "option")


def _refuse_training_options(ctx: typer.Context) -> None:
    """A usage error naming the training options given with ``--head``, rather than ignoring them."""
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    given = [flags.get(name, name) for name in TRAINING_PARAMETERS if _given(ctx, name)]
    if given:
        raise ParameterError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to training, "
            "and --head uses a head that is already trained; "
            "leave them out, or leave out --head to train a new one"
        )


# The options that say how to embed a FOLDER: they do not apply to features already in a store.
EMBEDDING_PARAMETERS = (
    "model", "weights", "cache_dir", "embed_batch_size", "workers", "dtype", "follow_symlinks", "compile_model", "lock_timeout", "rehash",
    "reembed",
)  # fmt: skip


def _folder_or_features(ctx: typer.Context, folder: Path | None, features: str | None) -> None:
    """FOLDER or --features, exactly one; with --features, no embedding option (usage errors, exit 2)."""
    from typer._click.exceptions import MissingParameter, UsageError

    if folder is None and features is None:
        raise MissingParameter(ctx=ctx, param=next(p for p in ctx.command.params if p.name == "folder"))  # type: ignore[arg-type]
    if folder is not None and features is not None:
        raise UsageError("give FOLDER or --features, not both", ctx=ctx)
    if features is not None:
        flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
        given = [flags[name] for name in EMBEDDING_PARAMETERS if name in flags and _given(ctx, name)]
        if given:
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to embedding a FOLDER, "
                             "and --features reads features already embedded; leave them out", ctx=ctx)  # fmt: skip


def _refuse_given(ctx: typer.Context, names: Sequence[str], why: str) -> None:
    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    given = [flags[name] for name in names if _given(ctx, name)]
    if given:
        raise ParameterError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {why}")


def _default_csv(stem: str) -> str:
    """``./<stem>-clusters.csv``, the default CSV: written as ``./`` + the name when the name starts with ``-``, so that
    the path the run prints can be typed into the next command (`evaluate -photos-clusters.csv` is an unknown option)."""
    return f"{'./' if stem.startswith('-') else ''}{stem}-clusters.csv"


def _store_name(uri: str) -> str:
    """The default CSV's stem for a store: its last path component (``s3://b/run1/`` -> ``run1``)."""
    return uri.rstrip("/").rsplit("/", 1)[-1].split("://")[-1] or "features"


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set parameter ``name`` (on the command line or through the environment)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _write_report(show: Printer, assignments: Path, **options: Any) -> None:
    """Thumbnails under a progress bar, then one line saying where the report went."""
    made = imgcluster.write_report(assignments, progress=show, **options)
    outliers = f"{made.outliers_shown} of {count(made.outliers, 'outlier')} shown, " if made.outliers_shown < made.outliers else ""
    show.ui.info(
        f"report written to {made.html} ({count(made.clusters, 'cluster')}, {made.shown} of {count(made.rows, 'image')} shown, "
        f"{outliers}{made.bytes / 1e6:.1f} MB, {made.seconds:.1f}s)"
    )
    if made.montages:
        show.ui.info(f"{count(len(made.montages), 'montage')} in {made.montages[0].parent}")


# ---- commands ----------------------------------------------------------------------------------
@app.command(
    cls=Command,
    epilog="Examples:\n\n  imgcluster embed ./photos\n\n  imgcluster embed ./photos --model efficientnet-lite0 --cache-dir /tmp/cache",
)
def embed(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="Folder of images (searched recursively); with --engine ray also an s3:// or gs:// prefix.",
            show_default=False,
        ),
    ],
    engine: Annotated[
        str, typer.Option("--engine", metavar="local|ray", help="local (this machine, cached in the folder) or ray (a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        Optional[str], typer.Option("--ray-address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT. Default: a local Ray instance.")
    ] = None,
    features_out: Annotated[
        Optional[str], typer.Option("--features-out", help="Where the Ray engine writes features: a folder, file://, s3:// or gs:// URI.")
    ] = None,
    manifest: Annotated[
        Optional[str],
        typer.Option("--manifest", help="Ray engine: a parquet list of files (path, size, mtime_ns or etag), a file or a folder of parts."),
    ] = None,
    num_gpus: Annotated[
        Optional[float],
        typer.Option("--num-gpus", callback=_within(0), help="Ray engine: GPUs per embedding actor (default: 1 with local GPUs)."),
    ] = None,
    actors: Annotated[
        Optional[int], typer.Option("--actors", min=1, help="Ray engine: embedding actors. Default: one per GPU, or one.")
    ] = None,
    retry_skipped: Annotated[
        bool, typer.Option("--retry-skipped", help="Ray engine: try again the files a previous run recorded as unreadable.")
    ] = False,
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
    rehash: RehashOpt = False,
    reembed: ReembedOpt = False,
    runtime: RuntimeOpt = "auto",
    raw_csv: RawCsvOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute and cache backbone features; a second run embeds only new or changed images."""
    ui = UI(quiet)
    with handled(ui), Printer(ui) as show:
        if engine not in ("local", "ray"):
            raise ParameterError(f"{{engine}} must be local or ray, not {engine!r}")
        ray_only = {"features_out": features_out, "address": ray_address, "manifest": manifest, "num_gpus": num_gpus, "actors": actors}
        if engine == "ray":
            local_only = {
                "cache_dir": cache_dir is not None, "workers": workers is not None, "device": device != "auto", "dtype": dtype != "float16",
                "compile_model": compile_model, "lock_timeout": lock_timeout != 0, "rehash": rehash, "reembed": reembed, "raw_csv": raw_csv,
                "runtime": runtime != "auto",  # the Ray engine's actors run torch: it was ignored
            }  # fmt: skip
            if unused := [name for name, given in local_only.items() if given]:
                raise ParameterError(f"{{{unused[0]}}} is an option of {{engine}} local")
            _embed_on_ray(ui, show, source, features_out, ray_address, manifest, num_gpus, actors, retry_skipped, model, weights,
                          embed_batch_size, follow_symlinks)  # fmt: skip
            return
        given = [name for name, value in ray_only.items() if value is not None] + (["retry_skipped"] if retry_skipped else [])
        if given:
            raise ParameterError(f"{{{given[0]}}} is an option of {{engine}} ray")
        result = imgcluster.embed(
            Path(source), progress=show,
            **_embedding(
                model, weights, cache_dir, embed_batch_size, workers, device, dtype, follow_symlinks, compile_model, lock_timeout, rehash,
                reembed, runtime,
            ),
        )  # fmt: skip
        skipped = result.write_skipped(raw_csv=raw_csv)
        if skipped is not None:
            ui.warn(f"skipped {skipped_files(reason for _, reason in result.skipped)}; details in {skipped}")


def _embed_on_ray(
    ui: UI, show: Printer, source: str, features_out: str | None, address: str | None, manifest: str | None, num_gpus: float | None,
    actors: int | None, retry_skipped: bool, model: str, weights: Path | None, batch_size: int | None, follow_symlinks: bool,
) -> None:  # fmt: skip
    """``embed --engine ray``: one call of :func:`imgcluster.scale.embed_to_store`."""
    if features_out is None:
        raise ParameterError("{engine} ray needs {features_out}, the location of the features")
    from imgcluster.scale import embed_to_store

    summary = embed_to_store(
        source, features_out, model=model, weights=None if weights is None else str(weights), manifest=manifest, address=address,
        batch_size=batch_size, num_gpus=num_gpus, actors=actors, retry_skipped=retry_skipped, follow_symlinks=follow_symlinks,
        progress=show,
    )  # fmt: skip
    if summary.manifest:
        ui.info(f"the listing is kept in {summary.manifest}; pass it as --manifest to skip listing next time")
    if summary.skipped:
        ui.warn(f"skipped {skipped_files(reason for _, reason in summary.skipped)}; reasons in {features_out.rstrip('/')}/_skipped/")


@app.command(
    cls=Command,
    epilog="Examples:\n\n  imgcluster train ./photos --clusters 8\n\n"
    "  imgcluster train ./photos --objective temi --out head.safetensors",
)
def train(
    ctx: typer.Context,
    folder: MaybeFolder = None,
    features: FeaturesOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    train_sample: TrainSampleOpt = DEFAULT_TRAIN_SAMPLE,
    knn_threshold: KnnThresholdOpt = RAY_KNN_THRESHOLD,
    nprobe: NprobeOpt = DEFAULT_NPROBE,
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
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="FILE",
            help="Checkpoint path (.safetensors; a .json goes beside it). Default: in the folder's cache (the run says where).",
        ),
    ] = None,
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
    rehash: RehashOpt = False,
    reembed: ReembedOpt = False,
    runtime: RuntimeOpt = "auto",
    raw_csv: RawCsvOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed (cached) and train a clustering head; saves a reusable checkpoint."""
    _folder_or_features(ctx, folder, features)
    ui = UI(quiet)
    with handled(ui), Printer(ui) as show:
        if features is not None:
            from imgcluster.scale import train_from_store

            _refuse_given(ctx, ("runtime",), "to embedding a FOLDER and to assign's naming pass: train --features runs no model")
            _, saved = train_from_store(
                features, out=out, train_sample=train_sample, knn_threshold=knn_threshold, nprobe=nprobe, engine=engine,
                address=ray_address, device=device, progress=show,
                **_training(ctx, objective, clusters, k_min, k_max, epochs, batch_size, lr, knn, seed, balance, self_label, uco, option),
            )  # fmt: skip
            command = f"imgcluster assign --features {shlex.quote(features)} --head {shlex.quote(str(saved))}"
            ui.info(f"to label the store with this head: {command}")
            return
        _refuse_given(ctx, ("engine", "ray_address", "train_sample", "knn_threshold", "nprobe"), "only with --features")
        assert folder is not None  # _folder_or_features
        _, saved = imgcluster.train_folder(
            folder, out=out, raw_csv=raw_csv, progress=show,
            **_training(ctx, objective, clusters, k_min, k_max, epochs, batch_size, lr, knn, seed, balance, self_label, uco, option),
            **_embedding(
                model, weights, cache_dir, embed_batch_size, workers, device, dtype, follow_symlinks, compile_model, lock_timeout, rehash,
                reembed, runtime,
            ),
        )  # fmt: skip
        ui.info(f"to label new images with this head: imgcluster assign NEW_FOLDER --head {shlex.quote(str(saved))}")


@app.command(
    cls=Command,
    epilog="Examples:\n\n  imgcluster assign ./photos                       # whole pipeline, CSV in ./photos-clusters.csv\n\n"
    "  imgcluster assign ./photos --clusters 5 --out - > clusters.csv\n\n"
    "  imgcluster assign ./photos --clusters auto --near-duplicates 0.85 --out clusters.csv\n\n"
    "  imgcluster assign ./new-photos --head head.safetensors   # a head from imgcluster train ... --out head.safetensors",
)
def assign(
    ctx: typer.Context,
    folder: MaybeFolder = None,
    features: FeaturesOpt = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    train_sample: TrainSampleOpt = DEFAULT_TRAIN_SAMPLE,
    knn_threshold: KnnThresholdOpt = RAY_KNN_THRESHOLD,
    nprobe: NprobeOpt = DEFAULT_NPROBE,
    out: Annotated[
        Optional[str],
        typer.Option("--out", metavar="FILE|-", help="CSV path, or - for stdout. Default: ./<folder name>-clusters.csv."),
    ] = None,
    head: Annotated[
        Optional[Path],
        typer.Option(
            "--head",
            metavar="FILE",
            help="Use a trained head (the .safetensors that train or an earlier assign saved) instead of training one.",
        ),
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Add the objective's explanation columns (dsc2i: distances).")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also write an HTML report beside the CSV (see `imgcluster report`).")] = False,
    names: Annotated[
        bool,
        typer.Option(
            "--names/--no-names",
            help="Name each cluster by the bundled EfficientNet-Lite0's top ImageNet classes (cluster_name column); "
            "with another --model this takes one extra, cached Lite0 pass.",
        ),
    ] = True,
    min_confidence: Annotated[
        float,
        typer.Option(
            "--min-confidence",
            callback=_within(0, 1),
            help="Also mark images whose confidence (0 to 1) is below this as outliers (outlier column; default 0: off); images far "
            "from their cluster's centre (cosine distance above median + 3 robust SD in that cluster) and, from a folder, "
            "images isolated from the rest (local outlier factor; README Outliers) are always marked.",
        ),
    ] = 0.0,
    near_duplicates: Annotated[
        Optional[float],
        typer.Option(
            "--near-duplicates",
            metavar="THRESHOLD",
            help="Also list groups of near-identical images (cosine similarity >= THRESHOLD, e.g. 0.85, then checked from "
            "their pixels: kind exact, resized/re-encoded or similar) in <csv stem>-duplicates.csv beside the CSV.",
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
    rehash: RehashOpt = False,
    reembed: ReembedOpt = False,
    runtime: RuntimeOpt = "auto",
    raw_csv: RawCsvOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a CSV of cluster labels (path, cluster, confidence), one row per image.

    Without --head it runs the whole pipeline: scan, embed (cached), mine neighbours, train, assign.
    """
    _folder_or_features(ctx, folder, features)
    ui = UI(quiet)
    with handled(ui), Printer(ui) as show:
        if features is not None:
            needs_images = "only to a FOLDER, not with --features: the images themselves are needed, not their features"
            _refuse_given(ctx, ("report", "near_duplicates"), needs_images)
            if head is not None:
                _refuse_training_options(ctx)
            from imgcluster.scale import assign_store

            assign_store(
                features, out=out or _default_csv(_store_name(features)), head=head, engine=engine, address=ray_address,
                train_sample=train_sample, knn_threshold=knn_threshold, nprobe=nprobe, min_confidence=min_confidence, names=names,
                explain=explain, device=device, runtime=runtime, raw_csv=raw_csv,
                progress=show, **(_training(ctx, objective, clusters, k_min, k_max, epochs, batch_size, lr, knn, seed, balance, self_label,
                                             uco, option) if head is None else {}),
            )  # fmt: skip
            return
        _refuse_given(ctx, ("engine", "ray_address", "train_sample", "knn_threshold", "nprobe"), "only with --features")
        assert folder is not None  # _folder_or_features
        # --out "" is refused, not the default; `assign /` wrote "-clusters.csv", a name commands take for an option
        out = _default_csv(Path(folder).resolve().name or "root") if out is None else out
        if report and (out == "-" or is_stream(Path(out))):
            where = "stdout" if out == "-" else f"{out}, which is not a regular file"
            raise ParameterError(f"--report needs --out FILE: the report is written beside the CSV, not beside {where}")
        if report:
            from imgcluster.report import default_report_path

            if (page := default_report_path(Path(out))).is_dir():  # said after the whole run, naming --out
                raise ParameterError(f"--report writes {literal(page)} beside the CSV, and that is a folder")
        if head is not None:
            _refuse_training_options(ctx)
        training = _training(ctx, objective, clusters, k_min, k_max, epochs, batch_size, lr, knn, seed, balance, self_label, uco, option)
        result = imgcluster.cluster_folder(
            folder, out=out, head=head, explain=explain, names=names, min_confidence=min_confidence, near_duplicates=near_duplicates,
            raw_csv=raw_csv, progress=show, **(training if head is None else {}),
            **_embedding(
                model, weights, cache_dir, embed_batch_size, workers, device, dtype, follow_symlinks, compile_model, lock_timeout, rehash,
                reembed, runtime,
            ),
        )  # fmt: skip
        if report:
            _write_report(show, Path(out), features=(result.paths, result.embeddings.features), follow_symlinks=follow_symlinks)


@app.command(
    cls=Command,
    epilog="Examples:\n\n  imgcluster evaluate photos-clusters.csv ./labelled-photos\n\n"
    "  imgcluster evaluate clusters.csv sample_data --json > clusters.csv.eval.json   # report then adds majority labels",
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

    ui = UI(quiet)
    with handled(ui, STOPPED["nothing"]):
        evaluation = imgcluster.evaluate(assignments, labelled_folder)
        if evaluation.unassigned_images:  # ACC 1.0 of 1 image in 18 read as perfect
            e = evaluation
            ui.warn(
                f"the CSV covers {e.matched} of the {e.labelled} labelled images ({100 * e.coverage:.1f}%): the scores are of those "
                f"{count(e.matched, 'image')} only; ACC of all {e.labelled}, the {e.unassigned_images} missing counted wrong, "
                f"is {e.acc_of_labelled:.4f}"
            )
        if evaluation.unlabelled_rows:  # they were counted as "not in the folder", which they are
            ui.warn(
                f"rows of the CSV for images at the top of {literal(labelled_folder)}, outside every sub-folder, have no label "
                f"and are not scored: {_with_examples(evaluation.unlabelled_rows, evaluation.unlabelled_examples)}"
            )
        with writing_stdout():
            if as_json:
                if not quiet:
                    _print_evaluation(ui.console, evaluation)
                sys.stdout.write(json.dumps(evaluation.to_dict(), indent=2) + "\n")
            else:
                # Rendered first, then written: rich ends a broken pipe with exit 1, the write below
                # reaches handled(), which ends it as `| head` expects (141, silently).
                buffer = _Rendered(getattr(sys.stdout, "encoding", None) or "utf-8")
                width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100
                _print_evaluation(Console(file=buffer, width=width, highlight=False, soft_wrap=True), evaluation)
                sys.stdout.write(buffer.getvalue())


@app.command(
    cls=Command,
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
    follow_symlinks: SymlinkOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write one self-contained HTML page of thumbnails per cluster; open it from disk in any browser."""
    ui = UI(quiet)
    with handled(ui, STOPPED["report"]), Printer(ui) as show:
        options = {"out": out, "labels": labels, "folder": folder, "montage": montage, "per_cluster": per_cluster}
        _write_report(show, assignments, follow_symlinks=follow_symlinks, **options)


@app.command(
    cls=Command,
    epilog="Examples:\n\n  imgcluster export photos-clusters.csv --to ./sorted            # hard links, one folder per cluster\n\n"
    "  imgcluster export photos-clusters.csv --to /mnt/usb/sorted --mode copy",
)
def export(
    assignments: Annotated[Path, typer.Argument(metavar="CSV", help="CSV written by `imgcluster assign`.", show_default=False)],
    to: Annotated[
        Path, typer.Option("--to", metavar="DIR", help="Folder to fill (created if needed); must not be inside the image folder.")
    ],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            metavar="link|symlink|copy",
            help="link: hard links (symbolic ones across file systems); symlink: symbolic links; copy: copies.",
        ),
    ] = "link",
    folder: Annotated[
        Optional[Path], typer.Option("--folder", help="Image folder, when the CSV has no sidecar JSON or the images moved.")
    ] = None,
    follow_symlinks: SymlinkOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Put the images into one sub-folder per cluster (NN-name), outliers and near-duplicates in their own.

    Never moves, changes or deletes an image; a file already in the folder is never overwritten, so a rerun is safe.
    """
    ui = UI(quiet)
    with handled(ui, STOPPED["export"]), Printer(ui) as show:
        imgcluster.export(assignments, to, mode, folder=folder, follow_symlinks=follow_symlinks, progress=show)


@app.command(
    cls=Command,
    epilog="Examples:\n\n  imgcluster objectives\n\n"
    "  imgcluster assign ./photos --objective scan --option entropy_weight=3 --self-label",
)
def objectives(quiet: QuietOpt = False) -> None:  # --quiet as every command takes it: a script adding it to each failed here
    """List the clustering objectives and their hyper-parameters (for --option)."""
    import dataclasses

    from imgcluster.objectives import DEFAULT_OBJECTIVE, list_objectives, objective_class

    with handled(UI(quiet), STOPPED["nothing"]), writing_stdout():
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
    from rich.markup import escape
    from rich.table import Table

    e = evaluation
    table = Table(title="clustering scores", title_justify="left")  # one score a row: fits any terminal
    table.add_column("score")
    table.add_column("value", justify="right")
    rows = {
        "ACC (Hungarian)": f"{e.acc:.4f}", "NMI": f"{e.nmi:.4f}", "ARI": f"{e.ari:.4f}", "AMI": f"{e.ami:.4f}",
        "purity": f"{e.purity:.4f}", "images matched": str(e.matched),
        "rows not in the folder": _with_examples(e.unmatched_assignments, e.unmatched_examples),
        "images not in the CSV": _with_examples(e.unassigned_images, e.unassigned_examples),
        **({"rows with no label (at the folder's top)": _with_examples(e.unlabelled_rows, e.unlabelled_examples)}
           if e.unlabelled_rows else {}),
        **({"coverage": f"{e.matched} of {e.labelled} labelled images ({100 * e.coverage:.1f}%)",
            "ACC, missing = wrong": f"{e.acc_of_labelled:.4f}"} if e.unassigned_images else {}),
        "clusters": str(e.clusters), "classes": str(e.classes),
    }  # fmt: skip
    for name, value in rows.items():
        table.add_row(name, escape(one_line(value)))  # file names are not markup, nor terminal controls
    console.print(table)
    per = Table(title="per-cluster purity", title_justify="left")
    named = any(p.name for p in e.per_cluster)  # the name column only when the CSV has one
    for column in ("cluster", "size", *(("name",) if named else ()), "majority label", "purity"):
        per.add_column(column, justify="right")
    for p in e.per_cluster:
        cells = (escape(one_line(p.name)),) if named else ()  # names and folder names are text, not markup
        per.add_row(str(p.cluster), str(p.size), *cells, escape(one_line(p.majority_label)), f"{p.purity:.3f}")
    console.print(per)



class _Rendered(io.StringIO):
    """Text rendered for a stream of ``encoding``: rich draws the tables in ASCII for one that is not UTF-8 (they
    came out as backslash escapes under PYTHONIOENCODING=ascii)."""

    def __init__(self, encoding: str) -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding


def _with_examples(n: int, examples: list[str]) -> str:
    """``2 (a.png, b.png)``, or ``7 (a.png, b.png, c.png, d.png, e.png, ...)`` when not all are named."""
    if not examples:
        return str(n)
    more = ", ..." if n > len(examples) else ""
    return f"{n} ({', '.join(examples)}{more})"


def main() -> None:
    import gc
    import signal

    from imgcluster.signals import exit_by_signal, stops_as_interrupt

    # Text for people (evaluate's table, objectives, the help) that stdout's encoding cannot show is written escaped,
    # as Python writes stderr: a label "bäg ☂" under PYTHONIOENCODING=ascii or a Latin-1 locale ended evaluate in
    # "unexpected UnicodeEncodeError". Data keeps every character: the CSV is UTF-8 (csvfile.utf8), JSON is ASCII.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    try:
        with stops_as_interrupt():  # SIGTERM or SIGHUP while still importing ends like Ctrl-C, not mid-way
            app(prog_name="imgcluster")
    except SystemExit:
        exit_by_signal()  # after Ctrl-C, SIGTERM or SIGHUP: end by that signal, so a calling script stops too
        # The run is over and has said so: a Ctrl-C while the interpreter tears down (torch's exit
        # hooks, a second on a busy machine) ends the process by SIGINT at once. It printed a
        # traceback from an atexit callback after the run's last line.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # The process ends now: Python's collections while it tears down torch's millions of objects
        # took 2 s of a cached run's 8 (benchmarks/results_startup.md); frozen, they are left alone.
        gc.freeze()
        raise
