"""Which images are drawn light on black, and the cached classifier view that names their clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcluster import negatives
from imgcluster.negatives import classifier_view, is_negative, mostly_negative, sample_rows, view_probabilities

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


def test_view_probabilities_are_cached_by_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
    first = view_probabilities(files, cache)
    assert first.shape == (4, 1000) and np.allclose(first[:3].sum(1), 1, atol=1e-2) and not first[3].any()
    calls: list[int] = []
    real = negatives._lite0_features

    def counted(paths: list[Path]) -> np.ndarray:
        calls.append(len(paths))
        return real(paths)

    monkeypatch.setattr(negatives, "_lite0_features", counted)
    assert np.array_equal(view_probabilities(files[:3], cache), first[:3]) and calls == []  # no model built
    drawing(light_on_black=False).save(files[1])  # changed: seen again
    stat = files[1].stat()
    import os

    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = view_probabilities(files[:3], cache)
    assert calls == [1] and np.array_equal(again[[0, 2]], first[[0, 2]]) and not np.allclose(again[1], first[1])
    (cache / negatives.CACHE_NAME).write_bytes(b"torn")  # a damaged cache is made again, not an error
    assert view_probabilities(files[:1], cache).shape == (1, 1000) and calls == [1, 1]


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


def test_the_classifier_view_runs_as_the_embed_loop_runs_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 64 in fresh memory made the naming pass of 320 images 70 % kernel time: it must use the
    embed loop's batch size, folded model and reused memory."""
    import contextlib

    import torch

    import imgcluster.embedding
    import imgcluster.speed
    from imgcluster.speed import has_batchnorm

    files = []
    for i in range(20):
        drawing().save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    reusing: list[bool] = []
    seen: list[tuple[int, int, bool]] = []
    real_reuse, real_forward = imgcluster.speed.reuse_freed_memory, imgcluster.embedding.forward

    @contextlib.contextmanager
    def watched_reuse():  # type: ignore[no-untyped-def]
        with real_reuse() as took:
            reusing.append(True)
            yield took
            reusing.pop()

    def watched_forward(model, pixels, to_floats, batch_size, device, bf16):  # type: ignore[no-untyped-def]
        seen.append((pixels.shape[0], batch_size, bool(reusing)))
        return real_forward(model, pixels, to_floats, batch_size, device, bf16)

    monkeypatch.setattr(imgcluster.speed, "reuse_freed_memory", watched_reuse)
    monkeypatch.setattr(imgcluster.embedding, "forward", watched_forward)
    features = negatives._lite0_features(files)
    cpu_batch = imgcluster.embedding.default_batch_size(torch.device("cpu"))
    assert seen == [(16, cpu_batch, True), (4, cpu_batch, True)] and features.shape[0] == 20 and features.any(axis=1).all()
    assert not has_batchnorm(negatives._lite0()[0])  # folded, as embedding.prepare_model leaves it
