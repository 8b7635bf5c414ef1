"""Section (e): small folders on the CPU, batches sized to the folder against the full 64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcluster.embedding import default_batch_size
from speed.compare import warm_up
from speed.folders import DATA, fill_once, first_pngs
from speed.ours import run_ours
from speed.runs import LITE0, Model, Run, in_abba_order, random_vit


def small_folders(sizes: list[int]) -> list[str]:
    """Section (e): small folders on the CPU, forward passes padded to a batch sized to the folder
    (the default) against padding to the full 64 (the default before), on the same images."""
    cpu = torch.device("cpu")
    lines = [
        "### (e) Small folders, CPU",
        "",
        "Every forward pass is padded to the embedding batch. Our pipeline on the first N Fashion-MNIST "
        "test PNGs with the default batch (N rounded up to a multiple of 8, at most 64) against "
        "`--embed-batch-size 64` (what every folder got before), in A B B A order; seconds per run, "
        "model creation included.",
        "",
        "| model | images | batch | seconds, batch 64 | seconds, default | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    folders = {n: fill_once(DATA / "speed" / f"small-{n}", first_pngs(n)) for n in sizes}
    for model_spec in (LITE0, random_vit()):
        warm_up(folders[sizes[0]], cpu, model_spec)
        for n, folder in folders.items():

            def padded_to(which: str, folder: Path = folder, model_spec: Model = model_spec) -> Run:
                return run_ours(folder, cpu, model_spec, batch_size=64 if which == "full" else None)

            runs = in_abba_order(["full", "sized"], padded_to)
            full, sized = (float(np.mean([r.wall for r in runs[w]])) for w in ("full", "sized"))
            print(f"  {model_spec.label} {n} images: batch 64 {full:.1f} s, default {sized:.1f} s", flush=True)
            lines.append(f"| {model_spec.label} | {n} | {default_batch_size(cpu, n)} | {full:.1f} | {sized:.1f} | {full / sized:.1f}x |")
    return lines
