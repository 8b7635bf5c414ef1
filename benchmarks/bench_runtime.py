"""`make bench-runtime`: torch and ONNX Runtime (float32, int8) on the same images, same features?

Embeds the Fashion-MNIST test images (default all 10,000) with EfficientNet-Lite0 through the
product's own ``embedding.embed_files`` (same decoding, batches of 16, threads and padding as
``imgcluster embed`` on the CPU), once per variant, and keeps each variant's features and scores
under ``benchmarks/data/runtime-features`` (a larger run's serve a smaller one), so reruns only time:

- ``torch``: torch float32, the reference;
- ``onnx``: the exported model (``onnxruntime_backend.ensure_exported``) in ONNX Runtime, float32;
- ``int8:<recipe>``: that model quantised statically as ``RECIPES[<recipe>]`` says
  (``imgcluster.int8``), with activation ranges from the fixed calibration set of
  ``tools/make_int8_calibration.py`` (never the test images); ``int8:s8-float-early`` is the
  product's ``--runtime onnx-int8``;
- ``onnx-int8-dynamic``: ``quantize_dynamic`` (int8 weights, activations quantised per batch).

For each: forward CPU time against torch's (interleaved rounds, the least of each), the largest
|difference| and the mean cosine similarity to torch's features, the top-10 neighbour overlap
with torch's (mean share of each image's 10 nearest neighbours, cosine, that torch's features
also have), kNN label agreement (share of each image's 10 nearest neighbours with its label) and
ACC/NMI/ARI of the default head (secu, K=10) over 3 seeds. The issue's rule: int8 is adopted only
if kNN label agreement and ACC stay within 0.005 of float32. Writes a section of
``benchmarks/results_runtime.md`` (``--section``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as imgcluster sets it for the CLI: OpenMP threads wait without spinning

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools"))

from common import DATA, MODEL, mean_std, neighbours_for, run_objective, write_section  # noqa: E402
from datasets import FASHION_CLASSES, fashion_mnist_test, write_folder  # noqa: E402

from imgcluster.backbones import create_backbone  # noqa: E402
from imgcluster.config import TrainConfig  # noqa: E402
from imgcluster.embedding import embed_files  # noqa: E402
from imgcluster.int8 import Recipe, collect_ranges, graph_signature, prepare, quantise, static_padding, table_path  # noqa: E402
from imgcluster.listing import ImageFile  # noqa: E402
from imgcluster.onnxruntime_backend import ensure_exported  # noqa: E402

RESULTS = HERE / "results_runtime.md"
FEATURES = DATA / "runtime-features"  # each variant's features on the first N images, kept for reruns
BATCH = 16  # the CPU default when results_runtime.md was measured (embedding.default_batch_size, 8 since 2026-11-30)
# int8 recipes by name: ``int8:<name>`` in --variants. Ranges from the fixed calibration set of
# tools/make_int8_calibration.py (never the benchmark's test images).
EARLY = ("/conv_stem/", "/blocks/blocks.0/", "/blocks/blocks.1/")  # the layers at 112 and 56 px, the most sensitive
B10, B11 = "/blocks/blocks.1/blocks.1.0/", "/blocks/blocks.1/blocks.1.1/"  # block 1's two inverted residuals
RECIPES = {
    "base": Recipe(),
    "float-stem-head": Recipe(keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "float-head": Recipe(keep_float=("/conv_head/", "/bn2/", "/global_pool/")),
    "float-stem": Recipe(keep_float=("/conv_stem/",)),
    "s8": Recipe(activations="int8"),
    "s8-float-stem-head": Recipe(activations="int8", keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "percentile": Recipe(calibration="percentile"),
    "percentile-float-stem-head": Recipe(calibration="percentile", keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "entropy-float-stem-head": Recipe(calibration="entropy", keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "qoperator-float-stem-head": Recipe(format="qoperator", keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "per-tensor-float-stem-head": Recipe(per_channel=False, keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "rr-float-stem-head": Recipe(reduce_range=True, keep_float=("/conv_stem/", "/conv_head/", "/bn2/", "/global_pool/")),
    "rr": Recipe(reduce_range=True),
    "s8-percentile": Recipe(activations="int8", calibration="percentile"),
    "s8-entropy": Recipe(activations="int8", calibration="entropy"),
    "s8-qoperator": Recipe(format="qoperator", activations="int8"),
    "s8-per-tensor": Recipe(per_channel=False, activations="int8"),
    "s8-float-stem": Recipe(activations="int8", keep_float=("/conv_stem/",)),
    "s8-float-head": Recipe(activations="int8", keep_float=("/conv_head/", "/bn2/", "/global_pool/")),
    "float-early": Recipe(keep_float=EARLY),
    "keep-clip": Recipe(keep_clip=True),
    "float-shapes": Recipe(float_shapes=True),
    "s8-float-shapes": Recipe(activations="int8", float_shapes=True),
    "float-shapes-early": Recipe(float_shapes=True, keep_float=EARLY),
    "float-shapes-stem-block0": Recipe(float_shapes=True, keep_float=EARLY[:2]),
    "keep-clip-float-early": Recipe(keep_clip=True, keep_float=EARLY),
    "s8-float-early": Recipe(activations="int8", keep_float=EARLY),
    "float-stem-block0": Recipe(keep_float=EARLY[:2]),
    "s8-float-stem-block0": Recipe(activations="int8", keep_float=EARLY[:2]),
    # speed22: parts of block 1 quantised too (its float convolutions were half the int8 session's time)
    "early-but-b10-pw": Recipe(float_shapes=True, keep_float=(*EARLY[:2], *(f"{B10}{p}/" for p in ("conv_dw", "bn2", "conv_pwl")), B11)),
    "early-but-b11": Recipe(float_shapes=True, keep_float=(*EARLY[:2], B10)),
    "early-but-b1-pw": Recipe(float_shapes=True, keep_float=(*EARLY[:2], *(f"{b}{p}/" for b in (B10, B11) for p in ("conv_dw", "bn2")))),
    "early-but-b11-pw": Recipe(float_shapes=True, keep_float=(*EARLY[:2], B10, *(f"{B11}{p}/" for p in ("conv_dw", "bn2")))),
}
VARIANTS = ("torch", "onnx", "onnx-int8-dynamic", *(f"int8:{name}" for name in RECIPES))


def folder_files(n: int) -> tuple[list[ImageFile], np.ndarray]:
    images, labels = fashion_mnist_test()
    folder = write_folder(images[:n], labels[:n], FASHION_CLASSES, DATA / "peers" / f"fashion-mnist-{n}")
    files = []
    for path in sorted(folder.rglob("*.png")):
        st = path.stat()
        files.append(ImageFile(path.relative_to(folder).as_posix(), path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return files, np.array([f.rel.split("/", 1)[0] for f in files])


class Int8Builder:
    """Quantised models for the recipes, from one prepared export and ranges taken once per
    calibration method and activation type."""

    def __init__(self, exported: Path, backbone: object, work: Path, sources: list[str] | None) -> None:
        self.backbone, self.work = backbone, work
        self.prepared = prepare(exported, work / "prepared.onnx")
        self.static = static_padding(self.prepared, work / "static.onnx")  # what int8.ensure_quantised quantises
        self.ranges: dict[tuple[str, str], dict[str, list[float]]] = {}
        table = json.loads(table_path(MODEL).read_text())
        if sources is None and table["graph"] == graph_signature(self.prepared):  # the shipped ranges: the same set, taken once
            self.ranges[(table["recipe"]["calibration"], table["recipe"]["activations"])] = table["ranges"]
        self.sources = sources

    def build(self, recipe: Recipe, out: Path) -> Path:
        from make_int8_calibration import calibration_set, pixel_batches

        key = (recipe.calibration, recipe.activations)
        if key not in self.ranges:
            found = calibration_set(DATA / "int8-calibration")
            paths = [p for name, group in found.items() if self.sources is None or name in self.sources for p in group]
            self.ranges[key] = collect_ranges(self.prepared, pixel_batches(paths, self.backbone), recipe)
        return quantise(self.static, out, self.ranges[key], recipe)


def dynamic_int8(model: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    prepared = prepare(model, out.with_name(out.stem + "-prepared.onnx"))
    quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return out


def embed_all(files: list[ImageFile], backbone: object, onnx_model: Path | None, workers: int) -> tuple[np.ndarray, float]:
    features = np.zeros((len(files), backbone.feature_dim), np.float32)  # type: ignore[attr-defined]
    start = time.perf_counter()
    for batch in embed_files(files, backbone, torch.device("cpu"), BATCH, workers, onnx_model=onnx_model):  # type: ignore[arg-type]
        if batch.failures:
            raise RuntimeError(f"could not embed {batch.failures[:3]}")
        features[batch.indices] = batch.features
    return features, time.perf_counter() - start


def kept_features(name: str, files: list[ImageFile], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``'s features of ``files``, kept in FEATURES; a larger run's kept features serve
    a smaller one (the first N images' files have the same names in every folder)."""
    FEATURES.mkdir(parents=True, exist_ok=True)
    rels = [f.rel for f in files]
    for kept in sorted(FEATURES.glob(f"{name}-*.npz"), key=lambda p: int(p.stem.rsplit("-", 1)[1])):
        data = np.load(kept)
        index = {rel: i for i, rel in enumerate(data["rel"])}
        if all(rel in index for rel in rels):
            return np.asarray(data["features"][[index[rel] for rel in rels]])
    x = compute()
    np.savez(FEATURES / f"{name}-{len(files)}.npz", features=x, rel=np.array(rels))
    return x


