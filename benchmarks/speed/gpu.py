"""Section (c): with CUDA, both pipelines on the GPU, head training and kNN at size."""

from __future__ import annotations

import time

import torch

from imgcluster.config import TrainConfig
from speed.compare import STAGE_NOTES, compare_pipelines, table_header, warm_up
from speed.folders import prepare_folders
from speed.gpu_sampler import GpuSampler
from speed.runs import LITE0, random_vit
from speed.scale import random_unit


def gpu_benchmark(n: int, parts: int, device: torch.device, train_n: int = 50_000, knn_n: int = 1_000_000) -> list[str]:
    """Section (c). ``device`` is CUDA; the CPU only for a quick check that the section runs."""
    from imgcluster.neighbours import faiss_has_gpu, knn_search
    from imgcluster.train import train_objective

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke run of the GPU section)"
    gpu = device.type == "cuda"
    folders = prepare_folders(n, parts)
    lines = [
        f"### (c) GPU: {name}",
        "",
        f"First {n:,} Fashion-MNIST test images in {parts} parts, reference and ours in ABBA order after an "
        "untimed warm-up of both; the reference runs in float32 with batch 64, no workers and cuDNN's "
        "defaults, ours with its defaults on CUDA (batch 256, decode workers, pinned memory, bfloat16 "
        "autocast, batch norm folded, channels-last). Times in seconds.",
        "",
    ]
    summary = []
    for model_spec in (LITE0, random_vit()):
        warm_up(folders["PNG 28 px"][0], device, model_spec)
        rows, lines_summary = compare_pipelines(folders, device, model_spec, gpu=True)
        lines += [f"**{model_spec.label}**", "", *table_header(gpu=True), *rows, ""]
        summary += lines_summary
    lines += [STAGE_NOTES, "", *summary, "", "| what | result | GPU utilisation (nvidia-smi) |", "|---|---|---|"]
    x = random_unit(train_n, 384)
    idx, _ = knn_search(x, 20, use_gpu=gpu)
    sampler = GpuSampler()
    with sampler.running():
        trained = train_objective(x, idx, TrainConfig(clusters=10, seed=0), device)
    lines.append(
        f"| train the default head ({trained.objective.name}), {train_n:,} x 384 random unit features, "
        f"{trained.schedule['epochs']} epochs, batch {trained.schedule['batch_size']} | {trained.seconds:.1f} s | {sampler.summary()} |"
    )
    x = random_unit(knn_n, 384)
    sampler = GpuSampler()
    with sampler.running():
        t = time.perf_counter()
        knn_search(x, 20, use_gpu=gpu)
        seconds = time.perf_counter() - t
    how = ("faiss-gpu" if faiss_has_gpu() else "torch blocked matmul, exact") if gpu else "faiss, CPU"
    lines.append(f"| kNN k=20, {knn_n:,} x 384 ({how}) | {seconds:.1f} s | {sampler.summary()} |")
    return lines
