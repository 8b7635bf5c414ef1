"""Turn image files into feature vectors with a backbone, in batches, in parallel workers."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgcluster.backbones import Backbone
from imgcluster.load import ImageDecodeError, load_rgb
from imgcluster.scan import ImageFile


class ImageDataset(Dataset):
    """Decodes and preprocesses one file; failures travel as reasons, never as exceptions."""

    def __init__(self, files: list[ImageFile], transform: Callable, draft_size: int | None) -> None:
        self.files = files
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = load_rgb(self.files[i].path, self.draft_size)
            return i, self.transform(image), None
        except ImageDecodeError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image must not stop the run
            return i, None, f"cannot preprocess: {type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    ok = [(i, t) for i, t, _ in items if t is not None]
    failed = [(i, reason) for i, t, reason in items if t is None and reason is not None]
    tensor = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensor, failed


@dataclass
class EmbeddedBatch:
    indices: list[int]  # positions in the ``files`` list given to :func:`embed_files`
    features: np.ndarray  # [len(indices), d] float32
    failures: list[tuple[int, str]]  # (position, reason)


def default_workers(n_files: int) -> int:
    if n_files < 64:
        return 0  # starting worker processes costs more than decoding a handful of images
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def draft_size_for(data_config: dict) -> int:
    """The smallest side the resize step needs, so JPEG decoding can skip the rest."""
    size = max(data_config["input_size"][1:])
    return math.ceil(size / data_config.get("crop_pct", 1.0))


def embed_files(
    files: list[ImageFile],
    backbone: Backbone,
    device: torch.device,
    batch_size: int = 64,
    workers: int | None = None,
) -> Iterator[EmbeddedBatch]:
    from timm.data import create_transform

    transform = create_transform(**backbone.data_config, is_training=False)
    dataset = ImageDataset(files, transform, draft_size_for(backbone.data_config))
    workers = default_workers(len(files)) if workers is None else workers
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
    model = backbone.model
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for indices, tensor, failures in loader:
            if tensor is None:
                yield EmbeddedBatch([], np.zeros((0, backbone.feature_dim), np.float32), failures)
                continue
            x = tensor.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(x)
            else:
                out = model(x)
            yield EmbeddedBatch(indices, out.float().cpu().numpy(), failures)
