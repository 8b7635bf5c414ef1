"""Section (a): embed throughput on the CPU, ours against the reference, and where the time goes."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcluster.backbones import create_backbone
from imgcluster.embedding import draft_size_for
from imgcluster.load import load_rgb
from speed.compare import STAGE_NOTES, compare_pipelines, table_header, warm_up
from speed.folders import image_paths, prepare_folders
from speed.reference import reference_transform
from speed.runs import BATCH, LITE0, MODEL


def per_image_costs(folder: Path, sample: int = 200) -> dict[str, float]:
    """Milliseconds per image of each decode/preprocess step, one process, one thread: the CPU
    work behind the pipelined numbers (ours runs it in decode workers beside the model)."""
    from timm.data import create_transform

    backbone = create_backbone(MODEL)
    paths = image_paths(folder)[:sample]
    ours_transform = create_transform(**backbone.data_config, is_training=False)
    ref_transform = reference_transform(backbone.data_config)
    draft = draft_size_for(backbone.data_config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs = {"ref decode": 0.0, "ref preprocess": 0.0, "ours decode": 0.0, "ours preprocess": 0.0}
    try:
        for path in paths:
            t0 = time.perf_counter()
            image = Image.open(path).convert("RGB")
            t1 = time.perf_counter()
            ref_transform(image)
            t2 = time.perf_counter()
            ours = load_rgb(path, draft)
            t3 = time.perf_counter()
            ours_transform(ours)
            t4 = time.perf_counter()
            costs["ref decode"] += t1 - t0
            costs["ref preprocess"] += t2 - t1
            costs["ours decode"] += t3 - t2
            costs["ours preprocess"] += t4 - t3
    finally:
        torch.set_num_threads(threads)
    return {k: 1000 * v / len(paths) for k, v in costs.items()}


def model_forward_costs(repeats: int = 3) -> list[str]:
    """CPU seconds per image of one batch-64 forward pass, reference model vs ours (folded,
    channels-last), interleaved, best of ``repeats``: the model part of the ratio, measured in CPU
    time so that other jobs on the machine barely move it."""
    from imgcluster.embedding import prepare_model

    backbone = create_backbone(MODEL)
    ours = prepare_model(backbone, torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, size=(BATCH, 3, 224, 224)).astype(np.float32))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    lines = ["", f"Model forward alone (batch {BATCH}, best of {repeats} interleaved repeats, CPU ms per image):", ""]
    lines += ["| torch threads | reference (eager, float32) | imgcluster (BN folded, channels-last) | ratio |", "|---|---|---|---|"]
    try:
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            best = {"ref": math.inf, "ours": math.inf}
            with torch.inference_mode():
                backbone.model(x), ours(x_cl)  # first calls pick kernels
                for _ in range(repeats):
                    for which, model, inp in (("ref", backbone.model, x), ("ours", ours, x_cl)):
                        t = time.process_time()
                        model(inp)
                        best[which] = min(best[which], (time.process_time() - t) / BATCH)
            lines.append(f"| {n_threads} | {1000 * best['ref']:.1f} | {1000 * best['ours']:.1f} | {best['ref'] / best['ours']:.2f}x |")
            print(f"  model forward, {n_threads} threads: {lines[-1]}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return lines


def embed_benchmark(n: int, parts: int, device: torch.device) -> list[str]:
    folders = prepare_folders(n, parts)
    warm_up(folders["PNG 28 px"][0], device)
    lines = [
        f"### (a) Embed throughput, {MODEL}, {device.type.upper()}, first {n:,} Fashion-MNIST test images",
        "",
        f"Each folder is split into {parts} parts; reference and ours alternate on each part (ABBA order) "
        "and the table sums the parts. Times in seconds; `images/s` is images over wall time, model "
        "creation and worker start-up included. `CPU s/img`: user + system CPU seconds per image of "
        "the process and its decode workers (less sensitive to other jobs on the machine than wall time).",
        "",
        *table_header(gpu=False),
    ]
    rows, summary = compare_pipelines(folders, device, LITE0)
    costs_lines = ["", "Per-image CPU cost of the steps that run in the loader (one thread, 200 images, ms/image):", ""]
    costs_lines += ["| images | ref decode | ref preprocess | ours decode (draft) | ours preprocess |", "|---|---|---|---|---|"]
    for name, parts_dirs in folders.items():
        c = per_image_costs(parts_dirs[0])
        costs_lines.append(
            f"| {name} | {c['ref decode']:.2f} | {c['ref preprocess']:.2f} | {c['ours decode']:.2f} | {c['ours preprocess']:.2f} |"
        )
    return lines + rows + costs_lines + model_forward_costs() + ["", STAGE_NOTES, "", *summary]
