"""Errors a user can act on. The CLI prints them as one line; anything else is a bug."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input or the environment, reported in one line with exit code 1.

    ``exit_code`` 2 is for usage errors (bad option values), as Click uses.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def first_sentences(exc: BaseException, n: int) -> str:
    """The first ``n`` sentences of a library's error, without the last full stop: torch's CUDA
    out-of-memory message says what was asked and what the GPU has in two, then gives allocator
    advice that does not fit one line; DataLoader names the dead worker in one."""
    return ". ".join(str(exc).split(". ")[:n]).rstrip(".")
