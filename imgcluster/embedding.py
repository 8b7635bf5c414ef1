"""Turn image files into feature vectors with a backbone, in batches, in parallel workers."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imgcluster.backbones import Backbone
from imgcluster.listing import ImageFile, stat_key
from imgcluster.load import DecodeTimeout, ImageDecodeError, decode_timeout, load_image, time_limit
from imgcluster.progress import BATCH_DECODED, MODEL_READY
from imgcluster.speed import cpu_threads, fold_batchnorm, has_batchnorm, reuse_freed_memory, worker_threads_init

MAX_ASPECT = 16  # longer side / shorter side kept before resizing; see limit_aspect

Item = tuple[int, "torch.Tensor | None", "str | None", "Seen | None"]


def limit_aspect(image: Image.Image, max_ratio: int = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side of extreme slivers to ``max_ratio`` times the short side.

    The model's transform scales the *short* side up to ~256 px: a 1×100,000 strip would become
    256×25,600,000 pixels (20 GB) before the centre crop threw nearly all of it away. Ordinary
    photos and panoramas (up to 16:1) are left alone, so their features do not change.
    """
    w, h = image.size
    short = max(1, min(w, h))
    if max(w, h) <= max_ratio * short:
        return image
    keep = max_ratio * short
    if w > h:
        left = (w - keep) // 2
        return image.crop((left, 0, left + keep, h))
    top = (h - keep) // 2
    return image.crop((0, top, w, top + keep))


def _stat(path: Path, when: str) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageDecodeError(f"file disappeared {when}") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot stat: {exc.strerror or exc}") from None
    return stat_key(st)


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: what ``rehash`` compares when stat cannot be trusted."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    except FileNotFoundError:
        raise ImageDecodeError("file disappeared before it could be read") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or exc}") from None


Seen = tuple[tuple[int, int, int, int], str]  # (size, mtime_ns, ctime_ns, inode) and SHA-256, as decoded


class ImageDataset(Dataset):
    """Decodes and preprocesses one file; failures travel as reasons, never as exceptions.

    The file is stat'ed before and after it is hashed and decoded: one that changed meanwhile
    is skipped (the pixels may mix two versions); one that changed since the scan but held
    still while read is embedded, and the stat and hash it was read with are returned, so the
    cache records the version that was actually embedded.
    """

    def __init__(self, files: list[ImageFile], transform: Callable, draft_size: int | None, timeout: float | None = None) -> None:
        self.files = files
        self.transform = transform
        self.draft_size = draft_size
        self.grey = isinstance(transform, PixelSteps) and transform.takes_grey  # grey pictures may stay grey until the transform's end
        self.timeout = decode_timeout() if timeout is None else timeout

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        file = self.files[i]
        try:
            with time_limit(self.timeout):
                before = _stat(file.path, "before it could be read")
                digest = content_hash(file.path)
                image = load_image(file.path, self.draft_size, grey=self.grey)
                after = _stat(file.path, "while it was read")
                if after != before:
                    return i, None, "changed while it was read; run again to embed it", None
                tensor = self.transform(limit_aspect(image))
            return i, tensor, None, (after, digest)
        except DecodeTimeout:
            return i, None, f"decoding took longer than {self.timeout:g} s (the per-file limit, $IMGCLUSTER_DECODE_TIMEOUT)", None
        except ImageDecodeError as exc:
            return i, None, str(exc), None
        except Exception as exc:  # noqa: BLE001 - a transform failing on one odd image must not stop the run
            return i, None, f"cannot preprocess: {type(exc).__name__}: {exc}", None


def _collate(items: list[Item]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]], dict[int, Seen]]:
    ok = [(i, t) for i, t, _, _ in items if t is not None]
    failed = [(i, reason) for i, t, reason, _ in items if t is None and reason is not None]
    seen = {i: s for i, t, _, s in items if t is not None and s is not None}
    tensor = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensor, failed, seen


@dataclass
class EmbeddedBatch:
    indices: list[int]  # positions in the ``files`` list given to :func:`embed_files`
    features: np.ndarray  # [len(indices), d] float32
    failures: list[tuple[int, str]]  # (position, reason)
    seen: dict[int, Seen] = field(default_factory=dict)  # position -> stat and content hash when decoded


