"""Progress as events: the library reports what it does, the caller decides how to show it.

One callable receives every :class:`Event`. ``kind`` says what it is: a stage that ``start``s
with a total, ``advance``s by some steps, a line of ``info`` or a ``warning``, or a ``mark``: a
moment inside a stage (one of the ``MARKS`` below) for whoever times the stages; progress
displays ignore marks. Messages may
name library parameters as ``{placeholders}``: ``str(event)`` shows the names, :meth:`Event.render`
whatever a caller maps them to (the CLI: its flags).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from imgcluster.errors import ParameterError, literal, render

Kind = Literal["start", "advance", "info", "warning", "mark"]

# The messages of ``mark`` events. Each is sent the moment it names, so the time between two
# marks (or a mark and an ``advance``) is what happened in between.
MODEL_READY = "model ready"  # stage model: the backbone is loaded and prepared; decoding starts
BATCH_DECODED = "batch decoded"  # stage embed: a batch is decoded; its forward pass starts (the advance ends it)
SAVING = "saving features"  # stage embed: a write to the feature cache starts ...
SAVED = "features saved"  # ... and ends
MARKS = (MODEL_READY, BATCH_DECODED, SAVING, SAVED)


@dataclass(frozen=True)
class Event:
    """One thing that happened: ``stage`` is ``model``, ``embed``, ``choose_k``, ``train``, ``assign``,
    ``write``, ``report`` or ``export`` (from a feature store also ``sample`` and ``knn``);
    ``done``/``total`` count the stage's steps (images, optimiser steps, thumbnails)."""

    stage: str
    kind: Kind
    message: str = ""
    done: int = 0
    total: int = 0
    status: str = ""  # a short note for a progress bar ("loss 0.4127")

    def render(self, names: Mapping[str, str]) -> str:
        return render(self.message, names)

    def __str__(self) -> str:
        return self.render({})


ProgressFn = Callable[[Event], None]


def check_progress(progress: object) -> None:
    """A ``progress`` that cannot be called failed only at the first event, after the scan or
    the model's load; refused where the other cheap checks run."""
    if progress is not None and not callable(progress):
        raise ParameterError(f"{{progress}} takes a function that receives each Event (or None), not a {literal(type(progress).__name__)}")


def keeping_warnings(progress: ProgressFn | None) -> tuple[ProgressFn, list[str]]:
    """``progress`` that also keeps every warning's text, so that a result can carry its warnings."""
    kept: list[str] = []

    def relay(event: Event) -> None:
        if event.kind == "warning":
            kept.append(str(event))
        if progress is not None:
            progress(event)

    return relay, kept


def count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``: messages read as sentences."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# How a skipped file's reason starts when the file was read but its features could not be kept (the local
# cache's embedding loop, the embed job's writer; featurestore.unstorable says why): not an unreadable file.
NOT_CACHED, NOT_STORED = "not cached: ", "not stored: "


def skipped_files(reasons: Iterable[str]) -> str:
    """``3 unreadable files``, ``1 file whose features could not be kept``, or ``3 files (2 unreadable, 1
    whose features could not be kept)``, from the skipped files' reasons: a file skipped because its
    features were beyond what the cache holds was counted as unreadable, which it is not."""
    reasons = list(reasons)
    kept_out = sum(reason.startswith((NOT_CACHED, NOT_STORED)) for reason in reasons)
    if not kept_out:
        return count(len(reasons), "unreadable file")
    whose = "whose features could not be kept"
    if kept_out == len(reasons):
        return f"{count(kept_out, 'file')} {whose}"
    return f"{count(len(reasons), 'file')} ({len(reasons) - kept_out} unreadable, {kept_out} {whose})"


class Reporter:
    """What library code calls: ``report.info("...")`` instead of building events by hand."""

    def __init__(self, progress: ProgressFn | None, stage: str) -> None:
        self._progress = progress
        self.stage = stage
        self._done = 0
        self._total = 0

    def at(self, stage: str) -> Reporter:
        """The same callback, for another stage."""
        return Reporter(self._progress, stage)

    def _emit(self, event: Event) -> None:
        if self._progress is not None:
            self._progress(event)

    def info(self, message: str) -> None:
        self._emit(Event(self.stage, "info", message))

    def warning(self, message: str) -> None:
        self._emit(Event(self.stage, "warning", message))

    def mark(self, message: str) -> None:
        self._emit(Event(self.stage, "mark", message))

    def start(self, total: int, message: str = "") -> None:
        """A stage of ``total`` steps begins; ``message`` names it for a progress bar."""
        self._done, self._total = 0, total
        self._emit(Event(self.stage, "start", message, total=total))

    @property
    def done(self) -> int:
        """Steps reported so far in the current stage."""
        return self._done

    def advance(self, n: int = 1, message: str = "", status: str = "", total: int | None = None) -> None:
        """``n`` more steps done; ``total`` replaces the stage's total (a stage that ends early)."""
        self._done += n
        self._total = self._total if total is None else total
        self._emit(Event(self.stage, "advance", message, self._done, self._total, status))
