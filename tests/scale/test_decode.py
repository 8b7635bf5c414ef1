"""Decode tasks of the Ray engine (run here without Ray): the single-machine loader's pixels, reasons for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefolders import alpha_pattern, picture
from PIL import Image

from imgcluster.embedding import ImageDataset, draft_size_for
from imgcluster.listing import list_images
from imgcluster.scale.decode import NO_MTIME, decode_batch, pixel_transform
from imgcluster.scale.sources import list_source, open_source

pytest.importorskip("pyarrow", reason="the Ray engine needs the 'ray' extra (with pyarrow)")


@pytest.fixture(scope="module")
def data_config() -> dict:
    from imgcluster.backbones import create_backbone

    return create_backbone("efficientnet-lite0").data_config


def test_pixels_are_the_single_machine_loaders_and_bad_files_get_reasons(tmp_path: Path, data_config: dict) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    picture(1, (320, 200)).save(tmp_path / "rotated.jpg", exif=exif)
    alpha_pattern(2, (200, 120)).save(tmp_path / "alpha.png")
    picture(3).save(tmp_path / "plain.webp")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "grew.png").write_bytes(b"")
    source = open_source(str(tmp_path))
    listing = list_source(source)
    picture(4).save(tmp_path / "grew.png")  # written after it was listed
    batch = {name: np.array(listing.column(name).to_pylist(), dtype=object) for name in ("path", "etag")}
    batch["size"] = np.array(listing.column("size").to_pylist())
    batch["mtime_ns"] = np.array(listing.column("mtime_ns").to_pylist())
    out = decode_batch(batch, source, data_config, timeout=60)
    reasons = dict(zip(out["path"], out["reason"]))
    assert reasons["notes.jpg"] == "not an image (unrecognised format)"
    assert reasons["empty.png"].startswith("not an image") or reasons["empty.png"].startswith("cannot decode")
    assert reasons["grew.png"] == "changed since it was listed; run again to embed it"
    assert out["pixels"].dtype == np.uint8 and out["pixels"].shape == (6, *data_config["input_size"])
    dataset = ImageDataset(list_images(tmp_path), pixel_transform(data_config), draft_size_for(data_config))
    for i, path in enumerate(out["path"]):
        if reasons[path] == "":
            _, tensor, reason, _ = dataset[[f.rel for f in dataset.files].index(path)]
            assert reason is None
            np.testing.assert_array_equal(out["pixels"][i], tensor.numpy())
    assert sorted(p for p, r in reasons.items() if r == "") == ["alpha.png", "plain.webp", "rotated.jpg"]


def test_a_row_without_mtime_is_checked_by_size_alone(tmp_path: Path, data_config: dict) -> None:
    picture(5).save(tmp_path / "a.png")
    source = open_source(str(tmp_path))
    batch = {"path": np.array(["a.png"], dtype=object), "size": np.array([(tmp_path / "a.png").stat().st_size]),
             "mtime_ns": np.array([NO_MTIME]), "etag": np.array(["e"], dtype=object)}  # fmt: skip
    assert decode_batch(batch, source, data_config, timeout=60)["reason"][0] == ""
