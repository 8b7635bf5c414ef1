"""The fast paths give the same answers as the plain ones: torch kNN vs faiss, IVF, JPEG draft
decoding, decode workers, batch-norm folding. GPU-only checks skip without CUDA."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolders import CLASSES, copy_sample
from PIL import Image
from torch import nn

import imgcluster.embedding as embedding
import imgcluster.neighbours as neighbours
from imgcluster.backbones import Backbone, BackboneSpec, create_backbone
from imgcluster.embedding import (
    default_batch_size,
    default_workers,
    draft_size_for,
    embed_files,
    plan_loader,
    prepare_model,
    split_transform,
)
from imgcluster.errors import ImgclusterError
from imgcluster.listing import list_images
from imgcluster.load import load_rgb
from imgcluster.neighbours import knn_search, knn_search_torch, l2_normalise
from imgcluster.speed import cpu_threads, fold_batchnorm, reuse_freed_memory


def cuda(test: Callable[..., None]) -> Callable[..., None]:
    """Marked ``gpu`` (``pytest -m gpu`` picks every CUDA test) and skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def clustered(n: int, d: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)).astype(np.float32)
    return c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)


def exact_knn(x: np.ndarray, k: int) -> np.ndarray:
    z = l2_normalise(x)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def assert_valid(idx: np.ndarray, n: int) -> None:
    assert ((idx >= 0) & (idx < n)).all()
    assert (idx != np.arange(n)[:, None]).all()
    assert all(len(set(row)) == idx.shape[1] for row in idx)


# ---- kNN ------------------------------------------------------------------------------------------
def test_torch_knn_equals_faiss_on_random_data() -> None:
    x = np.random.default_rng(0).normal(size=(1500, 32)).astype(np.float32)
    idx_f, sim_f = knn_search(x, 10)
    idx_t, sim_t = knn_search_torch(x, 10, "cpu", block=256)  # several blocks, a ragged last one
    assert np.array_equal(np.sort(idx_f, 1), np.sort(idx_t, 1))
    assert np.allclose(np.sort(sim_f, 1), np.sort(sim_t, 1), atol=1e-5)
    assert (np.diff(sim_t, axis=1) <= 1e-7).all()  # best first, as faiss returns them


def test_torch_knn_block_follows_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    monkeypatch.setattr(neighbours, "TORCH_SIMILARITY_BUDGET", 500 * 7)  # 7 query rows per block
    idx, _ = knn_search_torch(x, 5, "cpu")
    assert np.array_equal(np.sort(idx, 1), np.sort(exact_knn(x, 5), 1))


def test_torch_knn_excludes_self_among_duplicates() -> None:
    x = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 2, 3]]
    idx, _ = knn_search_torch(x, 2, "cpu")
    assert (idx != np.arange(6)[:, None]).all()
    assert set(idx[0]) == {1, 2}


@pytest.mark.parametrize("api", ["legacy", "per-backend"])
def test_torch_knn_runs_and_restores_either_precision_api(api: str) -> None:
    """Once the per-backend API is used, torch refuses to read the legacy setting: the search must
    still run (full float32) and leave the caller's choice as it was."""
    matmul = torch.backends.cuda.matmul
    x = np.random.default_rng(4).normal(size=(300, 8)).astype(np.float32)
    try:
        if api == "legacy":
            torch.set_float32_matmul_precision("high")
        else:
            matmul.fp32_precision = "tf32"
        idx, _ = knn_search_torch(x, 5, "cpu")
        assert np.array_equal(np.sort(idx, 1), np.sort(exact_knn(x, 5), 1))
        if api == "legacy":
            assert torch.get_float32_matmul_precision() == "high"
        else:
            assert matmul.fp32_precision == "tf32"
    finally:
        if api == "legacy":
            torch.set_float32_matmul_precision("highest")
        else:
            matmul.fp32_precision = "none"
    assert torch.get_float32_matmul_precision() == "highest"  # the process is left as torch starts


