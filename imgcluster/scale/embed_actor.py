"""The embedding actor: loads the backbone once, turns decoded uint8 batches into features.

Ray Data runs it on an ``ActorPoolStrategy``; a dead actor is restarted and its batch retried
(``max_restarts``, ``max_task_retries``). A Python error in one batch is retried once here, then
the batch's files are recorded as skipped with the error, so one bad batch never stops a job.
The forward pass is :func:`imgcluster.embedding.forward`, the single-machine path's own.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcluster.errors import ImgclusterError

# Test-only fault injection (docs/scale.md): ``n`` kills the embedding actor's process at its n-th
# batch (once: not again after Ray restarts it); ``n:raise`` raises a Python error at that batch on
# every attempt; ``n:hang`` stalls the actor there (an hour's sleep: a job that makes no progress).
# Read here alone, on the driver, and handed to the actors.
CRASH_VARIABLE = "IMGCLUSTER_TEST_CRASH_BATCH"


@dataclass(frozen=True)
class Crash:
    batch: int
    mode: str  # "exit", "raise" or "hang"


def crash_from_environment() -> Crash | None:
    raw = os.environ.get(CRASH_VARIABLE, "").strip()
    if not raw:
        return None
    number, _, mode = raw.partition(":")
    try:
        return Crash(int(number), mode or "exit")
    except ValueError:
        return None


@dataclass(frozen=True)
class ActorSpec:
    """What every actor needs to build the same model: it checks the key it gets against ``key``."""

    model: str
    weights: str | None
    key: str
    dtype: str
    batch_size: int
    use_gpu: bool
    threads: int
    crash: Crash | None = None


class EmbedActor:
    """A callable class for ``map_batches``: uint8 pixels in, float32 features out (the writer stores
    them as float16, refusing what float16 cannot hold: a cast here made values beyond 65504 infinity)."""

    def __init__(self, spec: ActorSpec) -> None:
        import torch

        from imgcluster.backbones import create_backbone
        from imgcluster.cache import cache_key
        from imgcluster.embedding import compute_precision, prepare_model, split_transform

        torch.set_num_threads(max(1, spec.threads))  # Ray sets OMP_NUM_THREADS to the actor's CPUs; say it outright
        self.spec = spec
        self.device = torch.device("cuda" if spec.use_gpu and torch.cuda.is_available() else "cpu")
        backbone = create_backbone(spec.model, spec.weights)
        key = cache_key(backbone.identity(), spec.dtype, compute_precision(self.device))
        if key != spec.key:  # another package or weights version on this node: its features would not match
            raise ImgclusterError(
                f"the model on this worker has key {key}, the job's has {spec.key}; install the same imgcluster everywhere"
            )
        from timm.data import create_transform

        self.to_floats = split_transform(create_transform(**backbone.data_config, is_training=False))[1]
        self.model = prepare_model(backbone, self.device)
        self.bf16 = compute_precision(self.device) == "bfloat16"
        self.dim = backbone.feature_dim
        self.batches = 0

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        from imgcluster.embedding import forward

        with torch.inference_mode():
            return forward(self.model, torch.from_numpy(pixels), self.to_floats, self.spec.batch_size, self.device, self.bf16)

    def _maybe_crash(self) -> None:
        crash = self.spec.crash
        if crash is None or self.batches != crash.batch:
            return
        if crash.mode == "raise":
            raise RuntimeError(f"injected error in batch {crash.batch} ({CRASH_VARIABLE})")
        if crash.mode == "hang":
            time.sleep(3600)
            return
        import ray

        if not ray.get_runtime_context().was_current_actor_reconstructed:
            os._exit(1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.batches += 1
        reasons = np.asarray(batch["reason"], dtype=object)
        ok = np.flatnonzero(reasons == "")
        features = np.zeros((len(reasons), self.dim), np.float32)
        if len(ok):
            error = None
            for _ in range(2):  # one retry: a passing failure (memory) clears, a persistent one is recorded
                try:
                    self._maybe_crash()
                    features[ok] = self._forward(np.ascontiguousarray(batch["pixels"][ok]))
                    error = None
                    break
                except Exception as exc:  # noqa: BLE001 - any error in one batch must not stop the job
                    error = f"embedding failed: {type(exc).__name__}: {exc}"
            if error is not None:
                reasons = reasons.copy()
                reasons[ok] = error
        out = {k: v for k, v in batch.items() if k != "pixels"}
        return {**out, "reason": reasons, "feature": features}
