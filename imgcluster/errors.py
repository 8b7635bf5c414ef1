"""Errors a caller can act on. The library raises them; only the CLI turns them into lines and exit codes.

Library messages never name a command-line flag: a :class:`ParameterError` names the parameter
(``n_clusters``, ``model``) and the CLI renders it as its flag (``--clusters``), so the same error
reads right from Python and from the shell.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ImgclusterError(Exception):
    """A mistake in the input or the environment (an unreadable folder, a damaged head), not a bug."""


class UserError(ImgclusterError):
    """Deprecated spelling kept while call sites move to :class:`ImgclusterError` / :class:`ParameterError`.

    ``exit_code`` 2 marks a usage error; new code raises :class:`ParameterError` instead.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ParameterError(ImgclusterError, ValueError):
    """A bad argument value, naming the parameter(s) it concerns.

    ``template`` may hold ``{name}`` placeholders: ``str(error)`` shows the parameter names
    (``n_clusters 10 is larger than the number of images``), :meth:`render` shows whatever names
    the caller maps them to (the CLI: ``--clusters 10 is larger ...``). ``parameters`` lists the
    placeholders' names, or the one given as ``parameter`` when the message has none.
    """

    def __init__(self, template: str, parameter: str | None = None) -> None:
        self.template = template
        names = tuple(dict.fromkeys(_PLACEHOLDER.findall(template)))
        self.parameters: tuple[str, ...] = names or ((parameter,) if parameter else ())
        super().__init__(self.render({}))

    def render(self, names: Mapping[str, str]) -> str:
        """The message with each ``{parameter}`` replaced by ``names[parameter]`` (default: itself)."""
        return _PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(1)), self.template)


def first_sentences(exc: BaseException, n: int) -> str:
    """The first ``n`` sentences of a library's error, without the last full stop: torch's CUDA
    out-of-memory message says what was asked and what the GPU has in two, then gives allocator
    advice that does not fit one line; DataLoader names the dead worker in one."""
    return ". ".join(str(exc).split(". ")[:n]).rstrip(".")
