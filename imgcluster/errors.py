"""Errors a user can act on. The CLI prints them as one line; anything else is a bug."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input or the environment, reported in one line with exit code 1.

    ``exit_code`` 2 is for usage errors (bad option values), as Click uses.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def out_of_memory_summary(exc: BaseException) -> str:
    """The first two sentences of torch's CUDA out-of-memory message (what was asked, what the GPU
    has); the rest is allocator advice that does not fit one line."""
    return ". ".join(str(exc).split(". ")[:2]).rstrip(".")
