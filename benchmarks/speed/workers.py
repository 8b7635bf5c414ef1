"""Section (d): our pipeline alone with each decode-worker count."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from imgcluster.embedding import default_workers
from speed.compare import warm_up
from speed.folders import prepare_folders, repeated, warm_page_cache
from speed.gpu_sampler import GpuSampler
from speed.ours import run_ours
from speed.runs import LITE0, Model, Run, announced, in_abba_order, random_vit


def workers_sweep(
    counts: list[int], n: int, device: torch.device, repeat: int = 1, models: tuple[str, ...] = ("lite0", "vit")
) -> list[str]:
    """Section (d): our pipeline alone with each decode-worker count, in A B B A order per folder;
    on a GPU the model waits for decoding, so this is what sets the default worker count there.
    ``repeat`` > 1 sweeps only the JPEG folder, its images ``repeat`` times over."""
    folders = prepare_folders(n, 1)
    warm_folder = folders["PNG 28 px"][0]
    if repeat > 1:
        folders = {f"JPEG 512 px x{repeat}": [repeated(folders["JPEG 512 px"][0], repeat)]}
    total = n * repeat
    lines = [
        f"### (d) Decode workers, {device.type.upper()}" + (f": {torch.cuda.get_device_name(0)}" if device.type == "cuda" else ""),
        "",
        f"First {n:,} Fashion-MNIST test images"
        + (f", {repeat} times over ({total:,} files, hard links)" if repeat > 1 else "")
        + f", our pipeline with `--workers` set to each count "
        f"({os.cpu_count()} CPU cores; the default is {default_workers(total, device)}), each count run twice in "
        "A B B A order after a warm-up; wall time includes starting the workers.",
        "",
        "| model | images | workers | images/s | decode wait s | model s | GPU utilisation |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in models:
        model_spec = LITE0 if key == "lite0" else random_vit()
        warm_up(warm_folder, device, model_spec)
        for name, (folder,) in folders.items():
            warm_page_cache(folder)
            samplers = {c: GpuSampler() for c in counts}

            def with_workers(c: int, folder: Path = folder, name: str = name, model_spec: Model = model_spec) -> Run:
                return announced(run_ours(folder, device, model_spec, workers=c), f"{model_spec.label} {name} workers {c}")

            runs = in_abba_order(counts, with_workers, samplers)
            for c in counts:
                images, wall = sum(r.images for r in runs[c]), sum(r.wall for r in runs[c])
                wait = sum(r.stages["decode wait"] for r in runs[c])
                model_s = sum(r.stages["model"] for r in runs[c])
                lines.append(
                    f"| {model_spec.label} | {name} | {c} | {images / wall:.1f} | {wait:.1f} | {model_s:.1f} | {samplers[c].summary()} |"
                )
    return lines
