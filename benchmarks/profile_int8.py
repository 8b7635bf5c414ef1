"""Where the int8 session's time goes: ONNX Runtime's own profile of the session the product runs.

``python benchmarks/profile_int8.py [--images 320] [--batch 8] [--threads 1] [--model FILE]``: the
first N Fashion-MNIST test images decoded as ``imgcluster embed`` decodes them, in forward passes of
``--batch`` (the CPU default for 28 px images is 8), through a session made with the product's options
(``onnxruntime_backend.session_options``; one thread, as each of the embed loop's two sessions has) with
ONNX Runtime's profiling on. The first pass (warm-up) is left out. Prints the kernel time per operator
type, per part of the network (stem, blocks 0-6, head, the shape arithmetic) and per kind of
convolution (float or int8, depthwise or pointwise or full), as shares of the total, and the CPU
seconds per image of the whole run. ``--model``: another ONNX file (default: the product's int8
file, ``int8.ensure_quantised``; ``float`` the float32 export).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools"))

from common import DATA, MODEL  # noqa: E402

from imgcluster.backbones import create_backbone  # noqa: E402


def part_of(name: str) -> str:
    """The network part a (possibly fused) node belongs to, from its name."""
    if match := re.search(r"/blocks/blocks\.(\d)/", name):
        return f"block {match.group(1)}"
    if "/conv_stem/" in name or name.startswith("/conv_stem"):
        return "stem"
    if any(p in name for p in ("/conv_head/", "/bn2/", "/global_pool/")):
        return "head"
    return "other"


def conv_kind(op: str, node: Any, weights: dict[str, Any]) -> str:
    """float/int8 and depthwise/pointwise/full for a convolution node of the optimised graph."""
    import onnx

    group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
    shape = weights.get(node.input[3] if op == "QLinearConv" else node.input[1])
    kernel = tuple(shape[2:]) if shape is not None else ()
    kind = "depthwise" if group > 1 else ("pointwise" if kernel == (1, 1) else "full")
    return f"{'int8' if op.startswith('QLinear') else 'float'} {kind} ({op})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="the costliest nodes to list")
    parser.add_argument("--model", default="", help="an ONNX file; default the product's int8 file, 'float' the float32 export")
    args = parser.parse_args()
    os.environ.setdefault("IMGCLUSTER_MODEL_CACHE", str(DATA / "model-cache"))
    import onnx
    import onnxruntime
    from make_int8_calibration import pixel_batches

    from imgcluster.int8 import ensure_quantised
    from imgcluster.onnxruntime_backend import INPUT, OUTPUT, ensure_exported, session_options

    backbone = create_backbone(MODEL)
    model = Path(args.model) if args.model not in ("", "float") else ensure_exported(backbone) if args.model else ensure_quantised(backbone)
    folder = DATA / "peers" / "fashion-mnist-10000"
    paths = sorted(folder.rglob("*.png"))[: args.images]
    batches = list(pixel_batches(paths, backbone, args.batch))
    with tempfile.TemporaryDirectory(prefix="imgcluster-profile-") as tmp:
        options = session_options(args.threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        ort.run([OUTPUT], {INPUT: batches[0]})
        start_cpu, start = time.process_time(), time.perf_counter()
        for batch in batches[1:]:
            ort.run([OUTPUT], {INPUT: batch})
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
        events = json.loads(Path(ort.end_profiling()).read_text())
        optimised = onnx.load(str(Path(tmp) / "optimised.onnx"))
    weights = {t.name: list(t.dims) for t in optimised.graph.initializer}
    nodes = {n.name: n for n in optimised.graph.node}
    runs = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    warm = len(runs) // (len(batches))  # events of one pass; the first pass's are left out
    runs = runs[warm:]
    total = sum(e["dur"] for e in runs)
    by_op: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    by_conv: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    by_node: dict[str, float] = defaultdict(float)
    for e in runs:
        name, op = e["name"].removesuffix("_kernel_time"), e["args"]["op_name"]
        by_op[op] += e["dur"]
        counts[op] += 1
        by_part[part_of(name)] += e["dur"]
        by_node[f"{name} ({op})"] += e["dur"]
        if op in ("Conv", "QLinearConv", "FusedConv", "NchwcConv") and name in nodes:
            by_conv[conv_kind(op, nodes[name], weights)] += e["dur"]
    passes = len(batches) - 1
    images = passes * args.batch
    print(f"model {model.name}, {images} images in {passes} passes of {args.batch}, {args.threads} thread(s)")
    print(f"CPU {1000 * cpu / images:.2f} ms/image, wall {1000 * wall / images:.2f} ms/image, kernels {total / 1000 / images:.2f} ms/image")
    print(f"load {os.getloadavg()[0]:.1f}, onnxruntime {onnxruntime.__version__}, {len(optimised.graph.node)} nodes after optimisation")
    top = dict(sorted(by_node.items(), key=lambda kv: -kv[1])[: args.top])
    for title, table in (("operator type", by_op), ("part", by_part), ("convolution", by_conv), ("node", top)):
        print(f"\n| {title} | ms / image | share |{' nodes / pass |' if title == 'operator type' else ''}")
        for key, dur in sorted(table.items(), key=lambda kv: -kv[1]):
            extra = f" {counts[key] // passes} |" if title == "operator type" else ""
            print(f"| {key} | {dur / 1000 / images:.3f} | {100 * dur / total:.1f} % |{extra}")


if __name__ == "__main__":
    main()
