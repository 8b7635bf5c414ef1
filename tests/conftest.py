"""Shared fixtures: small real-image folders built per test from the committed sample_data."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, copy_sample, sample_image
from PIL import Image

import imgcluster  # noqa: F401 - before any torch import: sets OpenMP waiting

# The session's variables are set when pytest starts, before test modules are imported: a module that
# builds a subprocess environment at import time (test_faults_kill's ENV) must see them too. A session
# fixture came too late for that one: its runs embedded in int8 (too fast to interrupt where the test
# meant to) and built the int8 file in the user's ~/.cache.
_SESSION: dict[str, str | None] = {}
_MODEL_CACHE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Models exported for ONNX Runtime go to a folder of the session (shared by its tests and their
    subprocesses), never to the user's ~/.cache; and tests embed in torch when they ask for no runtime
    (``$IMGCLUSTER_RUNTIME=torch``, which their subprocesses inherit): ``auto`` runs EfficientNet-Lite0 in
    int8 on the CPU, and the tests that are not about the runtime were written for torch's features. Tests
    of the default ask for :func:`default_runtime`."""
    _MODEL_CACHE.append(tempfile.mkdtemp(prefix="imgcluster-models-"))
    for name, value in (("IMGCLUSTER_MODEL_CACHE", _MODEL_CACHE[0]), ("IMGCLUSTER_RUNTIME", "torch")):
        _SESSION[name] = os.environ.get(name)
        os.environ[name] = value


def pytest_unconfigure(config: pytest.Config) -> None:
    for name, previous in _SESSION.items():
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
    for folder in _MODEL_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


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