def compute_precision(device: torch.device) -> str:
    """The precision features are computed in: bfloat16 autocast on CUDA, float32 elsewhere."""
    return "bfloat16" if device.type == "cuda" else "float32"


CPU_BATCH = 8  # images of 224x224 per CPU forward pass; see default_batch_size
CPU_BATCH_PIXELS = CPU_BATCH * 224 * 224


def default_batch_size(device: torch.device, n_files: int | None = None, input_size: tuple[int, ...] | None = None) -> int:
    """Images per forward pass: a GPU needs large batches to stay busy; the CPU is as busy with 8.

    On the CPU a batch's activations are the process's largest allocation, and they grow with the
    batch: EfficientNet-Lite0 at 224 px held about 17 MB more RSS per image in the batch (135 MB
    with 8, 280 MB with 16) at the same CPU time per image (15.5-16.7 ms with 8 or 16; 4 cost 10 %
    more), so 8 keeps a cold run of sample_data under 1 GB (``benchmarks/results_memory.md``).
    ``input_size`` (C, H, W) scales that to the same pixels per pass for larger inputs (fewer
    images) and smaller ones (more, at most 16). Every forward pass is padded to this size (see
    ``embed_files``), so a folder smaller than it gets its own size rounded up to a multiple of 8
    instead. ``n_files`` is the whole folder, not what is left to embed, so a resumed run pads the
    same.
    """
    if device.type == "cuda":
        full = 256
    else:
        pixels = math.prod(input_size[-2:]) if input_size else 224 * 224
        full = max(1, min(16, CPU_BATCH_PIXELS // pixels))
    if n_files is None:
        return full
    return min(full, folder_batch(n_files))


def folder_batch(n_files: int) -> int:
    """The largest batch worth padding to for a folder of ``n_files``: its size rounded up to 8."""
    return 8 * -(-max(n_files, 1) // 8)


def default_workers(n_files: int, device: torch.device | None = None) -> int:
    """One decode process per core but one, at most 8 on the CPU (the model needs cores too) and
    16 with CUDA, where decoding is all the CPU does: on an H100 with 16 cores, 15 workers embedded
    20,000 JPEGs at 3,210 images/s against 1,980 with 8 (``benchmarks/results_speed_gpu.md``).
    The cap bounds shared memory: each worker holds up to two batches in flight."""
    if n_files < 64:
        return 0  # starting worker processes costs more than decoding a handful of images
    cap = 16 if device is not None and device.type == "cuda" else 8
    return max(1, min(cap, (os.cpu_count() or 2) - 1))


def default_prefetch(cuda: bool) -> int:
    """Batches in flight per decode worker: CUDA batches are 4x larger, so two there hold the same
    shared memory as four on the CPU."""
    return 2 if cuda else 4


def shared_memory_free() -> int | None:
    """Free bytes in /dev/shm, through which decode workers hand their batches over; None where
    there is no such folder (macOS, Windows), where the limit is not a folder's size."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return None


@dataclass(frozen=True)
class LoaderPlan:
    """Decode workers and batches in flight per worker, fitted to the shared memory there is."""

    workers: int
    prefetch: int | None  # DataLoader's prefetch_factor; None without workers
    note: str | None = None  # why fewer workers than asked for, for the user


def plan_loader(workers: int, batch_size: int, input_size: tuple[int, ...], cuda: bool, shm_free: int | None) -> LoaderPlan:
    """Fit the decode workers to /dev/shm. Each batch a worker has ready sits there, as uint8 pixels
    for timm's transforms (``split_transform``) but planned here as float32, what any other
    transform hands over (256 images of 3x224x224 are 147 MB); when it fills up, the worker's queue thread fails and the
    run hangs. Containers often have little (Docker's default is 64 MB), so the batches in flight,
    plus two being consumed, are kept under half of what is free, with fewer workers or, below
    one batch, none (decoding in the main process: slower, same features)."""
    if workers == 0:
        return LoaderPlan(0, None)
    prefetch = default_prefetch(cuda)
    if shm_free is None:
        return LoaderPlan(workers, prefetch)
    batch_bytes = batch_size * math.prod(input_size) * 4
    slots = shm_free // 2 // batch_bytes - 2  # batches that may wait in workers' queues
    if slots >= workers * prefetch:
        return LoaderPlan(workers, prefetch)
    free_mb = shm_free // 2**20
    need_gb = math.ceil(2 * (workers * prefetch + 2) * batch_bytes / 2**30)
    advice = f"{workers} workers would need about {need_gb} GB there (docker run --shm-size={need_gb}g), or lower {{embed_batch_size}}"
    if slots < 1:
        return LoaderPlan(
            0, None, f"only {free_mb} MB free in /dev/shm, too little for decode workers; decoding in the main process (slower): {advice}"
        )
    fitted = min(workers, slots)
    note = None
    if fitted < workers:
        note = f"only {free_mb} MB free in /dev/shm: {fitted} decode worker(s) instead of {workers}; {advice}"
    return LoaderPlan(fitted, max(1, min(prefetch, slots // fitted)), note)


class PixelTable:
    """uint8 pixels to the model's normalised floats, looked up in a table of each channel's 256 values.

    The table is made by the very operations it replaces (``/ 255``, ``- mean``, ``/ std``: each
    element on its own), so a looked-up float is bit for bit the computed one. A lookup is one
    pass over the batch in numpy and starts no torch threads. The ONNX sessions convert their
    batches in threads of their own, where torch ran the operations on an OpenMP team of two
    threads per session: 8 images of 224 px took 8.5-13 ms of CPU that way under load, against
    1.6-1.9 ms by table (0.7-1.1 ms for torch on one thread, which a session's thread cannot be
    given alone; ``benchmarks/results_runtime.md``, section ``embed-steps``). Tensors on another
    device (CUDA) are computed there, as before.
    """

    def __init__(self, normalise: Callable[[torch.Tensor], torch.Tensor], channels: int) -> None:
        self.normalise = normalise
        values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256, 1).expand(1, channels, 256, 1)
        self.table = self.compute(values)[0, :, :, 0].numpy().copy()  # [channels, 256]

    def compute(self, pixels: torch.Tensor) -> torch.Tensor:
        """The operations the table holds, run on ``pixels``."""
        return cast(torch.Tensor, self.normalise(pixels.to(torch.float32).div(255)))

    def array(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [N, C, H, W] as contiguous float32."""
        out = np.empty(pixels.shape, np.float32)
        for c in range(pixels.shape[1]):
            np.take(self.table[c], pixels[:, c], out=out[:, c])
        return out

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.device.type != "cpu" or pixels.dim() != 4 or pixels.shape[1] != self.table.shape[0] or pixels.dtype != torch.uint8:
            return self.compute(pixels)
        return torch.from_numpy(self.array(pixels.numpy()))


class PixelSteps:
    """The per-image steps of a split transform, ending in uint8 pixels [3, H, W]; an 8-bit grey
    picture goes through them as it is and its one channel is repeated at the end, when every
    step is a resize or a centre crop.

    Pillow resizes each channel alike, with the same fixed-point weights, a crop moves pixels as
    they are, and grey to RGB repeats the grey, so repeating it afterwards gives the same pixels
    (checked on 1,800 random sizes and six filters) for a third of the resizing and no conversion:
    a 28 px image resized to 256 px took 0.25 ms grey against 0.60 as RGB, and converting and
    copying the 224 px crop to a tensor 0.36 ms against 0.08. Other pictures, and other steps, go
    through as RGB.
    """

    def __init__(self, steps: list[Callable]) -> None:
        from timm.data.transforms import MaybePILToTensor, ResizeKeepRatio
        from torchvision import transforms as tv  # type: ignore[import-untyped]

        self.steps = steps
        self.to_tensor = MaybePILToTensor()
        self.takes_grey = all(isinstance(step, tv.Resize | tv.CenterCrop | ResizeKeepRatio) for step in steps)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB" and not (self.takes_grey and image.mode == "L"):
            image = image.convert("RGB")
        for step in self.steps:
            image = step(image)
        if image.mode == "L":
            return cast(torch.Tensor, self.to_tensor(image)).expand(3, -1, -1)  # [1, H, W] seen as [3, H, W]
        return cast(torch.Tensor, self.to_tensor(image.convert("RGB") if image.mode != "RGB" else image))


def split_transform(transform: Callable) -> tuple[Callable, Callable[[torch.Tensor], torch.Tensor] | None]:
    """Split a timm eval transform into a per-image part that ends in uint8 pixels and a batch part
    that turns them into the model's normalised floats; ``(transform, None)`` when it does not end
    in to-tensor + normalise.

    Decode workers hand their batches to the main process through shared memory, so uint8 moves a
    quarter of float32's bytes (and page faults). The batch part gives the floats of the same
    element-wise operations as the per-image steps it replaces (``/ 255``, ``- mean``, ``/ std``;
    :class:`PixelTable`), so they are bit for bit the ones the whole transform gives.
    """
    from timm.data.transforms import MaybeToTensor
    from torchvision import transforms as tv

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], MaybeToTensor | tv.ToTensor) or not isinstance(steps[-1], tv.Normalize):
        return transform, None
    normalise = steps[-1]
    return PixelSteps(steps[:-2]), PixelTable(normalise, len(normalise.mean))


def draft_size_for(data_config: dict) -> int:
    """The smallest side the resize step needs, so JPEG decoding can skip the rest."""
    size = max(data_config["input_size"][1:])
    return math.ceil(size / data_config.get("crop_pct", 1.0))


def embed_files(
    files: list[ImageFile],
    backbone: Backbone,
    device: torch.device,
    batch_size: int | None = None,
    workers: int | None = None,
    compile_model: bool = False,
    prefetch: int | None = None,
    on_mark: Callable[[str, str], None] = lambda stage, message: None,
    onnx_model: Path | None = None,
) -> Iterator[EmbeddedBatch]:
    """Yield features batch by batch; decoding runs in ``workers`` processes beside the model,
    each with ``prefetch`` batches in flight (default: as ``plan_loader`` says with ample memory).
    ``on_mark(stage, message)`` hears the moments that split the time: the model ready, each batch decoded.
    ``onnx_model`` (an exported backbone, CPU only) runs the forward passes in ONNX Runtime instead of torch,
    on as many threads as torch would get.

    ``compile_model`` applies ``torch.compile`` on CUDA only (on the CPU compiling costs minutes
    and needs a C++ compiler, for little gain on one folder).
    """
    from timm.data import create_transform

    per_image, to_floats = split_transform(create_transform(**backbone.data_config, is_training=False))
    dataset = ImageDataset(files, per_image, draft_size_for(backbone.data_config))
    workers = default_workers(len(files), device) if workers is None else workers
    batch_size = batch_size or default_batch_size(device, input_size=tuple(backbone.data_config["input_size"]))
    if not files:
        return
    cuda = device.type == "cuda"
    group = handover_group(workers, cuda, to_floats is not None)
    loader = DataLoader(
        dataset,
        batch_size=batch_size * group,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
        persistent_workers=False,
        prefetch_factor=(prefetch or default_prefetch(cuda)) if workers > 0 else None,
        worker_init_fn=worker_threads_init if workers > 0 else None,
    )
    batches = _model_batches(loader, batch_size) if group > 1 else loader
    bf16 = compute_precision(device) == "bfloat16"
    with contextlib.ExitStack() as stack:
        threads = 0
        if not cuda:
            threads = stack.enter_context(cpu_threads(workers))
            stack.enter_context(reuse_freed_memory())
        if onnx_model is not None and (streams_count := onnx_streams(threads, len(files), batch_size)) > 1:
            streams = stack.enter_context(_onnx_streams(onnx_model, streams_count, to_floats, batch_size))
            on_mark("model", MODEL_READY)
            stack.enter_context(torch.inference_mode())
            yield from _in_order(batches, streams, IN_FLIGHT_PER_STREAM * threads, backbone.feature_dim, on_mark)
            return
        run_model = _forward(backbone, device, compile_model, onnx_model, threads, bf16, to_floats, batch_size)
        on_mark("model", MODEL_READY)
        stack.enter_context(torch.inference_mode())
        for indices, tensor, failures, seen in batches:
            on_mark("embed", BATCH_DECODED)
            if tensor is None:
                yield EmbeddedBatch([], np.zeros((0, backbone.feature_dim), np.float32), failures, seen)
                continue
            yield EmbeddedBatch(indices, run_model(tensor), failures, seen)


HANDOVER_GROUP = 4  # forward passes' worth of images a decode worker hands over at once on the CPU; see handover_group


def handover_group(workers: int, cuda: bool, uint8: bool) -> int:
    """Forward passes' worth of images in one batch from a decode worker.

    Each handover costs both processes a pickle, a new shared-memory block and a few handshakes
    over a socket to pass its descriptor, each waiting for a core while the model and the worker
    keep both busy; 8 images of 28 px decode in less time than that takes on the 2-core machine.
    Four forward passes a handover do that a quarter as often. Only on the CPU, with workers, and
    for uint8 pixels: a group of four uint8 batches takes the shared memory that ``plan_loader``
    plans for one float32 batch, so the plan holds. The model still sees batches of its own size.
    """
    return HANDOVER_GROUP if workers > 0 and not cuda and uint8 else 1


def _model_batches(
    loader: Iterable[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], dict[int, Seen]]], batch_size: int
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], dict[int, Seen]]]:
    """The loader's batches cut into forward passes of ``batch_size`` decoded images, in order; a
    batch's failures travel with its first pass."""
    for indices, tensor, failures, seen in loader:
        if tensor is None or len(indices) <= batch_size:
            yield indices, tensor, failures, seen
            continue
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            yield part, tensor[start : start + batch_size], failures if start == 0 else [], {i: seen[i] for i in part if i in seen}


