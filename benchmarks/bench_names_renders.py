"""What the naming classifier is shown: renders of each member for the naming pass only (round 23 of issue 14).

`make bench-names` names each true class from its 16 members nearest the centre, shown inverted and enlarged
from 28 to 256 px (the eval transform then crops the middle 224): a blurry object filling the frame, unlike
ImageNet's product photos. This script shows the classifier the same members rendered otherwise
(``RENDERS``: the object smaller on a light canvas, on a grey ground, resampled another way, blurred or
sharpened, its tones bent or stretched, its bounding box filling the frame) and, for ``VARIANTS`` of more than one render, the Lite0
features averaged over them (as ``imgcluster.negatives.view_features`` averages views); and, apart, the same framing
at a larger input than Lite0's 224 px (``SIZES``: more pixels on the same object). The clusters, their
members and the folders' own features are the same for every variant; only the pixels the naming pass reads
change. Each variant is read with ``assign``'s rule (families, distinctness, likeness) and judged as
``bench_names`` judges (``verdict``): names right and wrong, all and shown at ``imgcluster.naming.LIKENESS``,
and at the likeness cut that best separates the variant's own names on the training draws (``best_threshold``).

Writes ``benchmarks/results_names_renders.md``; uses ``bench_names``' folders and caches (``BENCH_NAMES_DATA``).
Each render is one more Lite0 pass over 16 members a cluster, so a variant of n renders costs n times the
naming pass's forward passes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_names import ROOT, best_threshold, folders, verdict
from common import HERE, machine
from PIL import Image, ImageFilter, ImageOps

import imgcluster
from imgcluster import negatives
from imgcluster.naming import LIKENESS, _chosen, class_probabilities, likeness

OUT = HERE / "results_names_renders.md"
SIDE = 256  # the eval transform resizes to 256 and crops the middle 224
GREY = 235  # a mild grey ground
Render = Callable[[Image.Image], Image.Image]


def canvas(pixels: int, ground: int = 255) -> Render:
    """The drawing at ``pixels`` of the 224 px crop, centred on a light canvas (its own ground is white once inverted)."""

    def render(image: Image.Image) -> Image.Image:
        size = round(pixels * SIDE / 224)
        out = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
        out.paste(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), ((SIDE - size) // 2,) * 2)
        return out if ground == 255 else grey_ground(ground)(out)

    return render


def grey_ground(ground: int) -> Render:
    """Every tone scaled so that white becomes ``ground``: a shadow-free grey backdrop."""

    def render(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * (ground / 255.0)
        return Image.fromarray(pixels.round().astype(np.uint8))

    return render


def resampled(method: Image.Resampling, blur: float = 0.0) -> Render:
    """Enlarged to 256 px by ``method`` (the eval transform's own is bicubic), then blurred by ``blur`` px."""

    def render(image: Image.Image) -> Image.Image:
        out = image.convert("RGB").resize((SIDE, SIDE), method)
        return out.filter(ImageFilter.GaussianBlur(blur)) if blur else out

    return render


def gamma(power: float) -> Render:
    """Tones raised to ``power`` (under 1 lighter, over 1 darker)."""

    def render(image: Image.Image) -> Image.Image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return Image.fromarray((255 * pixels**power).round().astype(np.uint8))

    return render


def zoom(image: Image.Image) -> Image.Image:
    """The object's bounding box (darker than 245) filling the 224 px crop, on white."""
    grey = np.asarray(image.convert("L"))
    ink = np.argwhere(grey < 245)
    if not len(ink):
        return image
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    thing = image.convert("RGB").crop((int(left), int(top), int(right), int(bottom)))
    scale = 224 / max(thing.size)
    thing = thing.resize((max(1, round(thing.width * scale)), max(1, round(thing.height * scale))), Image.Resampling.BICUBIC)
    out = Image.new("RGB", (SIDE, SIDE), (255, 255, 255))
    out.paste(thing, ((SIDE - thing.width) // 2, (SIDE - thing.height) // 2))
    return out


RENDERS: dict[str, Render] = {
    "canvas-192": canvas(192),
    "canvas-160": canvas(160),
    "canvas-128": canvas(128),
    "canvas-96": canvas(96),
    "canvas-128-grey": canvas(128, GREY),
    "grey-ground": grey_ground(GREY),
    "lanczos": resampled(Image.Resampling.LANCZOS),
    "nearest-blur": resampled(Image.Resampling.NEAREST, 2.0),
    "bicubic-blur": resampled(Image.Resampling.BICUBIC, 1.0),
    "sharpened": lambda image: resampled(Image.Resampling.BICUBIC)(image).filter(ImageFilter.UnsharpMask(2, 150, 3)),
    "gamma-0.7": gamma(0.7),
    "gamma-1.4": gamma(1.4),
    "zoom": zoom,
    "autocontrast": lambda image: ImageOps.autocontrast(image.convert("RGB"), cutoff=1),
}
VARIANTS: list[tuple[str, ...]] = [  # renders whose features are averaged
    ("plain",),
    *[(name,) for name in RENDERS],
    ("plain", "canvas-160", "canvas-128"),
    ("canvas-160", "canvas-128", "canvas-96"),
    ("plain", "canvas-128"),
    ("plain", "zoom"),
    ("plain", "gamma-1.4"),
]
SIZES = [288, 320]  # the eval framing at a larger input than Lite0's 224
WATCHED = ["ankle-boot", "bag", "sandal", "sneaker", "trouser"]  # the labels issue 14 asks about (where a folder has them)
Named = tuple[str, str, str, float]  # label, name, verdict, likeness
Features = Callable[[list[Path]], np.ndarray]


def rendered(views: tuple[str, ...]) -> Features:
    """Lite0's features of the members averaged over ``views``, as the naming pass computes them (cached by render)."""

    def features(files: list[Path]) -> np.ndarray:
        cache = ROOT / "views" / files[0].parent.parent.name
        cache.mkdir(parents=True, exist_ok=True)
        return negatives.view_features(files, cache, views)

    return features


def at_size(size: int) -> Features:
    """Lite0's features of the inverted members framed as the eval transform frames them (resized to ``size / 0.875``,
    the middle ``size`` kept), at an input of ``size`` px instead of 224: more pixels on the same object."""
    import torch
    from torchvision import transforms

    from imgcluster.load import load_rgb

    def features(files: list[Path]) -> np.ndarray:
        model, transform, _, _ = negatives._lite0()
        normalise = next(t for t in transform.transforms if isinstance(t, transforms.Normalize))
        framing = transforms.Compose(
            [
                transforms.Resize(round(size / 0.875), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                normalise,
            ]
        )
        pixels = torch.stack([framing(negatives.classifier_view(load_rgb(path))) for path in files])
        with torch.inference_mode():
            batches = [model(pixels[i : i + 64].contiguous(memory_format=torch.channels_last)) for i in range(0, len(pixels), 64)]
        return torch.cat(batches).float().numpy()

    return features


def named(features_of: Features, members: dict[str, tuple[np.ndarray, list[Path]]]) -> dict[str, list[Named]]:
    """Each folder's labels named from their members' features (``features_of`` the members' files)."""
    out = {}
    for title, (labels, files) in members.items():
        features = features_of(files)
        folder_mean = class_probabilities(features).mean(axis=0)
        rows = []
        for label in sorted(set(labels)):
            mine = features[labels == label]
            name, chosen = _chosen(class_probabilities(mine).mean(axis=0), folder_mean=folder_mean)
            rows.append((label, name, verdict(label, name), likeness(mine, chosen)))
        out[title] = rows
    return out


def counts(rows: list[Named], cut: float) -> str:
    """``right shown/right, wrong shown/wrong`` at the likeness ``cut``."""
    right = [r for r in rows if r[2] == "right"]
    wrong = [r for r in rows if r[2] == "wrong"]
    return f"{sum(r[3] >= cut for r in right)}/{len(right)}, {sum(r[3] >= cut for r in wrong)}/{len(wrong)}"


def main() -> None:
    started, load = time.perf_counter(), os.getloadavg()
    negatives.VIEW_MAKERS.update(RENDERS)
    train, tests = folders()
    members = {}
    for title, folder in {**train, **tests}.items():
        embeddings = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=ROOT / "cache", device="cpu")
        labels = np.array([p.split("/", 1)[0] for p in embeddings.paths])
        rows = negatives.sample_rows(np.unique(labels, return_inverse=True)[1], negatives.PER_CLUSTER, embeddings.features)
        members[title] = (labels[rows], [embeddings.folder / embeddings.paths[i] for i in rows])
    fashion, sample = next(t for t in tests if t.startswith("Fashion")), "sample_data"
    summary = [
        "| renders | training: right, wrong named | training: at 0.164 | own cut, its training errors | training: at own cut | "
        f"sample_data: at 0.164 | at own cut | {fashion}: at 0.164 | at own cut | digits: at 0.164 | at own cut |",
        "|---" * 11 + "|",
    ]
    shown = {title: [label for label in WATCHED if label in members[title][0]] for title in (sample, fashion)}
    watched = {title: [f"| renders | {' | '.join(labels)} |", "|---" * (len(labels) + 1) + "|"] for title, labels in shown.items()}
    chosen = {" + ".join(views): rendered(views) for views in VARIANTS} | {f"input {size} px": at_size(size) for size in SIZES}
    for key, features_of in chosen.items():
        got = {title: [r for r in rows if r[2] != "-"] for title, rows in named(features_of, members).items()}
        trained = [r for title in train for r in got[title]]
        right = np.array([r[2] == "right" for r in trained])
        cut, errors = best_threshold(np.array([r[3] for r in trained]), right)
        summary.append(
            f"| {key} | {int(right.sum())}, {int((~right).sum())} | {counts(trained, LIKENESS)} | {cut:.3f}, {errors} of {len(right)} | "
            f"{counts(trained, cut)} | {counts(got[sample], LIKENESS)} | {counts(got[sample], cut)} | {counts(got[fashion], LIKENESS)} | "
            f"{counts(got[fashion], cut)} | {counts(got['digits'], LIKENESS)} | {counts(got['digits'], cut)} |"
        )
        for title, lines in watched.items():
            by_label = {r[0]: r for r in got[title]}
            cells = [f"`{by_label[label][1]}` {by_label[label][2]} {by_label[label][3]:.3f}" for label in shown[title]]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        print(summary[-1], flush=True)
    lines = [
        "# What the naming classifier is shown: renders for the naming pass (`python benchmarks/bench_names_renders.py`)",
        "",
        *(__doc__ or "").split("\n\n", 1)[1].strip().splitlines(),
        "",
        "Cells: right names shown of right names, wrong shown of wrong (names of labels ImageNet cannot name, shirts, are",
        "not counted; every digit's name is wrong), over the two training draws together or one test folder.",
        "",
        *summary,
        "",
    ]
    for title, table in watched.items():
        lines += [f"## {title}: the name of each watched label, its verdict and likeness", "", *table, ""]
    lines.append(
        f"Took {time.perf_counter() - started:.0f} s on {machine()}, shared with three other engineers' work (load average "
        f"{load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); names and likeness do not depend on the load."
    )
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    sys.exit(main())