def test_gpu_search_falls_back_to_torch_when_faiss_gpu_kernels_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI's faiss-gpu wheels stop at compute capability 8.9: on an H100 their search raises, and
    the exact torch search must answer instead (here on the CPU, standing in for the GPU)."""
    calls: list[str] = []
    faiss_search = neighbours._faiss_search

    def failing(features: np.ndarray, k: int, use_gpu: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(f"faiss gpu={use_gpu}")
        if use_gpu:
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return faiss_search(features, k, use_gpu, seed)

    def torch_on_cpu(features: np.ndarray, k: int, device: object) -> tuple[np.ndarray, np.ndarray]:
        calls.append(f"torch {device}")
        return knn_search_torch(features, k, "cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(neighbours, "faiss_has_gpu", lambda: True)
    monkeypatch.setattr(neighbours, "_faiss_search", failing)
    monkeypatch.setattr(neighbours, "knn_search_torch", torch_on_cpu)
    x = np.random.default_rng(5).normal(size=(200, 8)).astype(np.float32)
    idx, _ = knn_search(x, 5, use_gpu=True)
    assert calls == ["faiss gpu=True", "torch cuda"]
    assert np.array_equal(np.sort(idx, 1), np.sort(exact_knn(x, 5), 1))


def test_half_overwritten_faiss_is_a_one_line_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """faiss-cpu and faiss-gpu-cu12 share one folder; installed together, `import faiss` fails
    with an AttributeError from inside SWIG (seen with faiss-cpu 1.15.1 + faiss-gpu-cu12 1.14.1)."""
    fake = tmp_path / "faiss"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise AttributeError(\"module 'faiss._swigfaiss' has no attribute 'delete_GpuResourcesVector'\")\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "faiss", raising=False)
    with pytest.raises(ImgclusterError, match="faiss-cpu and faiss-gpu-cu12 are both installed") as err:
        neighbours.load_faiss()
    assert "\n" not in str(err.value) and "pip uninstall -y faiss-cpu" in str(err.value)


def test_ivf_path_returns_valid_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(neighbours, "IVF_THRESHOLD", 1000)
    x = clustered(4000, 16, centres=40)
    idx, sims = knn_search(x, 10)
    assert idx.shape == (4000, 10)
    assert_valid(idx, 4000)
    expected = exact_knn(x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, expected)])
    assert recall > 0.9
    z = l2_normalise(x)
    assert np.allclose(sims, np.einsum("nd,nkd->nk", z, z[idx]), atol=1e-4)


def test_ivf_rows_left_short_are_repaired_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """With k larger than what the probed lists hold, faiss pads with -1; those rows go exact."""
    monkeypatch.setattr(neighbours, "IVF_THRESHOLD", 1000)
    repaired: list[np.ndarray] = []
    exact_rows = neighbours._exact_rows

    def spy(x: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        repaired.append(rows)
        return exact_rows(x, rows, k)

    monkeypatch.setattr(neighbours, "_exact_rows", spy)
    x = np.random.default_rng(2).normal(size=(1200, 8)).astype(np.float32)
    idx, _ = knn_search(x, 300)
    assert repaired and repaired[0].size > 0  # the repair really ran
    assert_valid(idx, 1200)
    rows = repaired[0]
    assert np.array_equal(np.sort(idx[rows], 1), np.sort(exact_knn(x, 300)[rows], 1))


@cuda
def test_torch_knn_on_cuda_equals_faiss() -> None:
    x = np.random.default_rng(3).normal(size=(5000, 64)).astype(np.float32)
    idx_f, _ = knn_search(x, 20)
    idx_t, _ = knn_search_torch(x, 20, "cuda", block=1000)
    assert np.array_equal(np.sort(idx_f, 1), np.sort(idx_t, 1))
    idx_gpu, _ = knn_search(x, 20, use_gpu=True)  # faiss-gpu when installed, else the torch path
    assert np.array_equal(np.sort(idx_f, 1), np.sort(idx_gpu, 1))


# ---- decoding -------------------------------------------------------------------------------------
def pattern(width: int, height: int) -> Image.Image:
    """Four coloured quadrants and a gradient: any flip or rotation changes it."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = np.where(x < width // 2, 230, 20)
    rgb[..., 1] = np.where(y < height // 2, 200, 30)
    rgb[..., 2] = (x * 255 // width).astype(np.uint8)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_decode_keeps_exif_orientation(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    pattern(1200, 600).save(path, quality=95, exif=exif)
    full = load_rgb(path)
    draft = load_rgb(path, draft_size=256)
    assert draft.size[0] < full.size[0]  # draft mode really decoded fewer pixels
    assert min(draft.size) >= 256  # but never fewer than the resize step needs
    assert (draft.size[0] > draft.size[1]) == (full.size[0] > full.size[1])
    reference = np.asarray(full.resize(draft.size, Image.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(draft, dtype=np.float32) - reference).mean() < 4.0


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_draft_decode_keeps_colour_modes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"{mode}.jpg"
    pattern(1024, 768).convert(mode).save(path, quality=95)
    full = load_rgb(path)
    draft = load_rgb(path, draft_size=256)
    assert draft.mode == full.mode == "RGB"
    assert draft.size == (512, 384)
    reference = np.asarray(full.resize(draft.size, Image.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(draft, dtype=np.float32) - reference).mean() < 4.0
    if mode == "L":
        channels = np.asarray(draft)
        assert (channels[..., 0] == channels[..., 1]).all() and (channels[..., 1] == channels[..., 2]).all()


# ---- embedding ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet-lite0")


def test_workers_give_the_same_features_as_in_process(tmp_path: Path, lite0: Backbone) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=8)
    pattern(900, 500).save(folder / "big.jpg", quality=90)  # draft-mode JPEG among the PNGs
    files = list_images(folder)
    cpu = torch.device("cpu")

    def run(workers: int) -> np.ndarray:
        out = np.zeros((len(files), lite0.feature_dim), np.float32)
        for batch in embed_files(files, lite0, cpu, batch_size=8, workers=workers):
            assert not batch.failures
            out[batch.indices] = batch.features
        return out

    assert np.allclose(run(0), run(2), atol=1e-5)


def test_workers_hand_over_uint8_pixels_that_become_the_same_floats(tmp_path: Path, lite0: Backbone) -> None:
    from timm.data import create_transform

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4)
    pattern(900, 500).save(folder / "big.jpg", quality=90)
    whole = create_transform(**lite0.data_config, is_training=False)
    per_image, to_floats = split_transform(whole)
    assert to_floats is not None
    images = [load_rgb(f.path, draft_size_for(lite0.data_config)) for f in list_images(folder)]
    pixels = torch.stack([per_image(im) for im in images])
    assert pixels.dtype == torch.uint8  # a quarter of float32's bytes through shared memory
    assert torch.equal(to_floats(pixels), torch.stack([whole(im) for im in images]))  # bit for bit


def test_transform_without_normalise_at_the_end_is_kept_whole() -> None:
    from torchvision import transforms as tv

    odd = tv.Compose([tv.Resize(32), tv.ToTensor()])
    assert split_transform(odd) == (odd, None)


def test_embedding_from_uint8_batches_gives_the_float_path_s_features(
    tmp_path: Path, lite0: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = list_images(copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4))
    cpu = torch.device("cpu")

    def run() -> np.ndarray:
        out = np.zeros((len(files), lite0.feature_dim), np.float32)
        for batch in embed_files(files, lite0, cpu, batch_size=8, workers=0):
            out[batch.indices] = batch.features
        return out

    split = run()
    monkeypatch.setattr(embedding, "split_transform", lambda transform: (transform, None))  # floats per image, as before
    assert np.array_equal(split, run())


@pytest.mark.parametrize(
    ("device", "n_files", "expected"),
    [("cpu", None, 8), ("cpu", 1, 8), ("cpu", 5, 8), ("cpu", 12, 8), ("cpu", 40, 8), ("cuda", 100, 104), ("cuda", 10**6, 256)],
)
def test_default_batch_shrinks_to_small_folders(device: str, n_files: int | None, expected: int) -> None:
    assert default_batch_size(torch.device(device), n_files) == expected


@pytest.mark.parametrize(
    ("input_size", "n_files", "expected"),
    [((3, 224, 224), None, 8), ((3, 448, 448), None, 2), ((3, 896, 896), 40, 1), ((3, 112, 112), None, 16), ((3, 112, 112), 12, 16),
     ((3, 112, 112), 5, 8), ((3, 64, 64), None, 16)],
)  # fmt: skip
def test_cpu_batches_hold_the_same_pixels_whatever_the_input_size(input_size: tuple[int, ...], n_files: int | None, expected: int) -> None:
    """A batch's activations grow with its pixels: larger inputs get fewer images per pass, on the CPU only."""
    assert default_batch_size(torch.device("cpu"), n_files, input_size) == expected
    assert default_batch_size(torch.device("cuda"), n_files, input_size) == default_batch_size(torch.device("cuda"), n_files)


@pytest.mark.parametrize(
    ("cores", "n_files", "device", "expected"),
    [
        (16, 63, "cuda", 0),
        (16, 10_000, "cpu", 8),
        (16, 10_000, "cuda", 15),
        (64, 10_000, "cuda", 16),
        (2, 10_000, "cuda", 1),
        (1, 100, "cpu", 1),
    ],
)
def test_default_workers_follow_cores_and_device(
    monkeypatch: pytest.MonkeyPatch, cores: int, n_files: int, device: str, expected: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers(n_files, torch.device(device)) == expected


MB = 2**20
BATCH_64_MB = 64 * 3 * 224 * 224 * 4 / MB  # 36.75 MB of float32 per CPU batch


@pytest.mark.parametrize(
    ("shm_mb", "workers", "expected", "warns"),
    [
        (None, 8, (8, 4), False),  # no /dev/shm to measure: as asked
        (24_000, 8, (8, 4), False),  # ample
        (64, 8, (0, None), True),  # Docker's default: not one batch fits in half of it
        (256, 4, (1, 1), True),  # one batch may wait beside the two being consumed
        (700, 8, (7, 1), True),
        (64, 0, (0, None), False),  # no workers asked for: nothing to fit
    ],
)
def test_decode_workers_fit_shared_memory(shm_mb: int | None, workers: int, expected: tuple, warns: bool) -> None:
    plan = plan_loader(workers, 64, (3, 224, 224), cuda=False, shm_free=None if shm_mb is None else shm_mb * MB)
    assert (plan.workers, plan.prefetch) == expected and (plan.note is not None) == warns
    if plan.workers:
        assert (plan.workers * plan.prefetch + 2) * BATCH_64_MB <= (shm_mb or 10**9) / 2
    if warns:
        assert "/dev/shm" in plan.note and "--shm-size" in plan.note


def test_embedding_with_little_shared_memory_warns_and_gives_like_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imgcluster.pipeline as pipeline
    from imgcluster.config import EmbedConfig

    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=6)

    def embed(cache: str, shm_free: int) -> tuple[np.ndarray, list[str]]:
        monkeypatch.setattr(pipeline, "shared_memory_free", lambda: shm_free)
        warnings: list[str] = []
        config = EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(tmp_path / cache), workers=2, batch_size=8)
        return pipeline.embed_folder(config, torch.device("cpu"), pipeline.EmbedHooks(on_warning=warnings.append)).features, warnings

    ample, quiet = embed("a", 10**11)
    short, warned = embed("b", 20 * MB)  # 8 images of 224 px are 4.6 MB: no batch fits beside two in use
    assert quiet == [] and len(warned) == 1 and "decoding in the main process" in warned[0]
    assert np.allclose(ample, short, atol=1e-3)  # in-process decoding: the same up to float16 rounding


def test_a_dead_decode_worker_is_one_line_and_keeps_what_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's OOM killer takes a decode worker: DataLoader raises in the main process. The
    batches already flushed stay cached and the message says so, like an interrupted run."""
    from faults import fail_embedding_after_one_batch

    import imgcluster.pipeline as pipeline
    from imgcluster.config import EmbedConfig

    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=8)
    fail_embedding_after_one_batch(monkeypatch, RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "))
    config = EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(tmp_path / "cache"), workers=0, batch_size=4)
    with pytest.raises(ImgclusterError) as caught:
        pipeline.embed_folder(config, torch.device("cpu"))
    message = str(caught.value)
    assert "\n" not in message and "decode worker died (DataLoader worker (pid 4242) is killed by signal: Killed)" in message
    assert "4 of 8 files are saved in the cache (4 by this run)" in message and "(workers 0)" in message
    monkeypatch.undo()
    again = pipeline.embed_folder(config, torch.device("cpu"))
    assert (again.reused, again.embedded) == (4, 4)


def test_other_runtime_errors_are_not_taken_for_a_dead_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgcluster.pipeline as pipeline
    from imgcluster.config import EmbedConfig

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")
        yield

    monkeypatch.setattr(pipeline, "embed_files", broken)
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    with pytest.raises(RuntimeError, match="a bug"):
        pipeline.embed_folder(EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(tmp_path / "c")), torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"),
    reason="needs root and unshare to mount a small /dev/shm",
)
def test_small_dev_shm_does_not_hang(tmp_path: Path) -> None:
    """A real 64 MB /dev/shm (Docker's default): workers' batches used to fill it, their queue
    thread failed with a traceback and the run waited forever."""
    folder = copy_sample(tmp_path / "photos", CLASSES, per_class=30)  # 150 images: two full batches of 37 MB each
    script = (
        "mount -t tmpfs -o size=64m tmpfs /dev/shm && "
        f"{sys.executable} -m imgcluster embed {folder} --cache-dir {tmp_path / 'cache'} --workers 2 --embed-batch-size 64 --quiet"
    )
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its decode workers
        proc.communicate()
        pytest.fail("embedding with a 64 MB /dev/shm hung")
    if proc.returncode != 0 and "mount" in stderr:
        pytest.skip(f"cannot mount a tmpfs here: {stderr.strip()}")
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "too little for decode workers" in stderr


def test_small_folder_pads_to_its_own_size_and_resumes_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five images are padded to 8 forward rows, not 64; a run that finds three of them cached pads
    its remaining two to the same 8, because the size is counted over the whole folder."""
    import imgcluster.pipeline as pipeline
    from imgcluster.config import EmbedConfig

    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=5)
    seen: list[int] = []
    real = pipeline.embed_files

    def spy(files, backbone, device, batch_size=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(batch_size)
        return real(files, backbone, device, batch_size, *args, **kwargs)

    monkeypatch.setattr(pipeline, "embed_files", spy)
    config = EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(tmp_path / "cache"))
    first = pipeline.embed_folder(config, torch.device("cpu"))
    for path in sorted(folder.rglob("*.png"))[:2]:
        path.touch()
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # changed: re-embedded
    again = pipeline.embed_folder(config, torch.device("cpu"))
    assert seen == [8, 8] and again.embedded == 2 and again.reused == 3
    assert np.array_equal(first.features, again.features)  # same padding, same bits


def test_folded_backbone_matches_original(lite0: Backbone) -> None:
    cpu = torch.device("cpu")
    fast = prepare_model(lite0, cpu)
    assert fast is not lite0.model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in lite0.model.modules())  # the original is untouched
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, size=(4, 3, 224, 224)).astype(np.float32))
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            expected = lite0.model(x)
            got = fast(x.contiguous(memory_format=torch.channels_last))
            torch.set_num_threads(1)  # single-thread convs once rejected folded weights made in inference mode
            single = fast(x.contiguous(memory_format=torch.channels_last))
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(got, expected, atol=1e-4 * float(expected.abs().max()))
    assert torch.allclose(single, expected, atol=1e-4 * float(expected.abs().max()))


