"""CPU time per image of the embed loop's steps outside the model, the previous way and the current one, side by side.

Two steps, each timed on the same images in alternating rounds (fastest round counts), in thread CPU
seconds of the process (all its threads), so other processes' load shows less than in wall time:

- decode + preprocess (what a decode worker does per image): the previous way, the picture made RGB
  as it is read and the transform's steps run on RGB (``load_rgb`` and ``Resize``, ``CenterCrop``,
  ``PILToTensor``); the current way, ``ImageDataset`` with ``split_transform``'s ``PixelSteps``
  (grey pictures resized and cropped grey, the channel repeated at the end). The dataset also
  hashes and stats each file, so the current way is timed with more work than the previous one.
- uint8 batch to the model's floats (per batch of 8, in the ONNX sessions' threads): the previous
  way, the torch operations (``PixelTable.compute``) on one thread and on two; the current way,
  the lookup table (``PixelTable``).

    python benchmarks/bench_embed_steps.py --images 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DATA, write_section  # noqa: E402
from datasets import FASHION_CLASSES, fashion_mnist_test, write_folder  # noqa: E402

from imgcluster.backbones import create_backbone  # noqa: E402
from imgcluster.embedding import ImageDataset, PixelTable, draft_size_for, limit_aspect, split_transform  # noqa: E402
from imgcluster.listing import list_images  # noqa: E402
from imgcluster.load import load_rgb  # noqa: E402
from imgcluster.speed import reuse_freed_memory  # noqa: E402

RESULTS = HERE / "results_runtime.md"


def fastest(calls: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """CPU seconds of this process (every thread: torch's OpenMP team too) for each call, fastest of ``rounds`` alternating rounds."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.process_time()
            call()
            best[name] = min(best[name], time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="first N Fashion-MNIST test images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--section", default="embed-steps")
    args = parser.parse_args()
    from timm.data import create_transform
    from torchvision import transforms as tv  # type: ignore[import-untyped]

    images, labels = fashion_mnist_test()
    folder = write_folder(images[:10000], labels[:10000], FASHION_CLASSES, DATA / "peers" / "fashion-mnist-10000")
    files = list_images(folder)[: args.images]
    backbone = create_backbone("efficientnet-lite0")
    whole = create_transform(**backbone.data_config, is_training=False)
    per_image, to_floats = split_transform(whole)
    assert isinstance(to_floats, PixelTable)
    draft = draft_size_for(backbone.data_config)
    as_rgb = tv.Compose([*whole.transforms[:-2], tv.PILToTensor()])
    dataset = ImageDataset(files, per_image, draft)
    load = os.getloadavg()[0]
    decode = fastest(
        {
            "previous": lambda: [as_rgb(limit_aspect(load_rgb(f.path, draft))) for f in files],
            "current": lambda: [dataset[i] for i in range(len(files))],
        },
        args.rounds,
    )
    batch = torch.stack([dataset[i][1] for i in range(8)])  # type: ignore[misc]
    previous = torch.get_num_threads()

    def computed(threads: int) -> Callable[[], None]:
        def call() -> None:
            torch.set_num_threads(threads)
            for _ in range(100):
                to_floats.compute(batch)
            torch.set_num_threads(previous)

        return call

    with reuse_freed_memory():  # as the embed loop runs: freed buffers are reused, not mapped afresh
        floats = fastest(
            {"one thread": computed(1), "two threads": computed(2), "table": lambda: [to_floats(batch) for _ in range(100)]}, args.rounds
        )
    n = len(files)
    lines = [
        f"## The embed loop's steps outside the model, per image (`python benchmarks/bench_embed_steps.py --images {args.images}`)\n",
        f"The first {n:,} Fashion-MNIST test images (28 px grey PNGs), EfficientNet-Lite0's preprocessing (bicubic to 256 px, "
        f"centre crop 224 px); CPU ms per image (the process, all threads), the fastest of {args.rounds} alternating rounds; "
        "2-core x86_64 CPU "
        f"machine, no GPU, shared with other engineers' work (load {load:.1f} → {os.getloadavg()[0]:.1f}).\n",
        "| step | previous: CPU ms / image | current: CPU ms / image | current / previous |",
        "|---|---|---|---|",
        f"| decode + preprocess (decode worker) | {1e3 * decode['previous'] / n:.3f} | {1e3 * decode['current'] / n:.3f} "
        f"(with the file's hash and stats) | {decode['current'] / decode['previous']:.2f} |",
        f"| uint8 batch to floats, torch on one thread | {1e3 * floats['one thread'] / 800:.3f} | {1e3 * floats['table'] / 800:.3f} "
        f"(table) | {floats['table'] / floats['one thread']:.2f} |",
        f"| uint8 batch to floats, torch on two threads | {1e3 * floats['two threads'] / 800:.3f} | {1e3 * floats['table'] / 800:.3f} "
        f"(table) | {floats['table'] / floats['two threads']:.2f} |",
        "",
        "The floats and pixels are the same bit for bit both ways (tests/test_embedding.py). Two torch threads are "
        "what the ONNX sessions' threads got before (torch's setting for the run), each thread's own OpenMP team.",
    ]
    body = "\n".join(lines) + "\n"
    write_section(args.section, body, RESULTS)
    print(body)


if __name__ == "__main__":
    main()
