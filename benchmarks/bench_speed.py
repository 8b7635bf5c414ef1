"""`make bench-speed`: how fast imgcluster embeds, and how it scales to large folders.

(a) Embed throughput of efficientnet-lite0 on the CPU over Fashion-MNIST PNGs (28 px) and the same
    images as 512-px JPEGs: the project's embed path (fresh cache each time) against a plain
    reference pipeline written here (PIL + torchvision transforms + a DataLoader with default
    settings and batch 64 + float32, same weights). The two run interleaved on the same files,
    ABBA order, so load from other processes hits both alike.
(b) Synthetic scale: random unit features (d=384) for N = 10k, 100k, 1M; wall time and peak RSS of
    kNN mining, head training (default objective, few epochs) and streaming assignment; each N in
    its own process so peaks are per stage; fitted scaling exponents.
(c) With CUDA: both pipelines again on the GPU for efficientnet-lite0 and a random-weight DINOv2
    ViT-S/14 (saved as a weights file, so both load it as a user's `--weights FILE`), with
    nvidia-smi utilisation and the same stage breakdown; head training on 50,000 x 384 features;
    kNN on 1M x 384. `--smoke-gpu-section` runs (c) on the CPU at toy sizes, only to check it runs.

Writes the markdown it prints to ``benchmarks/results_speed.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import machine, write_section  # noqa: E402
from datasets import FASHION_CLASSES, fashion_mnist_folder, fashion_mnist_test, write_folder  # noqa: E402

import imgcluster.embedding as embed_module  # noqa: E402
from imgcluster.backbones import Backbone, create_backbone  # noqa: E402
from imgcluster.cache import EmbeddingCache  # noqa: E402
from imgcluster.config import EmbedConfig, TrainConfig  # noqa: E402
from imgcluster.embedding import default_batch_size, default_workers, draft_size_for  # noqa: E402
from imgcluster.load import load_rgb  # noqa: E402
from imgcluster.pipeline import EmbedHooks, embed_folder  # noqa: E402

DATA = HERE / "data"
RESULTS = HERE / "results_speed.md"
MODEL = "efficientnet-lite0"
BATCH = 64
RESULT_PREFIX = "RESULT "  # lines a scale worker prints for the parent


# ---- (a) embed throughput -------------------------------------------------------------------------
@dataclass
class Run:
    """One pipeline over one part of a folder."""

    images: int
    wall: float
    cpu: float  # user + system seconds of this process and its reaped children (decode workers)
    stages: dict[str, float] = field(default_factory=dict)


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def image_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg") and not any(s.startswith(".") for s in p.parts))


def warm_page_cache(folder: Path) -> None:
    """Read every file once so neither pipeline pays for the disk."""
    for path in image_paths(folder):
        path.read_bytes()


def fill_once(folder: Path, files: Iterable[tuple[Path, Path]], link: bool = False) -> Path:
    """Copy (or hard-link) each ``(source, relative path)`` into ``folder``, once: a finished
    folder is marked ``.complete`` and later runs reuse it."""
    if not (folder / ".complete").exists():
        for src, rel in files:
            dst = folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                continue
            if link:
                with contextlib.suppress(OSError):  # another file system: copy instead
                    os.link(src, dst)
                    continue
            shutil.copy2(src, dst)
        (folder / ".complete").write_text("ok\n")
    return folder


def first_pngs(n: int) -> list[tuple[Path, Path]]:
    """The first ``n`` Fashion-MNIST test PNGs of the benchmark folder, each with its path under a class folder."""
    source = fashion_mnist_folder(DATA / "fashion-mnist-test")
    pngs = sorted(source.rglob("*.png"), key=lambda p: p.name)[:n]
    return [(src, Path(src.parent.name, src.name)) for src in pngs]


def announced(run: Run, label: str) -> Run:
    """Print a run's images/s as it finishes: progress for whoever watches a long benchmark."""
    print(f"  {label}: {run.images / run.wall:.1f} images/s", flush=True)
    return run


def in_abba_order(keys: list[K], run: Callable[[K], Run], samplers: dict[K, GpuSampler] | None = None) -> dict[K, list[Run]]:
    """Each of ``keys`` run twice, in A B B A order, so a drift over the runs (a warming cache, a
    busy neighbour) falls on every key alike; ``samplers`` watch the GPU during each key's runs."""
    runs: dict[K, list[Run]] = {k: [] for k in keys}
    for k in [*keys, *reversed(keys)]:
        with samplers[k].running() if samplers else contextlib.nullcontext():
            runs[k].append(run(k))
    return runs


