"""What every embed comparison shares: one timed run, the models both pipelines build, ABBA order."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from speed.folders import DATA
from speed.gpu_sampler import GpuSampler

MODEL = "efficientnet-lite0"
BATCH = 64  # the reference pipeline's batch


@dataclass
class Run:
    """One pipeline over one part of a folder."""

    images: int
    wall: float
    cpu: float  # user + system seconds of this process and its reaped children (decode workers)
    stages: dict[str, float] = field(default_factory=dict)


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def announced(run: Run, label: str) -> Run:
    """Print a run's images/s as it finishes: progress for whoever watches a long benchmark."""
    print(f"  {label}: {run.images / run.wall:.1f} images/s", flush=True)
    return run


@dataclass(frozen=True)
class Model:
    """A backbone both pipelines build the same way: a project model name and an optional weights file."""

    label: str
    name: str
    weights: str | None = None


LITE0 = Model(MODEL, MODEL)


LITE0 = Model(MODEL, MODEL)
K = TypeVar("K")  # what in_abba_order compares: worker counts, batch policies


def in_abba_order(keys: list[K], run: Callable[[K], Run], samplers: dict[K, GpuSampler] | None = None) -> dict[K, list[Run]]:
    """Each of ``keys`` run twice, in A B B A order, so a drift over the runs (a warming cache, a
    busy neighbour) falls on every key alike; ``samplers`` watch the GPU during each key's runs."""
    runs: dict[K, list[Run]] = {k: [] for k in keys}
    for k in [*keys, *reversed(keys)]:
        with samplers[k].running() if samplers else contextlib.nullcontext():
            runs[k].append(run(k))
    return runs


def random_vit() -> Model:
    """DINOv2 ViT-S/14 at 224 px with random weights, saved as a weights file: the default model's
    cost without a download, through the same ``--weights FILE`` path a user would take."""
    path = DATA / "speed" / "vit_small_patch14_dinov2-random.safetensors"
    if not path.exists():
        import timm
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Model("vit_small_patch14_dinov2 (random weights)", "dinov2-vits14", str(path))
