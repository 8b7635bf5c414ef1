"""One dataclass config per command, saved as JSON beside every artefact it produces."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcluster import __version__
from imgcluster.atomic import atomic_write_text

DEFAULT_CLUSTERS = 10
# The objective that won `make bench-objectives` across its datasets (benchmarks/RESULTS.md).
DEFAULT_OBJECTIVE = "secu"
DEFAULT_KNN = 20


@dataclass
class EmbedConfig:
    folder: str
    model: str = "auto"
    weights: str | None = None
    cache_dir: str | None = None
    batch_size: int | None = None  # None: sized to the device (see embed.default_batch_size)
    workers: int | None = None  # None: chosen from the machine
    dtype: str = "float16"
    follow_symlinks: bool = False
    compile_model: bool = False  # torch.compile the backbone (CUDA only; ignored on the CPU)
    # Trust no file's stat: reuse a cached vector only when the file's bytes hash to what was
    # embedded (for file systems whose ctime or inode cannot be trusted, or to be sure).
    rehash: bool = False
    reembed: bool = False  # embed every file again, replacing what the cache holds
    # Who runs the backbone: torch, onnx (ONNX Runtime, CPU only), onnx-int8 (the same quantised, imgcluster.int8)
    # or auto: onnx-int8 for the bundled EfficientNet-Lite0 on the CPU, else torch (onnxruntime_backend.auto_runtime).
    # As asked: the runtime that ran is Embeddings.runtime, in the cache's config.json and the CSV's sidecar.
    runtime: str = "auto"


@dataclass
class TrainConfig:
    objective: str = DEFAULT_OBJECTIVE
    clusters: int = DEFAULT_CLUSTERS
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    knn: int = DEFAULT_KNN
    seed: int = 0
    grad_clip: float = 0.0
    # Small folders train for more epochs to reach this many steps, and no stage stops early before it.
    min_steps: int = 300
    # Stop a stage early once its clusters have settled: when at most this fraction of the images
    # changed cluster (in the head that would be kept) from one epoch to the next, ``stable_epochs``
    # epochs in a row, and not before ``min_steps`` steps. None trains every epoch. Objectives that
    # report no assignments train every epoch.
    stable_fraction: float | None = 0.05
    stable_epochs: int = 2
    objective_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AssignConfig:
    folder: str
    out: str
    head: str | None = None
    explain: bool = False
    raw_csv: bool = False  # CSV cells written without the formula escape (see imgcluster.csvfile)
    names: bool = True  # a cluster_name column was written (False: asked for none)


@dataclass
class EvaluateConfig:
    assignments: str
    labelled_folder: str


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else dict(obj)


def provenance() -> dict[str, Any]:
    """Where and with what a result was made."""
    import torch

    return {
        "imgcluster": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_sidecar(path: Path, **sections: Any) -> Path:
    """Write ``{section: config}`` as pretty JSON, atomically, and return its path."""
    payload = {name: to_dict(value) if dataclasses.is_dataclass(value) else value for name, value in sections.items()}
    payload.setdefault("provenance", provenance())
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def sidecar_path(artefact: Path) -> Path:
    """``clusters.csv`` -> ``clusters.csv.json``: the config travels with the file it describes."""
    return artefact.with_name(artefact.name + ".json")


def skipped_path(csv_path: Path) -> Path:
    """``clusters.csv`` -> ``clusters-skipped.csv``: the files a run could not read, beside its CSV."""
    return csv_path.with_name(f"{csv_path.stem}-skipped.csv")

FORMAT_NOTE = "written by imgcluster; see README.md, section 'Files imgcluster writes'"
