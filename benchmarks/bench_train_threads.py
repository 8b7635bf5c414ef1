"""Training the default head on 1 torch thread or 2: wall time, CPU time, and whether the head is the same.

``python benchmarks/bench_train_threads.py [--images 10000] [--rounds 3] [--threads 2,1]``: the first N
Fashion-MNIST test images' features as ``assign`` trains on them (torch's float16 cache, read as float32,
kept in ``benchmarks/data/int8-acc-cache`` by ``bench_int8_acc.py``), their kNN searched once, then the
default head (``TrainConfig()``: SeCu, K=10, the early stop) trained with seed 0 on each thread count in
turn, the order alternating by round. Prints each run's wall and CPU seconds, epochs and the load, and
whether each thread count's heads are the same bit for bit (parameters and assignments) across rounds
and across thread counts. Training only: no embedding, no assignment of new images.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DATA, MODEL  # noqa: E402, I001 - imgcluster before torch: OpenMP threads wait passively, as in the CLI

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import FASHION_CLASSES, fashion_mnist_test, write_folder  # noqa: E402

import imgcluster  # noqa: E402
from imgcluster.assign import predict  # noqa: E402
from imgcluster.config import TrainConfig  # noqa: E402
from imgcluster.neighbours import knn_search  # noqa: E402
from imgcluster.train import train_objective  # noqa: E402


def head_digest(objective: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(objective.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="2,1")
    args = parser.parse_args()
    os.environ.setdefault("IMGCLUSTER_MODEL_CACHE", str(DATA / "model-cache"))
    images, labels = fashion_mnist_test()
    folder = write_folder(images[: args.images], labels[: args.images], FASHION_CLASSES, DATA / "peers" / f"fashion-mnist-{args.images}")
    x = imgcluster.embed(folder, MODEL, cache_dir=DATA / "int8-acc-cache", runtime="torch").features
    config = TrainConfig()
    cpu = torch.device("cpu")
    neighbours = knn_search(x, config.knn)[0]
    counts = [int(t) for t in args.threads.split(",")]
    seen: dict[int, set[str]] = {t: set() for t in counts}
    assigned: dict[int, np.ndarray] = {}
    for round_ in range(args.rounds):
        for threads in counts if round_ % 2 == 0 else counts[::-1]:
            torch.set_num_threads(threads)
            load = os.getloadavg()[0]
            wall, process = time.perf_counter(), time.process_time()
            trained = train_objective(x, neighbours, config, cpu)
            wall, process = time.perf_counter() - wall, time.process_time() - process
            seen[threads].add(head_digest(trained.objective))
            assigned[threads] = predict(trained.objective, x, cpu).cluster
            print(
                f"round {round_ + 1}, {threads} thread(s): wall {wall:.2f} s, CPU {process:.2f} s, "
                f"{len(trained.history)} epochs, head {head_digest(trained.objective)}, load {load:.1f}",
                flush=True,
            )
    same = {t: len(d) == 1 for t, d in seen.items()}
    print(f"each thread count's head the same in every round: {same}")
    print(f"the same head on every thread count: {len(set().union(*seen.values())) == 1}")
    a, b = (assigned[t] for t in counts[:2])
    print(f"assignments equal between {counts[0]} and {counts[1]} threads: {float((a == b).mean()):.4f} of the images")


if __name__ == "__main__":
    main()
