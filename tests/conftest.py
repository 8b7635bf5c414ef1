"""Shared fixtures: small real-image folders built per test from the committed sample_data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, copy_sample, sample_image
from PIL import Image

import imgcluster  # noqa: F401 - before any torch import: sets OpenMP waiting


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Models exported for ONNX Runtime go to a folder of the session (shared by its tests and
    their subprocesses), never to the user's ~/.cache."""
    path = tmp_path_factory.mktemp("models")
    previous = os.environ.get("IMGCLUSTER_MODEL_CACHE")
    os.environ["IMGCLUSTER_MODEL_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("IMGCLUSTER_MODEL_CACHE", None)
    else:
        os.environ["IMGCLUSTER_MODEL_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def torch_runtime() -> Iterator[None]:
    """Tests embed in torch when they ask for no runtime (``$IMGCLUSTER_RUNTIME=torch``, which their
    subprocesses inherit): ``auto`` runs EfficientNet-Lite0 in int8 on the CPU, and the tests that are not
    about the runtime were written for torch's features. Tests of the default ask for :func:`default_runtime`."""
    previous = os.environ.get("IMGCLUSTER_RUNTIME")
    os.environ["IMGCLUSTER_RUNTIME"] = "torch"
    yield
    if previous is None:
        os.environ.pop("IMGCLUSTER_RUNTIME", None)
    else:
        os.environ["IMGCLUSTER_RUNTIME"] = previous


@pytest.fixture
def default_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` as a user gets it: onnx-int8 for EfficientNet-Lite0 on the CPU (the int8 file is built
    once per session, in the session's model cache)."""
    monkeypatch.delenv("IMGCLUSTER_RUNTIME")


@pytest.fixture(autouse=True)
def no_stop_left_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handled Ctrl-C in one CliRunner test leaves the signal it came from in imgcluster.signals, and
    a later test that runs the real entry point (imgcluster.__main__.main) then ended pytest's own
    process by that signal (exit_by_signal): each test starts with none, and leaves none behind."""
    import imgcluster.signals

    monkeypatch.setattr(imgcluster.signals, "_stopped_by", None)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for the session: tests that do not test caching reuse features."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "photos", CLASSES[:3], per_class=8)


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """Real images in every awkward form a photo folder has, plus files that are not images."""
    root = copy_sample(tmp_path / "messy", CLASSES[:2], per_class=6)
    base = sample_image(CLASSES[2]).resize((64, 48))
    nested = root / "nested" / "deeper"
    nested.mkdir(parents=True)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 2 * 255).astype(np.uint8)))
    rgba.save(nested / "rgba.png")
    base.convert("L").save(root / "grey.png")
    base.convert("P").save(root / "palette.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    base.save(root / "rotated.jpg", exif=exif)
    base.save(root / "ünïcødé 名前.webp")
    base.convert("CMYK").save(root / "cmyk.tiff")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image\n")
    data = (root / CLASSES[0] / sorted(p.name for p in (root / CLASSES[0]).iterdir())[0]).read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "readme.txt").write_text("ignored: not an image extension\n")
    hidden = root / ".hidden"
    hidden.mkdir()
    base.save(hidden / "secret.png")
    return root