def prepare_folders(n: int, parts: int) -> dict[str, list[Path]]:
    """The first ``n`` Fashion-MNIST test images as PNG (copied from the benchmark folder) and as
    512-px JPEG, each split into ``parts`` sub-folders of equal size."""
    pngs = first_pngs(n)
    images, labels = fashion_mnist_test()
    bounds = np.linspace(0, n, parts + 1).astype(int)
    out: dict[str, list[Path]] = {"PNG 28 px": [], "JPEG 512 px": []}
    for part, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        png_dir = fill_once(DATA / "speed" / f"png-{n}-{parts}" / f"part{part}", pngs[lo:hi])
        jpg_dir = write_folder(
            images[lo:hi], labels[lo:hi], FASHION_CLASSES, DATA / "speed" / f"jpg512-{n}-{parts}" / f"part{part}", "jpg", 512
        )
        out["PNG 28 px"].append(png_dir)
        out["JPEG 512 px"].append(jpg_dir)
    return out


def reference_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """torchvision's plain eval transform with the model's own data config (as timm builds it)."""
    from torchvision import transforms as T

    size = data_config["input_size"][-1]
    interpolation = T.InterpolationMode(data_config["interpolation"])
    return T.Compose(
        [
            T.Resize(math.floor(size / data_config["crop_pct"]), interpolation=interpolation),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(data_config["mean"], data_config["std"]),
        ]
    )


class ReferenceDataset(Dataset):
    """PIL open + convert RGB + transform, timing both steps (in-process: num_workers=0)."""

    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = paths
        self.transform = transform
        self.decode = 0.0
        self.preprocess = 0.0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        t0 = time.perf_counter()
        image = Image.open(self.paths[i]).convert("RGB")
        t1 = time.perf_counter()
        x = self.transform(image)
        self.decode += t1 - t0
        self.preprocess += time.perf_counter() - t1
        return x


@dataclass(frozen=True)
class Model:
    """A backbone both pipelines build the same way: a project model name and an optional weights file."""

    label: str
    name: str
    weights: str | None = None


LITE0 = Model(MODEL, MODEL)
K = TypeVar("K")  # what in_abba_order compares: worker counts, batch policies


def random_vit() -> Model:
    """DINOv2 ViT-S/14 at 224 px with random weights, saved as a weights file: the default model's
    cost without a download, through the same ``--weights FILE`` path a user would take."""
    path = DATA / "speed" / "vit_small_patch14_dinov2-random.safetensors"
    if not path.exists():
        import timm
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Model("vit_small_patch14_dinov2 (random weights)", "dinov2-vits14", str(path))


def run_reference(folder: Path, device: torch.device, model_spec: Model = LITE0) -> Run:
    start, cpu0 = time.perf_counter(), cpu_seconds()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False  # torch's default; ours turns it on, and it is process-wide
    backbone = create_backbone(model_spec.name, model_spec.weights, device=device)
    model = backbone.model
    dataset = ReferenceDataset(image_paths(folder), reference_transform(backbone.data_config))
    loader = DataLoader(dataset, batch_size=BATCH)  # every other setting at its default: num_workers=0
    setup = time.perf_counter() - start
    features, model_s = [], 0.0
    with torch.no_grad():
        for x in loader:
            t = time.perf_counter()
            out = model(x.to(device))
            features.append(out.float().cpu().numpy())
            model_s += time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "features.npy", np.concatenate(features))
    write = time.perf_counter() - t
    wall = time.perf_counter() - start
    stages = {"setup": setup, "decode": dataset.decode, "preprocess": dataset.preprocess, "model": model_s, "write": write}
    stages["other"] = wall - sum(stages.values())
    return Run(len(dataset), wall, cpu_seconds() - cpu0, stages)


@contextlib.contextmanager
def timed_embed_path(timers: dict[str, float]) -> Iterator[None]:
    """Time the model's forward passes and the cache writes inside the project's embed path."""
    original_prepare = embed_module.prepare_model
    original_add, original_compact = EmbeddingCache.add, EmbeddingCache.compact
    depth = [0]

    def prepare(backbone: Backbone, device: torch.device) -> torch.nn.Module:
        t = time.perf_counter()
        model = original_prepare(backbone, device)
        timers["fold"] += time.perf_counter() - t
        started: list[float] = []

        def before(module: torch.nn.Module, args: Any) -> None:
            started.append(time.perf_counter())

        def after(module: torch.nn.Module, args: Any, output: Any) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            timers["model"] += time.perf_counter() - started.pop()

        model.register_forward_pre_hook(before)
        model.register_forward_hook(after)
        return model

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: EmbeddingCache, *args: Any) -> Any:
            depth[0] += 1
            t = time.perf_counter()
            try:
                return method(self, *args)  # compact returns why it could not compact
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # compact calls add: count the outer call only
                    timers["write"] += time.perf_counter() - t

        return timed

    embed_module.prepare_model = prepare
    EmbeddingCache.add, EmbeddingCache.compact = wrap(original_add), wrap(original_compact)
    try:
        yield
    finally:
        embed_module.prepare_model = original_prepare
        EmbeddingCache.add, EmbeddingCache.compact = original_add, original_compact


