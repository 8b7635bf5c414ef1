"""Embedding into the cache: a slow run saves its finished batches by time, not only every 512 images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from imagefolders import CLASSES

from imgcluster.config import EmbedConfig
from imgcluster.errors import ParameterError
from imgcluster.pipeline import EmbedHooks, embed_folder, flush_seconds


def test_slow_run_saves_by_time(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLUSTER_FLUSH_SECONDS", "0.001")  # every batch takes longer than this
    monkeypatch.delenv("IMGCLUSTER_FLUSH_EVERY", raising=False)  # 512 images: far more than the folder
    cache = tmp_path / "cache"
    shards_seen: list[int] = []

    def advance(n: int) -> None:  # what a run killed (SIGKILL, power cut) at this point would have kept
        shards_seen.append(len(list(cache.rglob("shards/*.safetensors"))))

    config = EmbedConfig(str(small_folder), model="efficientnet-lite0", cache_dir=str(cache), workers=0, batch_size=4)
    embed_folder(config, torch.device("cpu"), EmbedHooks(on_advance=advance))
    assert len(shards_seen) == 6  # 24 images in batches of 4
    assert shards_seen[1:] == [1, 2, 3, 4, 5]  # each batch was on disk before the next one finished


def test_flush_seconds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGCLUSTER_FLUSH_SECONDS", raising=False)
    assert flush_seconds() == 30.0
    monkeypatch.setenv("IMGCLUSTER_FLUSH_SECONDS", "2.5")
    assert flush_seconds() == 2.5
    monkeypatch.setenv("IMGCLUSTER_FLUSH_SECONDS", "0")
    with pytest.raises(ParameterError, match="IMGCLUSTER_FLUSH_SECONDS must be a positive number of seconds"):
        flush_seconds()


@pytest.mark.parametrize(("given", "used"), [(128, 8), (4, 4), (None, 8)])
def test_a_batch_size_above_the_folder_is_cut_to_it(given: int | None, used: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pass is padded to the batch size: --embed-batch-size 128 on 6 images took 2.7 GB and 2.4x the time of 8."""
    from imagefolders import CLASSES, copy_sample

    import imgcluster.pipeline

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)
    real, sizes = imgcluster.pipeline.embed_files, []

    def recording(files, backbone, device, batch_size, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(batch_size)
        return real(files, backbone, device, batch_size, *args, **kwargs)

    monkeypatch.setattr(imgcluster.pipeline, "embed_files", recording)
    config = EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(tmp_path / "cache"), workers=0, batch_size=given)
    result = embed_folder(config, torch.device("cpu"))
    assert sizes == [used] and result.embedded == 6


def test_decode_workers_are_no_more_than_batches_and_too_many_is_one_line(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--workers 8 on 6 images started 8 processes for one batch; more workers than cores printed torch's
    UserWarning twice, over several lines."""
    import os
    import warnings

    import imgcluster.pipeline

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # torch asks it too
    said: list[str] = []
    config = EmbedConfig(str(small_folder), model="efficientnet-lite0", cache_dir=str(tmp_path / "cache"), workers=2, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = embed_folder(config, torch.device("cpu"), EmbedHooks(on_warning=said.append))
    assert result.embedded == 24
    assert said == ["{workers} 2 is more than the 1 CPU cores this run may use: decoding can get slower, not faster"]
    assert not [w for w in caught if "DataLoader will create" in str(w.message)]
    real, workers = imgcluster.pipeline.embed_files, []

    def recording(files, backbone, device, batch_size, n_workers, *args, **kwargs):  # type: ignore[no-untyped-def]
        workers.append(n_workers)
        return real(files, backbone, device, batch_size, 0, *args, **kwargs)

    monkeypatch.setattr(imgcluster.pipeline, "embed_files", recording)
    one_class = str(small_folder / CLASSES[0])
    config = EmbedConfig(one_class, model="efficientnet-lite0", cache_dir=str(tmp_path / "other"), workers=8, batch_size=4)
    embed_folder(config, torch.device("cpu"))
    assert workers == [2]  # 8 images: two batches of 4
