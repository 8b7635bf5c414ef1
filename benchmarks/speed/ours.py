"""The project's embed path, timed stage by stage from the progress events it sends."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import imgcluster
from imgcluster.progress import BATCH_DECODED, MODEL_READY, SAVED, SAVING, Event
from speed.folders import image_paths
from speed.runs import LITE0, Model, Run, cpu_seconds


@dataclass
class StageClock:
    """A ``progress=`` callback that adds up the time between the embed path's marks: setup until the
    model is ready, forward passes from a batch decoded to its ``advance``, cache writes from
    ``SAVING`` to ``SAVED``. On a GPU the forward pass ends when its features are back on the host."""

    start: float
    ready: float | None = None
    model: float = 0.0
    write: float = 0.0
    since: dict[str, float] = field(default_factory=dict)

    def __call__(self, event: Event) -> None:
        now = time.perf_counter()
        if event.kind == "mark" and event.message == MODEL_READY:
            self.ready = now
        elif event.kind == "mark" and event.message in (BATCH_DECODED, SAVING):
            self.since[event.message] = now
        elif event.kind == "mark" and event.message == SAVED:
            self.write += now - self.since.pop(SAVING)
        elif event.kind == "advance" and event.stage == "embed" and BATCH_DECODED in self.since:
            self.model += now - self.since.pop(BATCH_DECODED)


def run_ours(
    folder: Path, device: torch.device, model_spec: Model = LITE0, workers: int | None = None, batch_size: int | None = None
) -> Run:
    """The project's embed path with its defaults (batch sized to the device: 64 CPU, 256 CUDA)."""
    with tempfile.TemporaryDirectory() as cache:
        start, cpu0 = time.perf_counter(), cpu_seconds()
        clock = StageClock(start)
        result = imgcluster.embed(
            folder,
            model_spec.name,
            weights=model_spec.weights,
            cache_dir=cache,
            device=device.type,
            workers=workers,
            embed_batch_size=batch_size,
            progress=clock,
        )
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
    assert result.embedded == len(image_paths(folder)) and not result.skipped and clock.ready is not None
    stages = {"setup": clock.ready - start, "model": clock.model, "write": clock.write}
    stages["decode wait"] = wall - sum(stages.values())  # main process waiting on decode workers, plus loop overhead
    return Run(result.embedded, wall, cpu, stages)