# Batches handed to the ONNX sessions and not yet handed on, per session. With one per session, a
# session that finished its batch while the main thread waited for the oldest one, or for the
# decode worker's next batch (a few handshakes between the two processes, each waiting for a
# core while the sessions and the worker keep both busy), had nothing to do until both were back.
# Two per session keeps one queued for each; the pixels of a queued batch are 1.2 MB of uint8.
IN_FLIGHT_PER_STREAM = 2


ONE_SESSION_PASSES = 32  # forward passes (256 images in batches of 8) up to which one ONNX session runs them; see onnx_streams


def onnx_streams(threads: int, images: int, batch_size: int) -> int:
    """ONNX Runtime sessions for ``images``: one a thread (:func:`_onnx_streams`) over many forward passes, one
    on all the threads over a few.

    Each session keeps an arena for one pass's activations. On sample_data's 125 images (16 passes) under
    ``onnx-int8`` the second session's arena made the forward passes the run's peak, 1,061 MB RSS, against 917 MB
    with one session (``benchmarks/results_memory.md``); a few passes gain little from going at two paces.
    """
    return threads if -(-images // batch_size) > ONE_SESSION_PASSES else 1


@contextlib.contextmanager
def _onnx_streams(
    onnx_model: Path, streams: int, to_floats: Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int
) -> Iterator[Callable[[torch.Tensor], Future[np.ndarray]]]:
    """``streams`` one-thread ONNX Runtime sessions, each running whole batches side by side.

    One session's threads meet after each of EfficientNet-Lite0's ~100 small operators, so while a
    decode worker holds one core the other thread waits. Two one-thread sessions on alternate
    batches each go at their own pace: a cold int8 ``assign`` of 10,000 images took 68.6 and 69.1 s
    of wall time against 84.2 and 75.1 s with one session (two rounds, in turn, load 0.9-2.0;
    ``benchmarks/results_runtime.md``). Leaving, it waits for the batches still running (never
    more than ``streams``) and drops those not started.
    """
    from concurrent.futures import ThreadPoolExecutor
    from queue import SimpleQueue

    from imgcluster.onnxruntime_backend import run, session

    idle: SimpleQueue[object] = SimpleQueue()
    for _ in range(streams):
        idle.put(session(onnx_model, 1))
    cpu = torch.device("cpu")

    def one(pixels: torch.Tensor) -> np.ndarray:
        model = idle.get()
        try:
            with torch.inference_mode():
                return run(model, _padded(pixels, to_floats, batch_size, cpu).numpy())[: pixels.shape[0]]
        finally:
            idle.put(model)

    pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="imgcluster-onnx")
    try:
        yield lambda pixels: pool.submit(one, pixels)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(
    loader: Iterable[tuple[list[int], torch.Tensor | None, list[tuple[int, str]], dict[int, Seen]]],
    submit: Callable[[torch.Tensor], Future[np.ndarray]],
    depth: int,
    feature_dim: int,
    on_mark: Callable[[str, str], None],
) -> Iterator[EmbeddedBatch]:
    """The loader's batches through ``submit``, ``depth`` of them in flight, yielded in the loader's order:
    a batch is handed on (and can be saved) only once every batch before it is."""
    pending: deque[tuple[list[int], Future[np.ndarray] | None, list[tuple[int, str]], dict[int, Seen]]] = deque()

    def done() -> EmbeddedBatch:
        indices, future, failures, seen = pending.popleft()
        features = np.zeros((0, feature_dim), np.float32) if future is None else future.result()
        return EmbeddedBatch(indices, features, failures, seen)

    for indices, tensor, failures, seen in loader:
        on_mark("embed", BATCH_DECODED)
        pending.append((indices, None if tensor is None else submit(tensor), failures, seen))  # no tensor, no indices
        while len(pending) > depth or (pending and pending[0][1] is None):
            yield done()
    while pending:
        yield done()