def run_ours(
    folder: Path, device: torch.device, model_spec: Model = LITE0, workers: int | None = None, batch_size: int | None = None
) -> Run:
    """The project's embed path with its defaults (batch sized to the device: 64 CPU, 256 CUDA)."""
    timers = {"fold": 0.0, "model": 0.0, "write": 0.0}
    marks: dict[str, float] = {}
    hooks = EmbedHooks(on_start=lambda todo, reused: marks.setdefault("start", time.perf_counter()))
    with tempfile.TemporaryDirectory() as cache, timed_embed_path(timers):
        config = EmbedConfig(
            str(folder), model=model_spec.name, weights=model_spec.weights, cache_dir=cache, workers=workers, batch_size=batch_size
        )
        start, cpu0 = time.perf_counter(), cpu_seconds()
        result = embed_folder(config, device, hooks)
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu0
    assert result.embedded == len(image_paths(folder)) and not result.skipped
    stages = {"setup": marks["start"] - start + timers["fold"], "model": timers["model"], "write": timers["write"]}
    stages["decode wait"] = wall - sum(stages.values())  # main process waiting on decode workers, plus loop overhead
    return Run(result.embedded, wall, cpu, stages)


def per_image_costs(folder: Path, sample: int = 200) -> dict[str, float]:
    """Milliseconds per image of each decode/preprocess step, one process, one thread: the CPU
    work behind the pipelined numbers (ours runs it in decode workers beside the model)."""
    from timm.data import create_transform

    backbone = create_backbone(MODEL)
    paths = image_paths(folder)[:sample]
    ours_transform = create_transform(**backbone.data_config, is_training=False)
    ref_transform = reference_transform(backbone.data_config)
    draft = draft_size_for(backbone.data_config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs = {"ref decode": 0.0, "ref preprocess": 0.0, "ours decode": 0.0, "ours preprocess": 0.0}
    try:
        for path in paths:
            t0 = time.perf_counter()
            image = Image.open(path).convert("RGB")
            t1 = time.perf_counter()
            ref_transform(image)
            t2 = time.perf_counter()
            ours = load_rgb(path, draft)
            t3 = time.perf_counter()
            ours_transform(ours)
            t4 = time.perf_counter()
            costs["ref decode"] += t1 - t0
            costs["ref preprocess"] += t2 - t1
            costs["ours decode"] += t3 - t2
            costs["ours preprocess"] += t4 - t3
    finally:
        torch.set_num_threads(threads)
    return {k: 1000 * v / len(paths) for k, v in costs.items()}


def warm_up(folder: Path, device: torch.device, model_spec: Model = LITE0, images: int = 16) -> None:
    """Run both pipelines once on a few images, untimed: the first run of either would otherwise
    pay for importing timm, torchvision and the weights package (and on a GPU for the CUDA context)."""
    with tempfile.TemporaryDirectory() as tmp:
        for src in image_paths(folder)[:images]:
            target = Path(tmp) / "images" / src.parent.name / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        run_reference(Path(tmp) / "images", device, model_spec)
        run_ours(Path(tmp) / "images", device, model_spec)


def model_forward_costs(repeats: int = 3) -> list[str]:
    """CPU seconds per image of one batch-64 forward pass, reference model vs ours (folded,
    channels-last), interleaved, best of ``repeats``: the model part of the ratio, measured in CPU
    time so that other jobs on the machine barely move it."""
    from imgcluster.embedding import prepare_model

    backbone = create_backbone(MODEL)
    ours = prepare_model(backbone, torch.device("cpu"))
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, size=(BATCH, 3, 224, 224)).astype(np.float32))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    lines = ["", f"Model forward alone (batch {BATCH}, best of {repeats} interleaved repeats, CPU ms per image):", ""]
    lines += ["| torch threads | reference (eager, float32) | imgcluster (BN folded, channels-last) | ratio |", "|---|---|---|---|"]
    try:
        for n_threads in sorted({1, threads}):
            torch.set_num_threads(n_threads)
            best = {"ref": math.inf, "ours": math.inf}
            with torch.inference_mode():
                backbone.model(x), ours(x_cl)  # first calls pick kernels
                for _ in range(repeats):
                    for which, model, inp in (("ref", backbone.model, x), ("ours", ours, x_cl)):
                        t = time.process_time()
                        model(inp)
                        best[which] = min(best[which], (time.process_time() - t) / BATCH)
            lines.append(f"| {n_threads} | {1000 * best['ref']:.1f} | {1000 * best['ours']:.1f} | {best['ref'] / best['ours']:.2f}x |")
            print(f"  model forward, {n_threads} threads: {lines[-1]}", flush=True)
    finally:
        torch.set_num_threads(threads)
    return lines


