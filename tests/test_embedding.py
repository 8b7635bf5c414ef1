"""The embed loop's cheaper per-image and per-batch steps give the pixels and floats of the plain ones, bit for bit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolders import CLASSES, copy_sample
from PIL import Image
from torch import nn
from torchvision import transforms as tv  # type: ignore[import-untyped]

import imgcluster.embedding as embedding
from imgcluster.backbones import Backbone
from imgcluster.embedding import (
    EmbeddedBatch,
    ImageDataset,
    PixelSteps,
    PixelTable,
    draft_size_for,
    embed_files,
    limit_aspect,
    split_transform,
)
from imgcluster.listing import list_images
from imgcluster.load import load_image, load_rgb
from imgcluster.models import BACKBONES

LITE0 = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875}
IMAGENET = {"input_size": (3, 192, 160), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def whole_transform(config: dict) -> tv.Compose:
    from timm.data import create_transform

    return create_transform(**config, is_training=False)


@pytest.mark.parametrize("config", [LITE0, IMAGENET])
def test_the_pixel_table_gives_the_computed_floats_bit_for_bit(config: dict) -> None:
    _, to_floats = split_transform(whole_transform(config))
    assert isinstance(to_floats, PixelTable)
    normalise = whole_transform(config).transforms[-1]
    generator = torch.Generator().manual_seed(0)
    every_value = torch.arange(256, dtype=torch.uint8).repeat(3 * 2 * 8).reshape(2, 3, 32, 64)
    for pixels in (every_value, torch.randint(0, 256, (5, 3, *config["input_size"][1:]), dtype=torch.uint8, generator=generator)):
        expected = normalise(pixels.to(torch.float32).div(255))  # what the per-image ToTensor + Normalize compute
        got = to_floats(pixels)
        assert got.dtype == torch.float32 and got.is_contiguous()
        assert torch.equal(got, expected)


def test_the_pixel_table_computes_what_it_cannot_look_up() -> None:
    _, to_floats = split_transform(whole_transform(LITE0))
    assert isinstance(to_floats, PixelTable)
    floats = torch.rand((2, 3, 8, 8))  # not uint8: computed, as the torch operations would
    assert torch.equal(to_floats(floats), to_floats.compute(floats))


def grey_pictures(folder: Path) -> Path:
    """Grey files of odd sizes in the forms a folder holds them: 8-bit PNG, grey JPEG, 16-bit PNG, and one RGB."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i, (h, w) in enumerate([(28, 28), (5, 300), (431, 257), (240, 320), (1000, 61)]):
        coarse = rng.integers(0, 256, (max(2, h // 9), max(2, w // 9)), dtype=np.uint8)
        smooth = Image.fromarray(coarse, "L").resize((w, h), Image.Resampling.BICUBIC)
        noisy = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        smooth.save(folder / f"smooth{i}.png")
        noisy.save(folder / f"noisy{i}.png")
        smooth.save(folder / f"grey{i}.jpg", quality=85)
    Image.fromarray(rng.integers(0, 65536, (50, 70), dtype=np.uint16)).save(folder / "deep.png")  # 16-bit: rescaled to 8-bit grey
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB").save(folder / "colour.png")
    return folder


@pytest.mark.parametrize("config", [LITE0, IMAGENET])
def test_grey_pictures_stay_grey_until_the_end_and_give_the_rgb_path_s_pixels(tmp_path: Path, config: dict) -> None:
    whole = whole_transform(config)
    per_image, _ = split_transform(whole)
    assert isinstance(per_image, PixelSteps) and per_image.takes_grey
    files = list_images(grey_pictures(tmp_path / "grey"))
    dataset = ImageDataset(files, per_image, draft_size_for(config))
    assert dataset.grey
    as_rgb = tv.Compose([*whole.transforms[:-2], tv.PILToTensor()])  # the steps as they ran on RGB pictures
    for i, file in enumerate(files):
        _, pixels, reason, _ = dataset[i]
        assert reason is None and pixels is not None
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, *config["input_size"][1:])
        assert torch.equal(pixels, as_rgb(limit_aspect(load_rgb(file.path, draft_size_for(config))))), file.rel


def test_steps_that_treat_channels_apart_get_rgb_pictures(tmp_path: Path) -> None:
    """A pad with a colour is no resize or crop: grey pictures become RGB before it, as they always did."""
    from timm.data.transforms import MaybePILToTensor

    steps = PixelSteps([tv.Resize(40), tv.Pad(3, fill=(255, 0, 0))])
    assert not steps.takes_grey
    grey = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50), dtype=np.uint8), "L")
    expected = MaybePILToTensor()(tv.Pad(3, fill=(255, 0, 0))(tv.Resize(40)(grey.convert("RGB"))))
    assert torch.equal(steps(grey), expected)
    assert steps(grey)[0, 0, 0] == 255 and steps(grey)[1, 0, 0] == 0  # the red pad is there
    files = list_images(grey_pictures(tmp_path / "grey"))
    assert not ImageDataset(files, steps, None).grey


def test_load_image_keeps_grey_only_when_asked(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L").save(buffer, "PNG")
    buffer.seek(0)
    assert load_image(buffer).mode == "RGB"
    buffer.seek(0)
    grey = load_image(buffer, grey=True)
    buffer.seek(0)
    assert grey.mode == "L" and np.array_equal(np.asarray(grey.convert("RGB")), np.asarray(load_rgb(buffer)))
    rgba = tmp_path / "alpha.png"
    Image.new("LA", (8, 8), (100, 128)).save(rgba)
    assert load_image(rgba, grey=True).mode == "RGB"  # composited on a background: RGB as before


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    config = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0, "interpolation": "bilinear"}
    return Backbone("efficientnet-lite0", BACKBONES["efficientnet-lite0"], model, config, "test:tiny", 8)


def test_decode_workers_hand_over_four_forward_passes_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer, larger handovers from the decode worker; the model still sees its own batch size, in the
    files' order, with the same features, and a file that fails is reported once."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:3], per_class=7)
    (folder / CLASSES[0] / "broken.png").write_bytes(b"not a png")
    files = list_images(folder)
    backbone = tiny_backbone()
    sizes: list[int] = []
    real_loader = embedding.DataLoader
    monkeypatch.setattr(embedding, "DataLoader", lambda *args, **kwargs: sizes.append(kwargs["batch_size"]) or real_loader(*args, **kwargs))

    def run(workers: int) -> tuple[list[EmbeddedBatch], np.ndarray]:
        batches = list(embed_files(files, backbone, torch.device("cpu"), batch_size=2, workers=workers))
        return batches, np.concatenate([b.features for b in batches])

    grouped, features = run(1)
    assert sizes == [2 * embedding.HANDOVER_GROUP]
    assert all(len(b.indices) <= 2 for b in grouped)  # forward passes of the model's batch size
    assert [i for b in grouped for i in b.indices] == [i for i, f in enumerate(files) if f.rel != f"{CLASSES[0]}/broken.png"]
    assert [reason for b in grouped for _, reason in b.failures] == ["not an image (unrecognised format)"]
    assert all(set(b.seen) == set(b.indices) for b in grouped)
    in_process, expected = run(0)  # no workers: one forward pass per loader batch, as before
    assert sizes[-1] == 2
    assert [b.indices for b in in_process] == [b.indices for b in grouped if b.indices]
    assert np.array_equal(features, expected)
