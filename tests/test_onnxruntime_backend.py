"""ONNX Runtime as the CPU runtime: same features as torch, its own cache, a safe fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolders import CLASSES, copy_sample
from torch import nn
from typer.testing import CliRunner

import imgcluster
import imgcluster.onnxruntime_backend as ort_backend
from imgcluster.backbones import Backbone, create_backbone
from imgcluster.cache import cache_key, embeddings_dir
from imgcluster.cli import app
from imgcluster.embedding import embed_files
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.listing import ImageFile
from imgcluster.models import BACKBONES
from imgcluster.onnxruntime_backend import ExportError, ensure_exported, exported_path, plan_runtime, recorded_failure

TINY_CONFIG = {"input_size": (3, 16, 16), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "interpolation": "bilinear"}


def tiny_backbone(seed: int = 0) -> Backbone:
    """A conv net small enough to export in a fraction of a second."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return Backbone("efficientnet-lite0", BACKBONES["efficientnet-lite0"], model, dict(TINY_CONFIG), f"test:{seed}", 8)


def image_files(folder: Path) -> list[ImageFile]:
    files = []
    for path in sorted(folder.rglob("*.png")):
        st = path.stat()
        files.append(ImageFile(path.relative_to(folder).as_posix(), path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return files


def test_plan_runtime_needs_no_built_model() -> None:
    assert plan_runtime("torch", "cpu") == "torch"
    assert plan_runtime("onnx", "cpu") == "onnx"
    with pytest.raises(ParameterError, match="runtime must be auto, torch, onnx or onnx-int8, not 'tensorrt'"):
        plan_runtime("tensorrt", "cpu")
    with pytest.raises(ParameterError, match="runtime onnx runs on the CPU only"):
        plan_runtime("onnx", "cuda")


def test_auto_is_int8_for_the_bundled_lite0_on_the_cpu(default_runtime: None) -> None:
    """The rule: EfficientNet-Lite0 (int8 ships its ranges) with its own weights, on the CPU, with onnxruntime: int8."""
    assert plan_runtime("auto", "cpu", "efficientnet-lite0") == "onnx-int8"
    assert plan_runtime("auto", "cpu", "efficientnet-lite0", "lite0-finetuned.pth") == "torch"  # no ranges for other weights
    assert plan_runtime("auto", "cpu", "dinov2-vits14") == "torch"  # no ranges for other models
    assert plan_runtime("auto", "cuda", "efficientnet-lite0") == "torch"  # int8 runs on the CPU only: CUDA keeps torch
    assert plan_runtime("auto", "cpu", None) == "torch"  # a feature store's pass: Ray's actors made its features in torch
    assert plan_runtime("torch", "cpu", "efficientnet-lite0") == "torch"  # asked for: as asked
    assert plan_runtime("onnx", "cpu", "efficientnet-lite0") == "onnx"


def test_without_onnxruntime_auto_is_torch_without_a_word(monkeypatch: pytest.MonkeyPatch, default_runtime: None) -> None:
    """onnxruntime (or onnx) that does not import: auto runs torch, and only an explicit runtime is refused."""
    for missing in ("onnxruntime", "onnx"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, missing, None)  # ``import onnxruntime`` raises ImportError
            assert not ort_backend.onnxruntime_installed()
            assert plan_runtime("auto", "cpu", "efficientnet-lite0") == "torch"
            with pytest.raises(ImgclusterError, match="runtime onnx needs the packages onnxruntime and onnx: pip install onnxruntime onnx"):
                plan_runtime("onnx", "cpu")
    assert plan_runtime("auto", "cpu", "efficientnet-lite0") == "onnx-int8"


def test_imgcluster_runtime_torch_keeps_auto_on_torch(monkeypatch: pytest.MonkeyPatch, default_runtime: None) -> None:
    monkeypatch.setenv("IMGCLUSTER_RUNTIME", "torch")
    assert plan_runtime("auto", "cpu", "efficientnet-lite0") == "torch"
    assert plan_runtime("onnx-int8", "cpu", "efficientnet-lite0") == "onnx-int8"  # it changes auto only
    monkeypatch.setenv("IMGCLUSTER_RUNTIME", "auto")
    assert plan_runtime("auto", "cpu", "efficientnet-lite0") == "onnx-int8"
    monkeypatch.setenv("IMGCLUSTER_RUNTIME", "onnx-int8")
    with pytest.raises(ParameterError, match="IMGCLUSTER_RUNTIME must be auto or torch, not 'onnx-int8'"):
        plan_runtime("auto", "cpu", "efficientnet-lite0")


@pytest.mark.parametrize("command", ["embed", "assign"])
def test_a_bad_imgcluster_runtime_is_refused_before_any_work(command: str, tmp_path: Path) -> None:
    """One line, exit 2, before torch is imported and before the cache is made, as the other variables are."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    code = (
        "import sys, atexit; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
        "from imgcluster.cli import main; sys.argv = ['imgcluster', *sys.argv[1:]]; main()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "IMGCLUSTER_RUNTIME": "int8"}
    argv = [command, str(folder), "--model", "efficientnet-lite0", *(["--clusters", "2"] if command != "embed" else [])]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: IMGCLUSTER_RUNTIME must be auto or torch, not 'int8'", "False"]
    assert not (folder / ".imgcluster").exists()


def test_each_runtime_has_its_own_cache_key() -> None:
    """ONNX Runtime's features differ from torch's in the last bits: never one cache for both,
    while torch's key stays what it was before the runtime existed (old caches stay valid)."""
    identity = {"model": "m", "weights": "w", "feature_dim": 4}
    assert cache_key(identity, "float16", "float32", "torch") == cache_key(identity, "float16")
    assert cache_key(identity, "float16", "float32", "onnx") != cache_key(identity, "float16")
    root = Path("/c")
    assert embeddings_dir(root, "m", identity, "float16", runtime="onnx") != embeddings_dir(root, "m", identity, "float16")


def test_export_is_checked_cached_and_rebuilt_when_damaged(monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = tiny_backbone()
    path = ensure_exported(backbone)
    assert path == exported_path(backbone.identity()) and path.is_file()
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["backbone"]["weights"] == "test:0" and len(record["sha256"]) == 64
    exports = []
    real = ort_backend._export_bytes
    monkeypatch.setattr(ort_backend, "_export_bytes", lambda b: exports.append(1) or real(b))
    assert ensure_exported(backbone) == path and exports == []  # intact: used as it is
    path.write_bytes(path.read_bytes()[:100])  # torn
    ensure_exported(backbone)
    assert exports == [1]
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = ort_backend.run(ort_backend.session(path, 1), x)
    with torch.no_grad():
        np.testing.assert_allclose(got, backbone.model(torch.from_numpy(x)).numpy(), atol=1e-5)
    assert exported_path(tiny_backbone(1).identity()) != path  # other weights, another file


def test_an_export_that_computes_other_features_is_refused_and_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = tiny_backbone(2)
    real = ort_backend._export_bytes

    def wrong_weights(b: Backbone) -> bytes:
        other = tiny_backbone(3)
        return real(Backbone(b.name, b.spec, other.model, b.data_config, b.weights_id, b.feature_dim))

    monkeypatch.setattr(ort_backend, "_export_bytes", wrong_weights)
    with pytest.raises(ExportError, match="differ from torch's"):
        ensure_exported(backbone)
    assert not exported_path(backbone.identity()).exists()
    assert "differ from torch's" in (recorded_failure(backbone.identity()) or "")


def test_export_failure_falls_back_to_torch_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backbone the exporter cannot handle still embeds, in torch and torch's cache; the failure
    is recorded, so the next run neither tries again nor warns twice in one run."""
    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    attempts = []

    def unsupported(b: Backbone) -> bytes:
        attempts.append(1)
        raise RuntimeError("Exporting the operator 'aten::odd' to ONNX opset version 18 is not supported")

    monkeypatch.setattr(ort_backend, "_export_bytes", unsupported)
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=3)
    for run in (1, 2):
        events: list[imgcluster.Event] = []
        result = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache", runtime="onnx", progress=events.append)
        warnings = [e.message for e in events if e.kind == "warning"]
        assert len(warnings) == 1 and "cannot run efficientnet-lite0 in ONNX Runtime" in warnings[0], warnings
        assert "aten::odd" in warnings[0] and "running it in torch" in warnings[0]
        assert result.runtime == "torch" and result.warnings == warnings
        assert result.cache_dir.name.endswith(cache_key(result.identity, "float16"))
        assert json.loads((result.cache_dir / "config.json").read_text())["runtime"] == "torch"
        assert len(attempts) == 1, run
        assert result.reused == (3 if run == 2 else 0)


@pytest.mark.slow
def test_onnxruntime_features_equal_torchs(tmp_path: Path) -> None:
    """EfficientNet-Lite0 on real images, through the embedding loop: ONNX Runtime against torch.
    Measured: at most 1e-5 apart on features up to ~6 (benchmarks/results_runtime.md)."""
    folder = copy_sample(tmp_path / "photos", CLASSES, per_class=2)
    files = image_files(folder)
    backbone = create_backbone("efficientnet-lite0")
    path = ensure_exported(backbone)
    cpu = torch.device("cpu")
    in_torch = np.concatenate([b.features for b in embed_files(files, backbone, cpu, batch_size=8, workers=0)])
    in_ort = np.concatenate([b.features for b in embed_files(files, backbone, cpu, batch_size=8, workers=0, onnx_model=path)])
    assert in_ort.shape == in_torch.shape == (10, 1280)
    assert np.abs(in_ort - in_torch).max() < 1e-4 * np.abs(in_torch).max()
    cosine = (in_ort * in_torch).sum(1) / np.linalg.norm(in_ort, axis=1) / np.linalg.norm(in_torch, axis=1)
    assert cosine.min() > 0.99999


@pytest.mark.slow
def test_runtime_option_picks_the_cache(tmp_path: Path) -> None:
    """--runtime torch and onnx write caches of their own, each recorded in its config.json; a bad
    value is a usage error naming the flag."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=3)
    runner = CliRunner()
    made = {}
    for runtime in ("torch", "onnx"):
        args = ["embed", str(folder), "--model", "efficientnet-lite0", "--cache-dir", str(tmp_path / "cache"), "--runtime", runtime]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.stderr
        (config,) = [p for p in (tmp_path / "cache").rglob("config.json") if p.parent not in made.values()]
        assert json.loads(config.read_text())["runtime"] == runtime
        made[runtime] = config.parent
    assert made["torch"] != made["onnx"]
    result = runner.invoke(app, ["embed", str(folder), "--runtime", "tensorrt"])
    assert result.exit_code == 2
    assert "--runtime must be auto, torch, onnx or onnx-int8, not 'tensorrt'" in result.stderr


def test_batches_come_out_in_the_loaders_order_when_later_ones_finish_first() -> None:
    """Two ONNX Runtime streams: a batch is handed on only after every batch before it, empty ones included,
    whichever finishes first (here the last submitted, then the first)."""
    import threading
    import time
    from concurrent.futures import Future

    from imgcluster.embedding import _in_order

    futures: list[Future[np.ndarray]] = []
    values = {0: 0.0, 1: 2.0, 2: 3.0}  # submission -> the value its rows hold

    def finish(i: int) -> None:
        while len(futures) <= i:
            time.sleep(0.01)
        futures[i].set_result(np.full((2 if i == 0 else 1, 4), values[i], np.float32))
        time.sleep(0.05)

    def finish_in_reverse() -> None:  # two in flight: the second finishes before the first
        for i in (1, 0, 2):
            finish(i)

    def submit(pixels: torch.Tensor) -> Future[np.ndarray]:
        futures.append(Future())
        return futures[-1]

    batches = [([0, 1], torch.zeros(2)), ([], None), ([2], torch.zeros(1)), ([3], torch.zeros(1))]
    loader = [(indices, tensor, [(9, "broken")] if tensor is None else [], {}) for indices, tensor in batches]
    threading.Thread(target=finish_in_reverse, daemon=True).start()
    got = [(b.indices, b.features[:, 0].tolist(), b.failures) for b in _in_order(iter(loader), submit, 2, 4, lambda s, m: None)]
    assert got == [([0, 1], [0.0, 0.0], []), ([], [], [(9, "broken")]), ([2], [2.0], []), ([3], [3.0], [])]


def test_two_cores_run_two_one_thread_sessions_with_the_same_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On two cores ONNX Runtime runs two one-thread sessions side by side over many forward passes (one session on
    two threads kept about one core busy), and one session on both threads over a few (a second session's arena
    costs more memory than the passes gain); the features are those of one session, row for row."""
    import contextlib

    import imgcluster.embedding as embedding

    monkeypatch.setattr(embedding, "ONE_SESSION_PASSES", 6)
    folder = copy_sample(tmp_path / "photos", CLASSES, per_class=4)
    files = image_files(folder)
    backbone = tiny_backbone()
    path = ensure_exported(backbone)
    threads: list[int] = []
    real_session = ort_backend.session
    monkeypatch.setattr(ort_backend, "session", lambda model, n: threads.append(n) or real_session(model, n))
    cpu = torch.device("cpu")

    def embedded(cores: int) -> tuple[np.ndarray, list[int]]:
        monkeypatch.setattr(embedding, "cpu_threads", lambda workers: contextlib.nullcontext(cores))
        batches = list(embed_files(files, backbone, cpu, batch_size=3, workers=0, onnx_model=path))
        return np.concatenate([b.features for b in batches]), [i for b in batches for i in b.indices]

    one, one_order = embedded(1)
    assert threads == [1]
    two, two_order = embedded(2)
    assert threads == [1, 1, 1]  # 7 passes of 3 images: two more sessions, of one thread each
    monkeypatch.setattr(embedding, "ONE_SESSION_PASSES", 7)
    few, few_order = embedded(2)
    assert threads == [1, 1, 1, 2]  # 7 passes are few: one session on both threads
    assert one_order == two_order == few_order == list(range(len(files)))
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(few, one)


def test_sessions_are_one_a_thread_only_over_many_passes() -> None:
    from imgcluster.embedding import ONE_SESSION_PASSES, onnx_streams

    assert ONE_SESSION_PASSES == 32
    assert onnx_streams(2, 125, 8) == 1  # sample_data: 16 passes
    assert onnx_streams(2, 256, 8) == 1 and onnx_streams(2, 257, 8) == 2
    assert onnx_streams(2, 10_000, 8) == 2 and onnx_streams(1, 10_000, 8) == 1


def test_each_session_has_a_second_batch_queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions: the loader is read four batches ahead of the batch being handed on, so a session that
    finishes while the main thread waits (for the oldest batch, or the decode worker) finds one queued."""
    import contextlib
    from collections.abc import Callable, Iterator
    from concurrent.futures import Future

    import imgcluster.embedding as embedding

    files = image_files(copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4))
    backbone = tiny_backbone()
    submitted: list[int] = []

    @contextlib.contextmanager
    def streams(model: Path, n: int, to_floats: object, batch_size: int) -> Iterator[Callable[[torch.Tensor], Future[np.ndarray]]]:
        def submit(pixels: torch.Tensor) -> Future[np.ndarray]:
            submitted.append(pixels.shape[0])
            done: Future[np.ndarray] = Future()
            done.set_result(np.zeros((pixels.shape[0], backbone.feature_dim), np.float32))
            return done

        yield submit

    monkeypatch.setattr(embedding, "_onnx_streams", streams)
    monkeypatch.setattr(embedding, "cpu_threads", lambda workers: contextlib.nullcontext(2))
    monkeypatch.setattr(embedding, "ONE_SESSION_PASSES", 0)  # 8 passes: as many a folder of many
    batches = embed_files(files, backbone, torch.device("cpu"), batch_size=1, workers=0, onnx_model=tmp_path / "unused.onnx")
    first = next(batches)
    assert first.indices == [0]
    assert len(submitted) == 5  # two sessions, two batches each in flight, and the one read before the first was handed on
    assert [i for b in [first, *batches] for i in b.indices] == list(range(len(files)))