STAGES = ("setup", "decode", "preprocess", "decode wait", "model", "write", "other")
STAGE_NOTES = (
    "Columns: `setup` scan + model creation (+ cache open and batch-norm folding for ours); `decode`, "
    "`preprocess` measured inside the reference's in-process loader; `decode wait` the time ours' main "
    "process waited for decode workers (plus loop overhead); `model` forward passes (on a GPU with the "
    "host-to-device copy and a synchronise); `write` `np.save` (reference) or the safetensors cache shards (ours)."
)


def compare_pipelines(
    folders: dict[str, list[Path]], device: torch.device, model_spec: Model, gpu: bool = False
) -> tuple[list[str], list[str]]:
    """Reference and ours on every part of every folder, ABBA order: table rows and a summary line
    per folder. With ``gpu`` each row also gets nvidia-smi's utilisation while it ran."""
    rows, summary = [], []
    for name, parts_dirs in folders.items():
        for d in parts_dirs:
            warm_page_cache(d)
        runs: dict[str, list[Run]] = {"ref": [], "ours": []}
        samplers = {"ref": GpuSampler(), "ours": GpuSampler()}
        ratios = []
        for i, part in enumerate(parts_dirs):
            order = ("ref", "ours") if i % 2 == 0 else ("ours", "ref")
            got: dict[str, Run] = {}
            for which in order:
                with samplers[which].running():
                    got[which] = (run_reference if which == "ref" else run_ours)(part, device, model_spec)
                announced(got[which], f"{model_spec.label} {name} part {i} {which}")
                runs[which].append(got[which])
            ratios.append((got["ours"].images / got["ours"].wall) / (got["ref"].images / got["ref"].wall))
        for which, label in (("ref", "reference"), ("ours", "imgcluster")):
            done = runs[which]
            images, wall = sum(r.images for r in done), sum(r.wall for r in done)
            stage = {k: sum(r.stages.get(k, 0.0) for r in done) for k in STAGES}
            cells = [f"{stage[k]:.1f}" if k in done[0].stages else "–" for k in STAGES]
            util = [samplers[which].summary()] if gpu else []
            cpu = sum(r.cpu for r in done) / images
            rows.append("| " + " | ".join([name, label, f"{images / wall:.1f}", f"{cpu:.3f}", f"{wall:.1f}", *cells, *util]) + " |")
        ref_rate = sum(r.images for r in runs["ref"]) / sum(r.wall for r in runs["ref"])
        our_rate = sum(r.images for r in runs["ours"]) / sum(r.wall for r in runs["ours"])
        cpu_ratio = (sum(r.cpu for r in runs["ref"]) / sum(r.images for r in runs["ref"])) / (
            sum(r.cpu for r in runs["ours"]) / sum(r.images for r in runs["ours"])
        )
        summary.append(
            f"- {model_spec.label}, {name}: imgcluster **{our_rate / ref_rate:.2f}x** the reference's images/s "
            f"(per part: {', '.join(f'{r:.2f}' for r in ratios)}); {cpu_ratio:.2f}x less CPU time per image."
        )
    return rows, summary


