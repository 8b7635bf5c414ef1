"""The plain reference pipeline the project's embed path is compared with: PIL, torchvision's
transforms, a DataLoader with default settings, batch 64, float32, the same weights."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imgcluster.backbones import create_backbone
from speed.folders import image_paths
from speed.runs import BATCH, LITE0, Model, Run, cpu_seconds


def reference_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """torchvision's plain eval transform with the model's own data config (as timm builds it)."""
    from torchvision import transforms as T

    size = data_config["input_size"][-1]
    interpolation = T.InterpolationMode(data_config["interpolation"])
    return T.Compose(
        [
            T.Resize(math.floor(size / data_config["crop_pct"]), interpolation=interpolation),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(data_config["mean"], data_config["std"]),
        ]
    )


class ReferenceDataset(Dataset):
    """PIL open + convert RGB + transform, timing both steps (in-process: num_workers=0)."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = paths
        self.transform = transform
        self.decode = 0.0
        self.preprocess = 0.0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        t0 = time.perf_counter()
        image = Image.open(self.paths[i]).convert("RGB")
        t1 = time.perf_counter()
        x = self.transform(image)
        self.decode += t1 - t0
        self.preprocess += time.perf_counter() - t1
        return x


def run_reference(folder: Path, device: torch.device, model_spec: Model = LITE0) -> Run:
    start, cpu0 = time.perf_counter(), cpu_seconds()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # torch's default; ours turns it on, and it is process-wide
    backbone = create_backbone(model_spec.name, model_spec.weights, device=device)
    model = backbone.model
    dataset = ReferenceDataset(image_paths(folder), reference_transform(backbone.data_config))
    loader = DataLoader(dataset, batch_size=BATCH)  # every other setting at its default: num_workers=0
    setup = time.perf_counter() - start
    features, model_s = [], 0.0
    with torch.no_grad():
        for x in loader:
            t = time.perf_counter()
            out = model(x.to(device))
            features.append(out.float().cpu().numpy())
            model_s += time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "features.npy", np.concatenate(features))
    write = time.perf_counter() - t
    wall = time.perf_counter() - start
    stages = {"setup": setup, "decode": dataset.decode, "preprocess": dataset.preprocess, "model": model_s, "write": write}
    stages["other"] = wall - sum(stages.values())
    return Run(len(dataset), wall, cpu_seconds() - cpu0, stages)
