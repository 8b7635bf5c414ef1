"""`make bench-names`: do the cluster names agree with the labels, where ImageNet knows the class?

Each labelled folder's true classes stand in for clusters (so a clustering mistake cannot blur a
name), and each class is named as ``assign`` names a cluster, from three ways of showing the
classifier the images:

* before: the classifier on the cached features, the images as the pipeline embeds them;
* inverted: a folder drawn light on black is named from a sample of up to 32 images per cluster
  shown inverted (``imgcluster.negatives``, one view; any other folder as before);
* views: as inverted, with the probabilities averaged over the test-time views ``assign`` uses
  (``negatives.VIEWS``: as is and mirrored);
* views + blurred, views + canvas: the same plus a view enlarged and blurred (no blocky upsampling),
  or the drawing's object centred on a white canvas, ``CANVAS_FILL`` of its side, as product photos
  show things (tried, not adopted).

Each is read with three rules: the top class of the members' mean ("mean"), the class families of
``imgcluster.families`` ("families": the family with the most mass names the cluster, led by the
family's name when its top class is unsure) and the same with each family's mass weighed up by how
much more of it the cluster has than the folder ("families, distinct": what ``assign`` uses). A name agrees when its first
class is one of the ImageNet classes a person would accept for the label (``ACCEPT``); it agrees in
family when that class shares a family with an accepted one (a ``Loafer`` for an ankle boot:
footwear). Labels with no accepted class (a trouser: ImageNet has ``jean`` but it is a denim
texture; a shirt) are named but not counted. The views' probabilities are each view's, cached, and
averaged here as ``view_probabilities`` averages them. Writes ``benchmarks/results_names.md``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import DATA, HERE, machine
from datasets import FASHION_CLASSES, fashion_mnist_test, write_folder
from PIL import Image, ImageFilter

import imgcluster
from imgcluster import negatives
from imgcluster.families import imagenet_families
from imgcluster.naming import _lemmas, class_probabilities, name_of
from imgcluster.negatives import VIEWS, mostly_negative, sample_rows, view_probabilities

OUT = HERE / "results_names.md"
PER_CLASS = int(os.environ.get("BENCH_NAMES_PER_CLASS", "200"))
# The ImageNet classes (first lemma) that name each label acceptably; a label without any is not counted.
ACCEPT: dict[str, set[str]] = {
    "t-shirt": {"jersey"},
    "trouser": {"jean"},
    "pullover": {"sweatshirt", "cardigan"},
    "dress": {"gown", "overskirt", "hoopskirt", "miniskirt", "abaya", "kimono", "sarong"},
    "coat": {"trench coat", "fur coat", "lab coat", "cloak", "poncho"},
    "sandal": {"sandal"},
    "shirt": set(),  # ImageNet's shirts are "jersey, T-shirt": no class for a shirt with a collar
    "sneaker": {"running shoe"},
    "bag": {"mailbag", "purse", "backpack", "plastic bag"},
    "ankle-boot": {"cowboy boot"},
}


CANVAS_FILL = 0.75  # the object's longer side on the white canvas, as a share of the canvas
BLUR = 2.0  # Gaussian radius at 256 px
VARIANTS = {
    "before": (),
    "inverted": ("plain",),
    "views": VIEWS,
    "views + blurred": (*VIEWS, "blurred"),
    "views + canvas": (*VIEWS, "canvas"),
}
RULES = {"mean": (False, False), "families": (True, False), "families, distinct": (True, True)}


def canvas(image: Image.Image) -> Image.Image:
    """The object (its non-white bounding box) centred on a white 224 px canvas, ``CANVAS_FILL`` of its side."""
    grey = np.asarray(image.convert("L"))
    ink = np.argwhere(grey < 245)
    box = (0, 0, image.width, image.height) if not len(ink) else (*ink.min(0)[::-1], *(ink.max(0)[::-1] + 1))
    thing = image.convert("RGB").crop(tuple(int(v) for v in box))
    scale = CANVAS_FILL * 224 / max(thing.size)
    thing = thing.resize((max(1, round(thing.width * scale)), max(1, round(thing.height * scale))), Image.Resampling.BICUBIC)
    thing = thing.filter(ImageFilter.GaussianBlur(1.5))
    out = Image.new("RGB", (224, 224), (255, 255, 255))
    out.paste(thing, ((224 - thing.width) // 2, (224 - thing.height) // 2))
    return out.resize((256, 256), Image.Resampling.BICUBIC)  # the eval transform crops 224 of 256


def blurred(image: Image.Image) -> Image.Image:
    """Enlarged to 256 px and smoothed: the blocks of a 28 px drawing blurred away."""
    scale = 256 / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.convert("RGB").resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(BLUR))


def names(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, str]]:
    """Label -> rule -> name."""
    seen = probabilities.sum(axis=1) > 0
    folder_mean = probabilities[seen].mean(axis=0)
    out = {}
    for label in sorted(set(labels)):
        mean = probabilities[(labels == label) & seen].mean(axis=0)
        out[label] = {rule: name_of(mean, grouped, folder_mean if distinct else None) for rule, (grouped, distinct) in RULES.items()}
    return out


def first_class(name: str) -> str:
    """``"footwear: sandal, clog"`` -> ``"sandal"``."""
    return name.split(": ", 1)[-1].split(", ")[0]


def agreement(named: dict[str, dict[str, str]], rule: str) -> tuple[int, int, int]:
    """(names whose first class is accepted, those or whose class shares a family with an accepted one, labels counted)."""
    lemmas, families = _lemmas(), imagenet_families()

    def family(lemma: str) -> int:
        return int(families.group[lemmas.index(lemma)])

    counted = [label for label in named if ACCEPT.get(label)]
    firsts = {label: first_class(named[label][rule]) for label in counted}
    exact = sum(firsts[label] in ACCEPT[label] for label in counted)
    kin = sum(
        firsts[label] in ACCEPT[label]
        or (families.names[family(firsts[label])] != "" and family(firsts[label]) in {family(c) for c in ACCEPT[label]})
        for label in counted
    )
    return exact, kin, len(counted)


def measure(folder: Path, cache: Path) -> tuple[dict[str, dict[str, dict[str, str]]], bool, int]:
    embeddings = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, device="cpu")
    labels = np.array([p.split("/", 1)[0] for p in embeddings.paths])
    codes = np.unique(labels, return_inverse=True)[1]
    rows = sample_rows(codes)
    files = [embeddings.folder / embeddings.paths[i] for i in rows]
    negative = mostly_negative(files)
    measured = {"before": names(class_probabilities(embeddings.features), labels)}
    per_view = {}
    for view in dict.fromkeys(v for views in VARIANTS.values() for v in views):
        per_view[view] = view_probabilities(files, embeddings.cache_dir, (view,))  # each view cached on its own
    for variant, views in VARIANTS.items():
        if views:
            measured[variant] = names(np.mean([per_view[v] for v in views], axis=0), labels[rows]) if negative else measured["before"]
    return measured, negative, len(rows)


def main() -> None:
    started = time.perf_counter()
    load = os.getloadavg()
    negatives.VIEW_MAKERS.update(blurred=blurred, canvas=canvas)  # views tried here, not ones assign uses
    images, labels = fashion_mnist_test()
    keep = np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(len(FASHION_CLASSES))])
    folders = {
        "sample_data (125 Fashion-MNIST images, 5 classes)": HERE.parent / "sample_data",
        f"Fashion-MNIST test, {PER_CLASS} per class": write_folder(
            images[keep], labels[keep], FASHION_CLASSES, DATA / f"fashion-mnist-names-{PER_CLASS}"
        ),
    }
    lines = ["# Cluster names against labels (`make bench-names`)", "", *HEADER, ""]
    columns = [(variant, rule) for variant in VARIANTS for rule in RULES]
    for title, folder in folders.items():
        measured, negative, sampled = measure(folder, DATA / "names-cache")
        lines += [f"## {title}", "", f"Judged drawn light on black: {negative}; the names are made from {sampled} images.", ""]
        lines += ["| label | " + " | ".join(f"{v}: {r}" for v, r in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for label in measured["before"]:
            known = "" if ACCEPT.get(label) else " (no ImageNet class)"
            lines.append(f"| {label}{known} | " + " | ".join(f"`{measured[v][label][r]}`" for v, r in columns) + " |")
        scores = [agreement(measured[v], r) for v, r in columns]
        lines.append("| **class agrees** | " + " | ".join(f"**{a} of {n}**" for a, _, n in scores) + " |")
        lines.append("| **family agrees** | " + " | ".join(f"{k} of {n}" for _, k, n in scores) + " |")
        lines.append("")
        print("\n".join(lines[-16:]), flush=True)
    lines.append(
        f"Took {time.perf_counter() - started:.0f} s on {machine()}, shared with five other engineers' work "
        f"(load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); names do not depend on the load."
    )
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


HEADER = [
    "Each true class named as `assign` names a cluster (see `benchmarks/bench_names.py`); a name's class agrees when",
    "its first class is one ImageNet would accept for the label (`ACCEPT` in the script), its family when that class",
    "shares a WordNet family (`imgcluster/families.py`) with an accepted one. before: the classifier on the cached",
    "features; inverted: folders drawn light on black named from up to 32 images per cluster shown inverted; views:",
    "inverted, averaged over the views `assign` uses (as is and mirrored); views + blurred / + canvas: also a view",
    "enlarged and blurred, or the object on a white canvas at 75 % of its side. mean: top class of the mean",
    "probabilities (`assign`'s rule before); families: the family with the most mass names the cluster; families,",
    "distinct: each family's mass m weighed up by how much more of it the cluster has than the folder (f),",
    "m * max(m/f, 1) ** 0.5 (`assign`'s rule now).",
    "",
    "Conclusions. Adopted: views (as is and mirrored) with families, distinct. Summing by family names sample_data's",
    "bags `mailbag` (its five kinds of bag together outweigh `cassette player`) and its ankle boots `Loafer` (footwear,",
    "not a boot): 2 of 5 first classes agree and 3 of 5 families, against 1 and 1 by class alone; on 200 Fashion-MNIST",
    "images per class it changes no first class that agrees (4 of 9 either way) and names the sneakers",
    "`cutting implement: plane, hatchet` instead of `ski, oboe`, both wrong. Weighing by distinctness then names",
    "Fashion-MNIST's ankle boots `Loafer, hatchet` instead of `hatchet, muzzle` (5 of 9 families agree, never fewer",
    "than by mass in any column); a cluster that is the whole folder is named by mass alone, so it cannot name noise",
    "as the plain distinctive rule did (m log(m/f), measured before the families: in this file's git history). The",
    "mirrored view changes no first class and drops three wrong runners-up on Fashion-MNIST (bag `punching bag`,",
    "pullover `bulletproof vest`, T-shirt `abaya`). Not adopted: a blurred view (ties everywhere, brings back trouser",
    "`bolo tie`) and the object on a white canvas (ankle boots back to `hatchet` on sample_data, wrong runners-up",
    "`combination lock`, `bulletproof vest` on Fashion-MNIST); tried by hand, a canvas alone at 60 % or 90 % of the",
    "side named sample_data's ankle boots `hatchet` and bags `combination lock`. Families of up to 12 classes instead",
    "of 6 let `restraint` (locks, buckles, muzzles, nails) outweigh the bags (sample_data bag `combination lock`).",
    "Still not named: sandals (`oboe`, `ski`: the footwear family is 18th of the groups by mass on sample_data's",
    "sandals), sneakers, dresses (`pedestal`) and trousers (`can opener`; ImageNet has no trouser). No labelled folder",
    "of real photos was at hand offline; the tests' crops of scikit-learn's temple and flower photos are still",
    "`palace` and `daisy`. Leaving a cluster unnamed when the classifier is unsure was checked (by hand, on these",
    "views): no floor on the winning family's mass separates right names from wrong ones (sample_data's bags are",
    "right at 0.06, its trousers wrong at 0.15), so the clusters ImageNet cannot name get a wrong name, not none.",
]


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    sys.exit(main())