def table_header(gpu: bool) -> list[str]:
    extra = ["GPU utilisation"] if gpu else []
    columns = ["images", "pipeline", "images/s", "CPU s/img", "wall", *STAGES, *extra]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def embed_benchmark(n: int, parts: int, device: torch.device) -> list[str]:
    folders = prepare_folders(n, parts)
    warm_up(folders["PNG 28 px"][0], device)
    lines = [
        f"### (a) Embed throughput, {MODEL}, {device.type.upper()}, first {n:,} Fashion-MNIST test images",
        "",
        f"Each folder is split into {parts} parts; reference and ours alternate on each part (ABBA order) "
        "and the table sums the parts. Times in seconds; `images/s` is images over wall time, model "
        "creation and worker start-up included. `CPU s/img`: user + system CPU seconds per image of "
        "the process and its decode workers (less sensitive to other jobs on the machine than wall time).",
        "",
        *table_header(gpu=False),
    ]
    rows, summary = compare_pipelines(folders, device, LITE0)
    costs_lines = ["", "Per-image CPU cost of the steps that run in the loader (one thread, 200 images, ms/image):", ""]
    costs_lines += ["| images | ref decode | ref preprocess | ours decode (draft) | ours preprocess |", "|---|---|---|---|---|"]
    for name, parts_dirs in folders.items():
        c = per_image_costs(parts_dirs[0])
        costs_lines.append(
            f"| {name} | {c['ref decode']:.2f} | {c['ref preprocess']:.2f} | {c['ours decode']:.2f} | {c['ours preprocess']:.2f} |"
        )
    return lines + rows + costs_lines + model_forward_costs() + ["", STAGE_NOTES, "", *summary]


