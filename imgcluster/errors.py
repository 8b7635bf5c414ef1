"""Errors a caller can act on. The library raises them; only the CLI turns them into lines and exit codes.

Library messages never name a command-line flag: a message names the library parameter it is
about as a ``{placeholder}`` (``{n_clusters}``, ``{model}``); ``str(error)`` shows the parameter
name and the CLI renders it as its flag (``--clusters``), so the same error reads right from
Python and from the shell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


# The parameter names a message may mention as ``{name}``. Only these are placeholders, so a file
# name quoted in a message (``/data/{2024}/a.png``, ``{draft}.png``) is shown as it is (one that
# spells a parameter, ``{seed}``, needs :func:`literal`); tests/test_errors.py checks that every
# placeholder the package writes is listed here.
PARAMETERS = frozenset(
    {
        "actors", "address", "assignments", "balance", "batch_size", "cache_dir", "compile_model", "device", "dtype",
        "embed_batch_size", "engine", "epochs", "explain", "features_out", "folder", "folder_or_paths", "follow_symlinks",
        "head", "k_max", "k_min", "knn", "labelled_folder", "labels", "lock_timeout", "lr", "mad_factor", "manifest", "min_confidence",
        "mode", "model", "montage", "n_clusters", "names", "near_duplicates", "num_gpus", "objective", "objective_options", "out",
        "path", "per_cluster", "progress", "raw_csv", "reembed", "rehash", "retry_skipped", "runtime", "seed", "self_label", "source",
        "threshold", "to", "train_sample", "uco", "weights", "workers",
        "knn_threshold", "nprobe",  # the Ray path's kNN search (imgcluster.scale.knn)
    }
)  # fmt: skip


_BRACE = "\ue000"  # stands for a "{" of quoted text until the message is rendered


def literal(text: object) -> str:
    """``text`` (a file name, a value the user typed) to quote in a template: its braces stay braces.

    A folder named ``{seed}`` was reported as ``folder not found: --seed``, and ``{out}.csv`` as
    ``--out.csv``, because the name's braces read as placeholders.
    """
    return str(text).replace("{", _BRACE)


def render(template: str, names: Mapping[str, str]) -> str:
    """``template`` with each ``{parameter}`` replaced by ``names[parameter]`` (default: the name itself)."""

    def name(match: re.Match[str]) -> str:
        word = match.group(1)
        return names.get(word, word) if word in PARAMETERS else match.group(0)

    return _PLACEHOLDER.sub(name, template).replace(_BRACE, "{")


def placeholders(template: str) -> tuple[str, ...]:
    """The parameter names a template mentions, in order, each once."""
    return tuple(dict.fromkeys(w for w in _PLACEHOLDER.findall(template) if w in PARAMETERS))


class ImgclusterError(Exception):
    """A problem in the input or the environment (an unreadable folder, a damaged head), not a bug.

    ``template`` may name parameters as ``{placeholders}``, like :class:`ParameterError`, when the
    advice is to change one ("try a smaller {lr}").
    """

    def __init__(self, template: str, parameter: str | None = None) -> None:
        self.template = template
        self.parameters: tuple[str, ...] = placeholders(template) or ((parameter,) if parameter else ())
        super().__init__(self.render({}))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each ``{parameter}`` replaced by ``names[parameter]`` (default: itself)."""
        return render(self.template, names)


class ParameterError(ImgclusterError, ValueError):
    """A bad argument value, naming the parameter(s) it concerns.

    ``str(error)`` shows the parameter names (``n_clusters 10 is larger than the number of
    images``), :meth:`render` whatever names the caller maps them to (the CLI: ``--clusters 10
    is larger ...``). ``parameters`` lists the placeholders' names, or the one given as
    ``parameter`` when the message has none.
    """


def first_sentences(exc: BaseException, n: int) -> str:
    """The first ``n`` sentences of a library's error, without the last full stop: torch's CUDA
    out-of-memory message says what was asked and what the GPU has in two, then gives allocator
    advice that does not fit one line; DataLoader names the dead worker in one."""
    return ". ".join(str(exc).split(". ")[:n]).rstrip(".")
