"""ONNX Runtime on 2 cores: one session on two threads against two one-thread sessions side by side.

Forward passes only, on the same random batches of EfficientNet-Lite0's input (224 px, batches of 8),
for the float32 export and the int8 model ``--runtime onnx-int8`` builds. Each variant runs the batches
once to warm up, then three rounds interleaved with the others; the fastest round of each is kept.
``cores`` is CPU seconds over wall seconds: how busy the run kept the machine. Writes the section
``ort-streams`` of ``results_runtime.md``.

    python benchmarks/bench_ort_streams.py [--batches 12]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it

import numpy as np
from common import DATA, HERE, write_section

from imgcluster.backbones import create_backbone
from imgcluster.int8 import ensure_quantised
from imgcluster.onnxruntime_backend import ensure_exported, session


def one_session(path: Path, batches: list[np.ndarray], spin: bool) -> Callable[[], None]:
    model = session(path, 2)
    if spin:  # the same settings with spinning threads
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        options.enable_mem_pattern = False
        options.log_severity_level = 3
        model = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = model.get_inputs()[0].name

    def run() -> None:
        for batch in batches:
            model.run(None, {name: batch})

    return run


def two_sessions(path: Path, batches: list[np.ndarray]) -> Callable[[], None]:
    models = [session(path, 1), session(path, 1)]
    name = models[0].get_inputs()[0].name

    def work(model: Any, part: list[np.ndarray]) -> None:
        for batch in part:
            model.run(None, {name: batch})

    def run() -> None:
        threads = [threading.Thread(target=work, args=(models[i], batches[i::2])) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("IMGCLUSTER_MODEL_CACHE", str(DATA / "model-cache"))
    backbone = create_backbone("efficientnet-lite0")
    models = {"float32": ensure_exported(backbone), "int8": ensure_quantised(backbone)}
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(8, 3, 224, 224)).astype(np.float32) for _ in range(args.batches)]
    variants: dict[tuple[str, str], Callable[[], None]] = {}
    for precision, path in models.items():
        variants[(precision, "one session, 2 threads (not spinning)")] = one_session(path, batches, spin=False)
        variants[(precision, "one session, 2 threads (spinning)")] = one_session(path, batches, spin=True)
        variants[(precision, "two one-thread sessions side by side")] = two_sessions(path, batches)
    load_before = os.getloadavg()[0]
    for run in variants.values():
        run()
    rounds: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in variants}
    for _ in range(3):
        for key, run in variants.items():
            cpu, wall = time.process_time(), time.perf_counter()
            run()
            rounds[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    load_after = os.getloadavg()[0]
    images = 8 * args.batches
    lines = [
        "## ONNX Runtime on 2 cores: one session or two (`python benchmarks/bench_ort_streams.py`)",
        "",
        f"Forward passes only, {images} random 224 px images in batches of 8, EfficientNet-Lite0; fastest of 3 "
        "interleaved rounds. cores = CPU seconds / wall seconds. The embedding loop runs two one-thread sessions "
        "on alternate batches when it has 2 cores or more (`embedding._onnx_streams`).",
        "",
        "| model | variant | wall ms / image | CPU ms / image | cores |",
        "|---|---|---|---|---|",
    ]
    for (precision, variant), measured in rounds.items():
        wall, cpu = min(measured)
        lines.append(f"| {precision} | {variant} | {1000 * wall / images:.1f} | {1000 * cpu / images:.1f} | {cpu / wall:.2f} |")
    lines.append("")
    lines.append(f"Load average {load_before:.1f} before, {load_after:.1f} after.")
    body = "\n".join(lines)
    print(body)
    write_section("ort-streams", body, HERE / "results_runtime.md")


if __name__ == "__main__":
    main()