def knn_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    na, nb = neighbours_for(a, k), neighbours_for(b, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((an * bn).sum(1).mean())


def decoded(files: list[ImageFile], backbone: object) -> list[np.ndarray]:
    """The files as the model's float32 input batches, decoded once, so that timing sees the forward passes only."""
    from make_int8_calibration import pixel_batches

    return list(pixel_batches([f.path for f in files], backbone, BATCH))


def forward_seconds(batches: list[np.ndarray], backbone: object, model: Path | None, rounds: int) -> tuple[float, float]:
    """CPU seconds (the process's, all threads) for torch's and ``model``'s forward passes over
    ``batches`` (torch's when None): the least of ``rounds`` rounds, the two interleaved in each.
    CPU time, not wall time: on the shared 2-core machine wall time mostly measured the others' load
    (torch against itself came out 0.65x in wall time at load 15)."""
    from imgcluster.embedding import prepare_model
    from imgcluster.onnxruntime_backend import run, session

    net = prepare_model(backbone, torch.device("cpu"))  # type: ignore[arg-type]
    ort = session(model, torch.get_num_threads()) if model is not None else None

    def in_torch() -> None:
        with torch.inference_mode():
            for b in batches:
                net(torch.from_numpy(b).contiguous(memory_format=torch.channels_last))

    def in_variant() -> None:
        if ort is None:
            in_torch()
            return
        for b in batches:
            run(ort, b)

    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, call in enumerate((in_torch, in_variant)):
            start = time.process_time()
            call()
            best[i] = min(best[i], time.process_time() - start)
    return best[0], best[1]


def kept_scores(name: str, x: np.ndarray, labels: np.ndarray, seeds: int) -> dict[str, Any]:
    """kNN label agreement and ACC/NMI/ARI over ``seeds`` heads, kept beside the features (training is deterministic)."""
    import json

    kept = FEATURES / f"scores-{name}.json"
    if kept.exists():
        return dict(json.loads(kept.read_text()))
    neighbours = neighbours_for(x)
    cpu = torch.device("cpu")
    runs = [run_objective(x, labels, neighbours, TrainConfig(clusters=10, seed=seed), cpu) for seed in range(seeds)]
    scores: dict[str, Any] = {key: [r[key] for r in runs] for key in ("acc", "nmi", "ari")}
    scores["labels"] = label_agreement(x, labels)
    kept.write_text(json.dumps(scores))
    return scores


def label_agreement(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each image's ``k`` nearest neighbours (cosine) that have its label."""
    return float((labels[neighbours_for(x, k)] == labels[:, None]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="first N Fashion-MNIST test images")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--calibration-sources", default="", help="int8: only these sources of the calibration set (default all)")
    parser.add_argument("--timing", type=int, default=160, help="forward CPU time measured on the first N images, torch and each variant")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (torch, variant interleaved): fastest counts")
    parser.add_argument("--workers", type=int, default=0, help="decode workers")
    parser.add_argument("--seeds", type=int, default=3, help="heads trained per variant (seeds 0..N-1): ACC's own spread")
    parser.add_argument("--section", default="runtime", help="the results_runtime.md section written")
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
    sources = [s for s in args.calibration_sources.split(",") if s] or None
    builder: Int8Builder | None = None
    timed = decoded(files[: args.timing], backbone)
    rows = []
    reference: np.ndarray | None = None
    for variant in variants:
        print(f"{variant} ...", file=sys.stderr, flush=True)
        model: Path | None = None
        name = variant
        if variant == "onnx":
            model = exported
        elif variant == "onnx-int8-dynamic":
            model = dynamic_int8(exported, work / "dynamic.onnx")
        elif variant.startswith("int8:"):
            recipe = RECIPES[variant.split(":", 1)[1]]
            builder = builder or Int8Builder(exported, backbone, work, sources)
            started = time.perf_counter()
            model = builder.build(recipe, work / f"{variant.replace(':', '-')}.onnx")
            print(f"  built in {time.perf_counter() - started:.0f} s: {recipe.name()}", file=sys.stderr, flush=True)
            name = f"int8-{hashlib.sha256((recipe.name() + str(sources)).encode()).hexdigest()[:12]}"
        load = os.getloadavg()[0]
        torch_seconds, seconds = forward_seconds(timed, backbone, model, args.rounds)
        load_after = os.getloadavg()[0]
        x = kept_features(name, files, lambda m=model: embed_all(files, backbone, m, args.workers)[0])  # type: ignore[misc]
        if reference is None:
            reference = x
        scores = kept_scores(f"{name}-{len(files)}-{args.seeds}", x, labels, args.seeds)
        row = {
            "variant": variant, "recipe": RECIPES[variant[5:]].name() if variant.startswith("int8:") else "",
            "images/s": args.timing / seconds, "speed": torch_seconds / seconds, "load": (load, load_after),
            "max_abs": float(np.abs(x - reference).max()), "scale": float(np.abs(reference).max()), "cosine": cosine(x, reference),
            "knn": knn_agreement(x, reference), **scores,
        }  # fmt: skip
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
        write_section(args.section, report(rows, args, len(files)), RESULTS)


def report(rows: list[dict], args: argparse.Namespace, n: int) -> str:
    torch_row = rows[0]
    lines = [
        f"## torch, ONNX Runtime and int8 recipes on the first {n:,} images (`{args.section}`)\n",
        *([f"{args.note}\n"] if args.note else []),
        f"Run as `python benchmarks/bench_runtime.py --images {args.images} --variants {args.variants} --timing {args.timing} "
        f"--rounds {args.rounds} --workers {args.workers} --seeds {args.seeds}"
        f"{f' --calibration-sources {args.calibration_sources}' if args.calibration_sources else ''}`: the first {n:,} "
        f"Fashion-MNIST test images, EfficientNet-Lite0, batches of {BATCH} through `embedding.embed_files` ({args.workers} decode "
        f"workers). Speed: CPU seconds of the forward passes only (all threads; wall time under this load measured the others), "
        f"torch and the variant over the same first {args.timing} images decoded once, "
        f"interleaved for {args.rounds} rounds, the fastest round of each (ratio = torch's seconds / the variant's). "
        "Differences, cosine and top-10 neighbour overlap (cosine) are against "
        "torch float32's features; label agreement is the share of each image's 10 nearest neighbours with its label; ACC/NMI/ARI "
        f"of the default head (secu, K=10) trained on each variant's features with seeds 0 to {args.seeds - 1} (mean ± sd). "
        "int8 ranges come from the fixed calibration set of `tools/make_int8_calibration.py` (no test image).\n",
        "| runtime | recipe | images per CPU-s | vs torch | max abs diff (of max abs feature) | mean cosine | top-10 overlap with fp32 "
        "| kNN label agreement (Δ vs fp32) | ACC | NMI | ARI | ΔACC (mean) vs fp32 | load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['recipe']} | {r['images/s']:.1f} | {r['speed']:.2f}x | {r['max_abs']:.2e} ({r['scale']:.2f}) | "
            f"{r['cosine']:.4f} | {r['knn']:.3f} | {r['labels']:.4f} ({r['labels'] - torch_row['labels']:+.4f}) | "
            f"{mean_std(r['acc'])} | {mean_std(r['nmi'])} | {mean_std(r['ari'])} | "
            f"{np.mean(r['acc']) - np.mean(torch_row['acc']):+.4f} | {r['load'][0]:.1f} → {r['load'][1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
