"""`make bench-speed`: how fast imgcluster embeds, and how it scales to large folders.

(a) Embed throughput of efficientnet-lite0 on the CPU over Fashion-MNIST PNGs (28 px) and the same
    images as 512-px JPEGs: the project's embed path (fresh cache each time) against a plain
    reference pipeline written here (PIL + torchvision transforms + a DataLoader with default
    settings and batch 64 + float32, same weights). The two run interleaved on the same files,
    ABBA order, so load from other processes hits both alike.
(b) Synthetic scale: random unit features (d=384) for N = 10k, 100k, 1M; wall time and peak RSS of
    kNN mining, head training (default objective, few epochs) and streaming assignment; each N in
    its own process so peaks are per stage; fitted scaling exponents.
(c) With CUDA: both pipelines again on the GPU for efficientnet-lite0 and a random-weight DINOv2
    ViT-S/14 (saved as a weights file, so both load it as a user's `--weights FILE`), with
    nvidia-smi utilisation and the same stage breakdown; head training on 50,000 x 384 features;
    kNN on 1M x 384. `--smoke-gpu-section` runs (c) on the CPU at toy sizes, only to check it runs.
(d) `--workers-sweep 8,15`: our pipeline alone with each decode-worker count (on CUDA when there is one).
(e) Small folders on the CPU: forward passes padded to a batch sized to the folder against the full 64.

Writes the markdown it prints to ``benchmarks/results_speed.md``. Each section is a module of
``benchmarks/speed/``; this script parses the options and strings the sections together.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import machine, write_section
from speed.embed_throughput import embed_benchmark
from speed.gpu import gpu_benchmark
from speed.scale import scale_benchmark, scale_worker
from speed.small_folders import small_folders
from speed.workers import workers_sweep

RESULTS = Path(__file__).resolve().parent / "results_speed.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images per folder for (a)")
    parser.add_argument("--parts", type=int, default=4, help="interleaved parts per folder for (a)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="N for (b), comma-separated")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for (b)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per N in (b)")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--scale-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-images", type=int, default=4000, help="images per folder for (c)")
    parser.add_argument("--gpu-parts", type=int, default=2, help="interleaved parts per folder for (c)")
    parser.add_argument("--skip-gpu", action="store_true", help="skip section (c)")
    parser.add_argument("--small-folders", default="10,40", help="section (e): small folder sizes on the CPU ('' to skip)")
    parser.add_argument("--workers-sweep", default="", help="section (d): decode-worker counts to compare, e.g. 8,15")
    parser.add_argument("--sweep-repeat", type=int, default=1, help="(d) on the JPEG folder's images this many times over")
    parser.add_argument("--sweep-models", default="lite0,vit", help="(d): lite0, vit or both")
    parser.add_argument(
        "--smoke-gpu-section", action="store_true", help="run section (c) on the CPU at toy sizes, only to check that it runs"
    )
    args = parser.parse_args()
    if args.scale_worker:
        scale_worker(args.scale_worker, args.dim, args.epochs, args.k, args.device)
        return

    started = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    sections = [
        "# Speed and scale (`make bench-speed`)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} when the benchmark started.",
        "",
    ]
    if not args.skip_embed:
        sections += [*embed_benchmark(args.images, args.parts, torch.device("cpu")), ""]
    if not args.skip_scale:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        sections += [*scale_benchmark(sizes, args.dim, args.epochs, args.k, args.timeout), ""]
    if args.skip_gpu:
        pass
    elif args.smoke_gpu_section:
        sections += [*gpu_benchmark(64, 2, torch.device("cpu"), train_n=2_000, knn_n=5_000), ""]
    elif torch.cuda.is_available():
        gpu_lines = gpu_benchmark(args.gpu_images, args.gpu_parts, torch.device("cuda"))
        write_section("speed-gpu", "\n".join(gpu_lines).replace("### (c) GPU", "## Speed on a GPU (`make bench-speed`, section (c))", 1))
        sections += [*gpu_lines, ""]
    else:
        sections += ["### (c) GPU", "", "Skipped: no CUDA GPU on this machine (`torch.cuda.is_available()` is False).", ""]
    if args.small_folders and not args.smoke_gpu_section:
        sections += [*small_folders([int(n) for n in args.small_folders.split(",")]), ""]
    if args.workers_sweep:
        device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke_gpu_section else "cpu")
        counts = [int(c) for c in args.workers_sweep.split(",")]
        n = 64 if args.smoke_gpu_section else args.gpu_images
        sections += [*workers_sweep(counts, n, device, args.sweep_repeat, tuple(args.sweep_models.split(","))), ""]
    sections.append(
        f"_Benchmark took {(time.perf_counter() - started) / 60:.1f} minutes; "
        f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._"
    )
    text = "\n".join(sections) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
