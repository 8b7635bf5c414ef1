"""GPU utilisation while a benchmark row runs, from nvidia-smi."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Iterator

import numpy as np
import torch


class GpuSampler:
    """Polls nvidia-smi for the utilisation of the GPU torch uses (by UUID, so CUDA_VISIBLE_DEVICES
    and nvidia-smi's own ordering cannot mix them up) while a row runs."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self.unreported = 0  # replies without a number: "[N/A]" under MIG, for one
        self._stop = threading.Event()

    @staticmethod
    def _gpu_id() -> str:
        uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None) if torch.cuda.is_available() else None
        return f"GPU-{uuid}" if uuid is not None else "0"

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", self._gpu_id()]
        while not self._stop.is_set():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
                try:
                    util, mem = (float(v) for v in out[0].split(","))
                    self.samples.append((util, mem))
                except (IndexError, ValueError):
                    self.unreported += 1
            self._stop.wait(self.every)

    @contextlib.contextmanager
    def running(self) -> Iterator[GpuSampler]:
        """Sample while the block runs; may be entered again (rows made of several runs)."""
        thread = None
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self._stop.clear()
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            if thread is not None:
                thread.join()

    def summary(self) -> str:
        if not self.samples:
            if self.unreported:
                return "n/a (nvidia-smi reports no utilisation, e.g. under MIG)"
            return "n/a (no nvidia-smi)"
        util = [u for u, _ in self.samples]
        return f"{np.mean(util):.0f}% mean, {max(util):.0f}% max, {max(m for _, m in self.samples):.0f} MiB"