# ---- (b) synthetic scale --------------------------------------------------------------------------
def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs), so each stage has its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_mb(field_name: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (now) from /proc, else getrusage's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(**values: Any) -> None:
    print(RESULT_PREFIX + json.dumps(values), flush=True)


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall_at_k(x: np.ndarray, idx: np.ndarray, queries: int = 200, seed: int = 1) -> float:
    """Share of the exact top-k found, on a sample of rows (brute force over all N for each)."""
    from imgcluster.neighbours import _exact_rows

    rows = np.random.default_rng(seed).choice(x.shape[0], size=min(queries, x.shape[0]), replace=False)
    exact, _ = _exact_rows(x, rows, idx.shape[1])
    return float(np.mean([len(set(a) & set(b)) / idx.shape[1] for a, b in zip(idx[rows], exact)]))


def scale_worker(n: int, dim: int, epochs: int, k: int, device_name: str) -> None:
    """Runs in its own process: neighbours, training, assignment on N random unit vectors."""
    from imgcluster.assign import predict
    from imgcluster.csvfile import write_assignments
    from imgcluster.neighbours import IVF_THRESHOLD, knn_search
    from imgcluster.train import train_objective

    device = torch.device(device_name)
    x = random_unit(n, dim)
    paths = [f"images/{i:07d}.jpg" for i in range(n)]
    emit(stage="data", mb=memory_mb("VmRSS"), features_mb=x.nbytes / 2**20)

    reset_peak()
    t = time.perf_counter()
    idx, _ = knn_search(x, k, use_gpu=device.type == "cuda")
    seconds = time.perf_counter() - t
    method = "IVF" if n > IVF_THRESHOLD else "exact"
    emit(stage="neighbours", seconds=seconds, peak_mb=memory_mb("VmHWM"), method=method)
    emit(stage="recall", value=recall_at_k(x, idx))  # after the peak was read: its buffer is not the search's

    reset_peak()
    t = time.perf_counter()
    trained = train_objective(x, idx, TrainConfig(epochs=epochs, min_steps=0, clusters=10, seed=0), device)
    emit(
        stage="training", seconds=time.perf_counter() - t, peak_mb=memory_mb("VmHWM"), steps=epochs * (n // trained.schedule["batch_size"])
    )

    reset_peak()
    t = time.perf_counter()
    assignment = predict(trained.objective, x, device)
    with tempfile.TemporaryDirectory() as tmp:
        write_assignments(str(Path(tmp) / "clusters.csv"), paths, assignment)
    emit(stage="assignment", seconds=time.perf_counter() - t, peak_mb=memory_mb("VmHWM"))


def run_scale(n: int, dim: int, epochs: int, k: int, timeout: float, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """One worker process per N; stages that finished before a timeout still count."""
    cmd = [
        sys.executable,
        __file__,
        "--scale-worker",
        str(n),
        "--dim",
        str(dim),
        "--epochs",
        str(epochs),
        "--k",
        str(k),
        "--device",
        device,
    ]
    results: dict[str, dict[str, Any]] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RESULT_PREFIX):
                value = json.loads(line[len(RESULT_PREFIX) :])
                results[value.pop("stage")] = value
                print(f"  N={n:,}: {line[len(RESULT_PREFIX) :].strip()}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode != 0:
        results["error"] = {"returncode": proc.returncode, "timed_out": proc.returncode == -9}
    return results


def exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def scale_benchmark(sizes: list[int], dim: int, epochs: int, k: int, timeout: float) -> list[str]:
    rows = {n: run_scale(n, dim, epochs, k, timeout) for n in sizes}
    lines = [
        f"### (b) Synthetic scale, CPU: random unit features, d={dim}, k={k}, default objective ({epochs} epochs, batch 512)",
        "",
        "Each N runs in a fresh process; peak RSS is reset before each stage (Linux `clear_refs`), so a "
        "stage's peak includes what earlier stages left alive (the features, the kNN table, ~0.7 GB of "
        "imported libraries). kNN recall: share of the exact neighbours found, on 200 random rows. "
        "Random unit vectors in 384 dimensions have no cluster structure: the worst case for IVF.",
        "",
        "| N | features MB | kNN s | kNN method | kNN recall | kNN peak MB | train s | train steps | train peak MB "
        "| assign s | assign peak MB | process peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict[str, Any], stage: str, key: str, fmt: str) -> str:
        return format(r[stage][key], fmt) if stage in r and key in r[stage] else "not run"

    for n, r in rows.items():
        lines.append(
            f"| {n:,} | {cell(r, 'data', 'features_mb', '.0f')} | {cell(r, 'neighbours', 'seconds', '.1f')} | "
            f"{cell(r, 'neighbours', 'method', 's')} | {cell(r, 'recall', 'value', '.3f')} | "
            f"{cell(r, 'neighbours', 'peak_mb', '.0f')} | "
            f"{cell(r, 'training', 'seconds', '.1f')} | {cell(r, 'training', 'steps', 'd')} | {cell(r, 'training', 'peak_mb', '.0f')} | "
            f"{cell(r, 'assignment', 'seconds', '.1f')} | {cell(r, 'assignment', 'peak_mb', '.0f')} | "
            f"{max([v['peak_mb'] for v in r.values() if 'peak_mb' in v] + [r.get('data', {}).get('mb', 0.0)]):.0f} |"
        )
    lines.append("")
    for stage in ("neighbours", "training", "assignment"):
        done = [(n, rows[n][stage]["seconds"]) for n in sizes if stage in rows[n]]
        if len(done) >= 2:
            pairs = ", ".join(f"{a:,}→{b:,}: {exponent([a, b], [ta, tb]):.2f}" for (a, ta), (b, tb) in itertools.pairwise(done))
            lines.append(f"- {stage}: time ∝ N^{exponent(*map(list, zip(*done))):.2f} over {len(done)} sizes (between sizes: {pairs})")
    for n, r in rows.items():
        if "error" in r:
            what = "stopped at the time limit" if r["error"]["timed_out"] else f"failed (exit {r['error']['returncode']})"
            lines.append(f"- N={n:,}: {what} ({timeout:.0f} s); stages marked `not run` did not finish.")
    return lines


# ---- (c) GPU --------------------------------------------------------------------------------------
class GpuSampler:
    """Polls nvidia-smi for the utilisation of the GPU torch uses (by UUID, so CUDA_VISIBLE_DEVICES
    and nvidia-smi's own ordering cannot mix them up) while a row runs."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self.unreported = 0  # replies without a number: "[N/A]" under MIG, for one
        self._stop = threading.Event()

    @staticmethod
    def _gpu_id() -> str:
        uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None) if torch.cuda.is_available() else None
        return f"GPU-{uuid}" if uuid is not None else "0"

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", self._gpu_id()]
        while not self._stop.is_set():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
                try:
                    util, mem = (float(v) for v in out[0].split(","))
                    self.samples.append((util, mem))
                except (IndexError, ValueError):
                    self.unreported += 1
            self._stop.wait(self.every)

    @contextlib.contextmanager
    def running(self) -> Iterator[GpuSampler]:
        """Sample while the block runs; may be entered again (rows made of several runs)."""
        thread = None
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self._stop.clear()
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            if thread is not None:
                thread.join()

    def summary(self) -> str:
        if not self.samples:
            if self.unreported:
                return "n/a (nvidia-smi reports no utilisation, e.g. under MIG)"
            return "n/a (no nvidia-smi)"
        util = [u for u, _ in self.samples]
        return f"{np.mean(util):.0f}% mean, {max(util):.0f}% max, {max(m for _, m in self.samples):.0f} MiB"


def gpu_benchmark(n: int, parts: int, device: torch.device, train_n: int = 50_000, knn_n: int = 1_000_000) -> list[str]:
    """Section (c). ``device`` is CUDA; the CPU only for a quick check that the section runs."""
    from imgcluster.neighbours import faiss_has_gpu, knn_search
    from imgcluster.train import train_objective

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke run of the GPU section)"
    gpu = device.type == "cuda"
    folders = prepare_folders(n, parts)
    lines = [
        f"### (c) GPU: {name}",
        "",
        f"First {n:,} Fashion-MNIST test images in {parts} parts, reference and ours in ABBA order after an "
        "untimed warm-up of both; the reference runs in float32 with batch 64, no workers and cuDNN's "
        "defaults, ours with its defaults on CUDA (batch 256, decode workers, pinned memory, bfloat16 "
        "autocast, batch norm folded, channels-last). Times in seconds.",
        "",
    ]
    summary = []
    for model_spec in (LITE0, random_vit()):
        warm_up(folders["PNG 28 px"][0], device, model_spec)
        rows, lines_summary = compare_pipelines(folders, device, model_spec, gpu=True)
        lines += [f"**{model_spec.label}**", "", *table_header(gpu=True), *rows, ""]
        summary += lines_summary
    lines += [STAGE_NOTES, "", *summary, "", "| what | result | GPU utilisation (nvidia-smi) |", "|---|---|---|"]
    x = random_unit(train_n, 384)
    idx, _ = knn_search(x, 20, use_gpu=gpu)
    sampler = GpuSampler()
    with sampler.running():
        trained = train_objective(x, idx, TrainConfig(clusters=10, seed=0), device)
    lines.append(
        f"| train the default head ({trained.objective.name}), {train_n:,} x 384 random unit features, "
        f"{trained.schedule['epochs']} epochs, batch {trained.schedule['batch_size']} | {trained.seconds:.1f} s | {sampler.summary()} |"
    )
    x = random_unit(knn_n, 384)
    sampler = GpuSampler()
    with sampler.running():
        t = time.perf_counter()
        knn_search(x, 20, use_gpu=gpu)
        seconds = time.perf_counter() - t
    how = ("faiss-gpu" if faiss_has_gpu() else "torch blocked matmul, exact") if gpu else "faiss, CPU"
    lines.append(f"| kNN k=20, {knn_n:,} x 384 ({how}) | {seconds:.1f} s | {sampler.summary()} |")
    return lines


def repeated(folder: Path, times: int) -> Path:
    """``folder``'s images ``times`` over (hard links in sub-folders copy0, copy1, ...): a large
    folder made fast, for throughput in steady state rather than start-up."""
    sources = image_paths(folder)
    copies = ((src, Path(f"copy{i}") / src.relative_to(folder)) for i in range(times) for src in sources)
    return fill_once(folder.parent / f"{folder.name}-x{times}", copies, link=True)


def workers_sweep(
    counts: list[int], n: int, device: torch.device, repeat: int = 1, models: tuple[str, ...] = ("lite0", "vit")
) -> list[str]:
    """Section (d): our pipeline alone with each decode-worker count, in A B B A order per folder;
    on a GPU the model waits for decoding, so this is what sets the default worker count there.
    ``repeat`` > 1 sweeps only the JPEG folder, its images ``repeat`` times over."""
    folders = prepare_folders(n, 1)
    warm_folder = folders["PNG 28 px"][0]
    if repeat > 1:
        folders = {f"JPEG 512 px x{repeat}": [repeated(folders["JPEG 512 px"][0], repeat)]}
    total = n * repeat
    lines = [
        f"### (d) Decode workers, {device.type.upper()}" + (f": {torch.cuda.get_device_name(0)}" if device.type == "cuda" else ""),
        "",
        f"First {n:,} Fashion-MNIST test images"
        + (f", {repeat} times over ({total:,} files, hard links)" if repeat > 1 else "")
        + f", our pipeline with `--workers` set to each count "
        f"({os.cpu_count()} CPU cores; the default is {default_workers(total, device)}), each count run twice in "
        "A B B A order after a warm-up; wall time includes starting the workers.",
        "",
        "| model | images | workers | images/s | decode wait s | model s | GPU utilisation |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in models:
        model_spec = LITE0 if key == "lite0" else random_vit()
        warm_up(warm_folder, device, model_spec)
        for name, (folder,) in folders.items():
            warm_page_cache(folder)
            samplers = {c: GpuSampler() for c in counts}

            def with_workers(c: int, folder: Path = folder, name: str = name, model_spec: Model = model_spec) -> Run:
                return announced(run_ours(folder, device, model_spec, workers=c), f"{model_spec.label} {name} workers {c}")

            runs = in_abba_order(counts, with_workers, samplers)
            for c in counts:
                images, wall = sum(r.images for r in runs[c]), sum(r.wall for r in runs[c])
                wait = sum(r.stages["decode wait"] for r in runs[c])
                model_s = sum(r.stages["model"] for r in runs[c])
                lines.append(
                    f"| {model_spec.label} | {name} | {c} | {images / wall:.1f} | {wait:.1f} | {model_s:.1f} | {samplers[c].summary()} |"
                )
    return lines


def small_folders(sizes: list[int]) -> list[str]:
    """Section (e): small folders on the CPU, forward passes padded to a batch sized to the folder
    (the default) against padding to the full 64 (the default before), on the same images."""
    cpu = torch.device("cpu")
    lines = [
        "### (e) Small folders, CPU",
        "",
        "Every forward pass is padded to the embedding batch. Our pipeline on the first N Fashion-MNIST "
        "test PNGs with the default batch (N rounded up to a multiple of 8, at most 64) against "
        "`--embed-batch-size 64` (what every folder got before), in A B B A order; seconds per run, "
        "model creation included.",
        "",
        "| model | images | batch | seconds, batch 64 | seconds, default | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    folders = {n: fill_once(DATA / "speed" / f"small-{n}", first_pngs(n)) for n in sizes}
    for model_spec in (LITE0, random_vit()):
        warm_up(folders[sizes[0]], cpu, model_spec)
        for n, folder in folders.items():

            def padded_to(which: str, folder: Path = folder, model_spec: Model = model_spec) -> Run:
                return run_ours(folder, cpu, model_spec, batch_size=64 if which == "full" else None)

            runs = in_abba_order(["full", "sized"], padded_to)
            full, sized = (float(np.mean([r.wall for r in runs[w]])) for w in ("full", "sized"))
            print(f"  {model_spec.label} {n} images: batch 64 {full:.1f} s, default {sized:.1f} s", flush=True)
            lines.append(f"| {model_spec.label} | {n} | {default_batch_size(cpu, n)} | {full:.1f} | {sized:.1f} | {full / sized:.1f}x |")
    return lines


# ---- main ------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images per folder for (a)")
    parser.add_argument("--parts", type=int, default=4, help="interleaved parts per folder for (a)")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="N for (b), comma-separated")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs for (b)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per N in (b)")
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--scale-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-images", type=int, default=4000, help="images per folder for (c)")
    parser.add_argument("--gpu-parts", type=int, default=2, help="interleaved parts per folder for (c)")
    parser.add_argument("--skip-gpu", action="store_true", help="skip section (c)")
    parser.add_argument("--small-folders", default="10,40", help="section (e): small folder sizes on the CPU ('' to skip)")
    parser.add_argument("--workers-sweep", default="", help="section (d): decode-worker counts to compare, e.g. 8,15")
    parser.add_argument("--sweep-repeat", type=int, default=1, help="(d) on the JPEG folder's images this many times over")
    parser.add_argument("--sweep-models", default="lite0,vit", help="(d): lite0, vit or both")
    parser.add_argument(
        "--smoke-gpu-section", action="store_true", help="run section (c) on the CPU at toy sizes, only to check that it runs"
    )
    args = parser.parse_args()
    if args.scale_worker:
        scale_worker(args.scale_worker, args.dim, args.epochs, args.k, args.device)
        return

    started = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    sections = [
        "# Speed and scale (`make bench-speed`)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} when the benchmark started.",
        "",
    ]
    if not args.skip_embed:
        sections += [*embed_benchmark(args.images, args.parts, torch.device("cpu")), ""]
    if not args.skip_scale:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        sections += [*scale_benchmark(sizes, args.dim, args.epochs, args.k, args.timeout), ""]
    if args.skip_gpu:
        pass
    elif args.smoke_gpu_section:
        sections += [*gpu_benchmark(64, 2, torch.device("cpu"), train_n=2_000, knn_n=5_000), ""]
    elif torch.cuda.is_available():
        gpu_lines = gpu_benchmark(args.gpu_images, args.gpu_parts, torch.device("cuda"))
        write_section("speed-gpu", "\n".join(gpu_lines).replace("### (c) GPU", "## Speed on a GPU (`make bench-speed`, section (c))", 1))
        sections += [*gpu_lines, ""]
    else:
        sections += ["### (c) GPU", "", "Skipped: no CUDA GPU on this machine (`torch.cuda.is_available()` is False).", ""]
    if args.small_folders and not args.smoke_gpu_section:
        sections += [*small_folders([int(n) for n in args.small_folders.split(",")]), ""]
    if args.workers_sweep:
        device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke_gpu_section else "cpu")
        counts = [int(c) for c in args.workers_sweep.split(",")]
        n = 64 if args.smoke_gpu_section else args.gpu_images
        sections += [*workers_sweep(counts, n, device, args.sweep_repeat, tuple(args.sweep_models.split(","))), ""]
    sections.append(
        f"_Benchmark took {(time.perf_counter() - started) / 60:.1f} minutes; "
        f"written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._"
    )
    text = "\n".join(sections) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
