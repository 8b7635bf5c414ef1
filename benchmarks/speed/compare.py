"""Reference and ours side by side on the same folders: the rows of sections (a) and (c)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from speed.folders import image_paths, warm_page_cache
from speed.gpu_sampler import GpuSampler
from speed.ours import run_ours
from speed.reference import run_reference
from speed.runs import LITE0, Model, Run, announced


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


STAGES = ("setup", "decode", "preprocess", "decode wait", "model", "write", "other")
STAGE_NOTES = (
    "Columns: `setup` scan + model creation (+ cache open and batch-norm folding for ours); `decode`, "
    "`preprocess` measured inside the reference's in-process loader; `decode wait` the time ours' main "
    "process waited for decode workers (plus loop overhead); `model` forward passes with the copies to "
    "and from the device; `write` `np.save` (reference) or the safetensors cache shards (ours). Ours is "
    "timed by the progress events of `imgcluster.embed` (`imgcluster.progress.MARKS`)."
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