def _padded(
    pixels: torch.Tensor, to_floats: Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int, device: torch.device
) -> torch.Tensor:
    """A decoded batch (uint8 pixels when ``to_floats`` is given) as the model's input, always of one shape.

    The CPU kernels for a batch of 1 round differently from larger ones (measured with
    EfficientNet-Lite0), and a resumed or incremental run groups images differently, so without
    padding its features could differ in the last bits; a ragged last batch would also recompile a
    compiled model.
    """
    n = pixels.shape[0]
    tensor = pixels.to(device, non_blocking=True)
    if to_floats is not None:
        tensor = to_floats(tensor)
    if n < batch_size:
        tensor = torch.cat([tensor, tensor.new_zeros((batch_size - n, *tensor.shape[1:]))])
    return tensor


def forward(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    to_floats: Callable[[torch.Tensor], torch.Tensor] | None,
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> np.ndarray:
    """One torch forward pass over a decoded batch, as float32 features; shared by the
    single-machine loop and the Ray engine's actors. Call it inside ``torch.inference_mode()``."""
    x = _padded(pixels, to_floats, batch_size, device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    return cast(np.ndarray, out[: pixels.shape[0]].float().cpu().numpy())


def _forward(
    backbone: Backbone,
    device: torch.device,
    compile_model: bool,
    onnx_model: Path | None,
    threads: int,
    bf16: bool,
    to_floats: Callable[[torch.Tensor], torch.Tensor] | None,
    batch_size: int,
) -> Callable[[torch.Tensor], np.ndarray]:
    """The model as a function from a decoded batch to float32 features, in torch or ONNX Runtime."""
    if onnx_model is not None:
        from imgcluster.onnxruntime_backend import run, session

        ort_session = session(onnx_model, threads)
        return lambda pixels: run(ort_session, _padded(pixels, to_floats, batch_size, device).numpy())[: pixels.shape[0]]
    from imgcluster.kept import of_backbone

    model = of_backbone(backbone, device).model  # kept for the naming pass of the same call
    if compile_model and device.type == "cuda":
        model = cast(torch.nn.Module, torch.compile(model, dynamic=False))
    return lambda pixels: forward(model, pixels, to_floats, batch_size, device, bf16)


def prepare_model(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """The backbone as it runs here: batch norm folded into convolutions, channels-last memory.

    Both are exact up to rounding and speed up convolutional backbones on the CPU as well as on
    CUDA (numbers in ``benchmarks/results_speed.md``). Folding works on a copy; a model without
    batch norm is used as it is, only its memory format changes.

    The fold is checked on the CPU in float32 whatever the device: cuDNN's default TF32
    convolutions on recent GPUs alone differ from float32 by more than the check's tolerance,
    which would reject every fold there.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    model = backbone.model
    if has_batchnorm(model):
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn((1, *backbone.data_config["input_size"]), generator=generator)
        model = fold_batchnorm(model.cpu(), probe)
    return model.to(device).to(memory_format=torch.channels_last)
