"""A cached run finds its cache without building the model, and never reuses features of a changed one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from imgcluster import identity as identity_module
from imgcluster.backbones import _bundled_weights_path, _read_state_dict
from imgcluster.cache import embeddings_dir
from imgcluster.config import EmbedConfig
from imgcluster.identity import SOURCE_FIELD
from imgcluster.pipeline import Embeddings, embed_folder

CPU = torch.device("cpu")


def run(folder: Path, cache: Path, weights: Path | None = None) -> Embeddings:
    config = EmbedConfig(
        str(folder), model="efficientnet-lite0", weights=None if weights is None else str(weights), cache_dir=str(cache),
        workers=0, batch_size=8,
    )  # fmt: skip
    return embed_folder(config, CPU)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names timm.create_model is called with from here on."""
    calls: list[str] = []
    create = timm.create_model

    def counting(name: str, *args: object, **kwargs: object) -> torch.nn.Module:
        calls.append(name)
        return create(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", counting)
    return calls


def test_a_cached_run_builds_no_model(small_folder: Path, tmp_path: Path, builds: list[str]) -> None:
    first = run(small_folder, tmp_path / "cache")
    assert first.embedded == 24 and len(builds) == 1
    second = run(small_folder, tmp_path / "cache")
    assert len(builds) == 1  # nothing to embed: no model
    assert (second.embedded, second.reused) == (0, 24)
    assert second.cache_dir == first.cache_dir and second.identity == first.identity
    assert np.array_equal(second.features, first.features)


def test_one_new_image_builds_the_model(small_folder: Path, tmp_path: Path, builds: list[str]) -> None:
    run(small_folder, tmp_path / "cache")
    shutil.copy(sorted(small_folder.rglob("*.png"))[0], small_folder / "new.png")
    again = run(small_folder, tmp_path / "cache")
    assert (again.embedded, again.reused, len(builds)) == (1, 24, 2)


def test_a_changed_weights_file_never_reuses_features(small_folder: Path, tmp_path: Path, builds: list[str]) -> None:
    weights = tmp_path / "lite0.pth"  # a state dict in the bundled key order, which loading by position needs
    state = _read_state_dict(_bundled_weights_path())
    torch.save(state, weights)
    first = run(small_folder, tmp_path / "cache", weights)
    assert run(small_folder, tmp_path / "cache", weights).embedded == 0 and len(builds) == 1
    stem = next(k for k in state if k.startswith("_conv_stem"))
    state[stem] = state[stem] * 0.5  # the same file name and size, other weights
    torch.save(state, weights)
    changed = run(small_folder, tmp_path / "cache", weights)
    assert (changed.embedded, changed.reused, len(builds)) == (24, 0, 2)
    assert changed.cache_dir != first.cache_dir
    assert not np.allclose(changed.features, first.features, atol=1e-3)


def test_another_timm_version_builds_once_and_keeps_equal_features(
    small_folder: Path, tmp_path: Path, builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(small_folder, tmp_path / "cache")
    version = identity_module._version
    monkeypatch.setattr(identity_module, "_version", lambda package: "99.0" if package == "timm" else version(package))
    upgraded = run(small_folder, tmp_path / "cache")
    assert len(builds) == 2  # its record was of another timm: derived again from a built model
    assert (upgraded.embedded, upgraded.cache_dir) == (0, first.cache_dir)  # same identity, so same features
    assert run(small_folder, tmp_path / "cache").embedded == 0 and len(builds) == 2


def test_a_record_that_names_the_wrong_cache_is_dropped(small_folder: Path, tmp_path: Path, builds: list[str]) -> None:
    cache = tmp_path / "cache"
    first = run(small_folder, cache)
    description = json.loads((first.cache_dir / "config.json").read_text())
    wrong = {**first.identity, "data_config": {**first.identity["data_config"], "crop_pct": 0.5}}
    elsewhere = embeddings_dir(first.cache_dir.parents[1], first.model, wrong, "float16")
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text(json.dumps({**description, "backbone": wrong}))
    (first.cache_dir / "config.json").unlink()  # so that the wrong record is the only one
    again = run(small_folder, cache)
    assert len(builds) == 2  # the wrong cache was empty: the model was built, and disagreed with the record
    assert (again.cache_dir, again.embedded, again.reused) == (first.cache_dir, 0, 24)
    assert SOURCE_FIELD not in json.loads((elsewhere / "config.json").read_text())
    assert not list(elsewhere.glob("shards/*.safetensors"))
    assert run(small_folder, cache).embedded == 0 and len(builds) == 2
