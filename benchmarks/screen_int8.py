"""Screen int8 recipes fast: mean cosine of each recipe's features to ONNX Runtime float32's.

``python benchmarks/screen_int8.py N RECIPE[,RECIPE...] [SOURCES]``: every (2000 // N)-th of the
first 2,000 Fashion-MNIST test images, N in all; recipes are ``bench_runtime.RECIPES`` names, or
``block<prefix>`` to quantise only the nodes under one prefix (symmetric int8 activations; the
rest stays float32) to find the layers that move the features most. SOURCES: the calibration set's
sources to use (default all). Prints one line per recipe (cosine mean and minimum, largest
difference, build and embed seconds, load); the rows kept are in results_runtime.md. The full
measure of a recipe (speed, neighbours, ACC) is bench_runtime.py's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_runtime as br  # noqa: E402

from imgcluster.backbones import create_backbone  # noqa: E402
from imgcluster.int8 import Recipe  # noqa: E402
from imgcluster.onnxruntime_backend import ensure_exported  # noqa: E402

PREFIXES = ["/conv_stem/", *[f"/blocks/blocks.{i}/" for i in range(7)], "/conv_head/", "/bn2/", "/global_pool/"]


def main() -> None:
    n, names = int(sys.argv[1]), sys.argv[2].split(",")
    sources = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else None
    os.environ.setdefault("IMGCLUSTER_MODEL_CACHE", str(br.DATA / "model-cache"))
    backbone = create_backbone(br.MODEL)
    exported = ensure_exported(backbone)
    files, _ = br.folder_files(2000)
    files = files[:: 2000 // n][:n]
    work = br.DATA / "int8-screen"
    work.mkdir(parents=True, exist_ok=True)
    builder = br.Int8Builder(exported, backbone, work, sources)
    reference = work / f"fp32-{n}.npy"
    if reference.exists():
        x0 = np.load(reference)
    else:
        x0, _ = br.embed_all(files, backbone, exported, 0)
        np.save(reference, x0)
    for name in names:
        if name.startswith("block"):
            recipe = Recipe(activations="int8", keep_float=tuple(p for p in PREFIXES if p != name[5:]))
        else:
            recipe = br.RECIPES[name]
        start = time.time()
        model = builder.build(recipe, work / (name.replace("/", "_") + ".onnx"))
        built = time.time() - start
        x, seconds = br.embed_all(files, backbone, model, 0)
        cos = (x * x0).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x0, axis=1)
        print(
            f"{name:32s} cos {cos.mean():.4f}  min {cos.min():.4f}  maxdiff {np.abs(x - x0).max():.2f} "
            f"build {built:.0f}s embed {seconds:.1f}s load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