@cuda
def test_fold_survives_on_cuda(lite0: Backbone) -> None:
    """The fold is checked on the CPU: on a GPU, TF32 convolutions alone would fail the check."""
    gpu = torch.device("cuda")
    backbone = create_backbone("efficientnet-lite0", device=gpu)
    fast = prepare_model(backbone, gpu)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert all(p.device.type == "cuda" for p in fast.parameters())
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, size=(4, 3, 224, 224)).astype(np.float32))
    with torch.inference_mode():
        expected = lite0.model(x)  # the CPU float32 original
        got = fast(x.to(gpu).contiguous(memory_format=torch.channels_last)).cpu()
    assert (l2_normalise(got.numpy()) * l2_normalise(expected.numpy())).sum(1).min() > 0.999


def test_prepared_model_is_on_the_device_asked_for() -> None:
    """A ViT has no batch norm to fold: it is used as it is, but still moved and made channels-last."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).eval()
    backbone = Backbone("toy", BackboneSpec("toy", "toy", "toy"), model, {"input_size": (3, 8, 8)}, "toy", 144)
    prepared = prepare_model(backbone, torch.device("meta"))
    assert prepared is model and all(p.device.type == "meta" for p in prepared.parameters())


def test_fold_refuses_when_call_order_differs() -> None:
    """Registration order says conv then bn, but forward runs bn first: folding would be wrong."""

    class NormFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    model = NormFirst().eval()
    model.bn.running_mean.fill_(0.5)
    model.bn.running_var.fill_(4.0)
    assert fold_batchnorm(model, torch.randn(2, 3, 8, 8)) is model


def test_draft_size_covers_the_resize_step(lite0: Backbone) -> None:
    config = lite0.data_config
    assert draft_size_for(config) >= int(config["input_size"][-1] / config["crop_pct"])


def test_cpu_threads_restores_setting() -> None:
    before = torch.get_num_threads()
    with cpu_threads(workers=64) as threads:
        assert threads >= 1 and torch.get_num_threads() == threads
    assert torch.get_num_threads() == before


BIG = 64 * 2**20  # bytes: over glibc's largest mmap threshold (32 MB), like a batch's activations


def faults_of_big_buffers(times: int = 10) -> int:
    """Minor page faults of allocating, touching and freeing a BIG buffer ``times`` times."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        torch.empty(BIG // 4).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def huge_pages_always() -> bool:
    """With transparent huge pages on for all memory, a fresh buffer costs too few faults to tell."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


@pytest.mark.skipif(huge_pages_always(), reason="transparent huge pages hide the faults this counts")
def test_freed_large_buffers_are_reused_and_given_back_at_the_end() -> None:
    one_buffer = BIG // resource.getpagesize()
    with reuse_freed_memory() as active:
        if not active:
            pytest.skip("needs glibc's mallopt")
        faults_of_big_buffers(20)  # the heap grows until a buffer fits among what is free
        inside = faults_of_big_buffers()
        kept = resident_bytes()
    assert inside < 2 * one_buffer  # ten buffers, at most one of them faulted in again (not ten)
    assert kept - resident_bytes() > BIG // 2  # on leaving, the heap kept for reuse goes back


def test_cpu_embedding_runs_inside_reuse_freed_memory(tmp_path: Path, lite0: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    state: list[str] = []

    @contextlib.contextmanager
    def spy() -> Iterator[bool]:
        state.append("entered")
        yield True
        state.append("left")

    monkeypatch.setattr(embedding, "reuse_freed_memory", spy)
    files = list_images(copy_sample(tmp_path / "photos", CLASSES[:1], per_class=4))
    seen = []
    for _ in embed_files(files, lite0, torch.device("cpu"), batch_size=2, workers=0):
        seen.append(list(state))
    assert seen == [["entered"], ["entered"]]  # every forward pass ran inside it
    assert state == ["entered", "left"]


@cuda
def test_compiled_cuda_embedding_matches_eager(tmp_path: Path, lite0: Backbone) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=5)  # 10 images: a ragged last batch
    files = list_images(folder)
    gpu = torch.device("cuda")
    backbone = create_backbone("efficientnet-lite0", device=gpu)

    def run(compiled: bool) -> np.ndarray:
        out = np.zeros((len(files), backbone.feature_dim), np.float32)
        for batch in embed_files(files, backbone, gpu, batch_size=4, workers=0, compile_model=compiled):
            out[batch.indices] = batch.features
        return out

    eager, compiled = run(False), run(True)
    cos = (l2_normalise(eager) * l2_normalise(compiled)).sum(1)
    assert cos.min() > 0.99


def test_the_c_library_is_looked_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``find_library`` forks the process for ``ldconfig -p``; a cold ``assign`` did it three times, at 0.9 GB."""
    import ctypes.util

    from imgcluster import speed

    getattr(speed._glibc, "cache_clear", lambda: None)()  # a fresh look-up
    looked: list[str] = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: looked.append(name) or real(name))
    for _ in range(3):
        with reuse_freed_memory():
            pass
    assert looked == ["c"]
