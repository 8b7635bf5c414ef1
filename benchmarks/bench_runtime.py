"""`make bench-runtime`: torch and ONNX Runtime (float32, int8) on the same images, same features?

Embeds the Fashion-MNIST test images (default all 10,000) with EfficientNet-Lite0 through the
product's own ``embedding.embed_files`` (same decoding, batches of 16, threads and padding as
``imgcluster embed`` on the CPU), once per runtime, in one process and one sequence:

- ``torch``: torch float32, the reference;
- ``onnx``: the exported model (``onnxruntime_backend.ensure_exported``) in ONNX Runtime, float32;
- ``onnx-int8-static``: that model quantised by ``onnxruntime.quantization.quantize_static`` (QDQ,
  per-channel int8 weights, uint8 activations calibrated by min-max on the folder's first
  ``--calibration`` images);
- ``onnx-int8-dynamic``: ``quantize_dynamic`` (int8 weights, activations quantised per batch).

For each: images/s of the forward passes and decoding (same load for all, interleaved in one run:
compare ratios), the largest |difference| and the mean cosine similarity to torch's features,
top-10 kNN agreement with torch (mean share of each image's 10 nearest neighbours, cosine, that
torch's features also have), and ACC/NMI/ARI of the default head (secu, K=10, trained as
``make bench-objectives`` does). The issue's rule: int8 is adopted only if kNN agreement and ACC
stay within 0.005 of float32. Writes the ``runtime`` section of ``benchmarks/results_runtime.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as imgcluster sets it for the CLI: OpenMP threads wait without spinning

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DATA, MODEL, mean_std, neighbours_for, run_objective, write_section  # noqa: E402
from datasets import FASHION_CLASSES, fashion_mnist_test, write_folder  # noqa: E402

from imgcluster.backbones import create_backbone  # noqa: E402
from imgcluster.config import TrainConfig  # noqa: E402
from imgcluster.embedding import ImageDataset, embed_files, split_transform  # noqa: E402
from imgcluster.listing import ImageFile  # noqa: E402
from imgcluster.onnxruntime_backend import INPUT, ensure_exported  # noqa: E402

RESULTS = HERE / "results_runtime.md"
VARIANTS = ("torch", "onnx", "onnx-int8-static", "onnx-int8-dynamic")
BATCH = 16  # the CPU default when results_runtime.md was measured (embedding.default_batch_size, 8 since 2026-11-30)


def folder_files(n: int) -> tuple[list[ImageFile], np.ndarray]:
    images, labels = fashion_mnist_test()
    folder = write_folder(images[:n], labels[:n], FASHION_CLASSES, DATA / "peers" / f"fashion-mnist-{n}")
    files = []
    for path in sorted(folder.rglob("*.png")):
        st = path.stat()
        files.append(ImageFile(path.relative_to(folder).as_posix(), path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return files, np.array([f.rel.split("/", 1)[0] for f in files])


def quantised(model: Path, out: Path, variant: str, files: list[ImageFile], backbone: object, calibration: int) -> Path:
    """``model`` quantised to int8 as ``variant`` says, written to ``out``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from timm.data import create_transform

    prepared = out.with_name(out.stem + "-prepared.onnx")
    quant_pre_process(str(model), str(prepared))
    if variant == "onnx-int8-dynamic":
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
        return out
    per_image, to_floats = split_transform(create_transform(**backbone.data_config, is_training=False))  # type: ignore[attr-defined]
    dataset = ImageDataset(files[:calibration], per_image, None)

    class FirstImages(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(dataset):
                return None
            pixels = torch.stack([dataset[j][1] for j in range(self.i, min(self.i + BATCH, len(dataset)))])  # type: ignore[misc]
            self.i += BATCH
            floats = to_floats(pixels) if to_floats is not None else pixels
            return {INPUT: floats.numpy()}

    quantize_static(
        str(prepared), str(out), FirstImages(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
    )  # fmt: skip
    return out


def embed_all(files: list[ImageFile], backbone: object, onnx_model: Path | None, workers: int) -> tuple[np.ndarray, float]:
    features = np.zeros((len(files), backbone.feature_dim), np.float32)  # type: ignore[attr-defined]
    start = time.perf_counter()
    for batch in embed_files(files, backbone, torch.device("cpu"), BATCH, workers, onnx_model=onnx_model):  # type: ignore[arg-type]
        if batch.failures:
            raise RuntimeError(f"could not embed {batch.failures[:3]}")
        features[batch.indices] = batch.features
    return features, time.perf_counter() - start


def knn_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    na, nb = neighbours_for(a, k), neighbours_for(b, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((an * bn).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="first N Fashion-MNIST test images")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--calibration", type=int, default=256, help="images that calibrate static int8")
    parser.add_argument("--workers", type=int, default=1, help="decode workers (the CLI's default here)")
    parser.add_argument("--seeds", type=int, default=3, help="heads trained per variant (seeds 0..N-1): ACC's own spread")
    parser.add_argument("--note", default="", help="a line written above the table (what else ran on the machine)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if variants[0] != "torch" or set(variants) - set(VARIANTS):
        parser.error(f"variants must start with torch (the reference) and be among {', '.join(VARIANTS)}")

    files, labels = folder_files(args.images)
    backbone = create_backbone(MODEL)
    os.environ.setdefault("IMGCLUSTER_MODEL_CACHE", str(DATA / "model-cache"))
    exported = ensure_exported(backbone)
    work = Path(tempfile.mkdtemp(prefix="runtime-", dir=DATA))
    rows = []
    reference: np.ndarray | None = None
    for variant in variants:
        print(f"{variant} ...", file=sys.stderr, flush=True)
        model = None if variant == "torch" else exported
        if variant.startswith("onnx-int8"):
            model = quantised(exported, work / f"{variant}.onnx", variant, files, backbone, args.calibration)
        load = os.getloadavg()[0]
        x, seconds = embed_all(files, backbone, model, args.workers)
        if reference is None:
            reference = x
        neighbours = neighbours_for(x)
        cpu = torch.device("cpu")
        runs = [run_objective(x, labels, neighbours, TrainConfig(clusters=10, seed=seed), cpu) for seed in range(args.seeds)]
        scores = {key: [r[key] for r in runs] for key in ("acc", "nmi", "ari")}
        row = {
            "variant": variant, "images/s": len(files) / seconds, "seconds": seconds, "load": (load, os.getloadavg()[0]),
            "max_abs": float(np.abs(x - reference).max()), "scale": float(np.abs(reference).max()), "cosine": cosine(x, reference),
            "knn": knn_agreement(x, reference), **scores,
        }  # fmt: skip
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
        write_section("runtime", report(rows, args, len(files)), RESULTS)


def report(rows: list[dict], args: argparse.Namespace, n: int) -> str:
    torch_row = rows[0]
    lines = [
        "## torch and ONNX Runtime on the same images (`make bench-runtime`)\n",
        *([f"{args.note}\n"] if args.note else []),
        f"Run as `python benchmarks/bench_runtime.py --images {args.images} --variants {args.variants} --calibration "
        f"{args.calibration} --workers {args.workers} --seeds {args.seeds}`: the first {n:,} Fashion-MNIST test images, "
        f"EfficientNet-Lite0, batches of {BATCH} through `embedding.embed_files` ({args.workers} decode worker), one variant after "
        "another in one process. "
        "Differences, cosine and kNN agreement (top-10 neighbours, cosine) are against torch float32's features; ACC/NMI/ARI of "
        "the default head (secu, K=10) trained on each variant's features with seeds 0 to "
        f"{args.seeds - 1}: mean ± standard deviation over the seeds, and seed 0 alone (the CLI's default seed).\n",
        "| runtime | images/s | vs torch | max abs diff (of max abs feature) | mean cosine | kNN@10 agreement | ACC | NMI | ARI "
        "| ACC seed 0 | ΔACC (mean) vs torch | load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = r["images/s"] / torch_row["images/s"]
        lines.append(
            f"| {r['variant']} | {r['images/s']:.1f} | {speed:.2f}x | {r['max_abs']:.2e} ({r['scale']:.2f}) | {r['cosine']:.6f} | "
            f"{r['knn']:.4f} | {mean_std(r['acc'])} | {mean_std(r['nmi'])} | {mean_std(r['ari'])} | {r['acc'][0]:.3f} | "
            f"{np.mean(r['acc']) - np.mean(torch_row['acc']):+.3f} | "
            f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
