"""Which images are drawn light on black, and the cached classifier view that names their clusters."""

from __future__ import annotations

from pathlib import Path

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

    def counted(paths: list[Path], views: tuple[str, ...]) -> np.ndarray:
        calls.append(len(paths))
        return real(paths, views)

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
