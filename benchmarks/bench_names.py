"""`make bench-names`: do the cluster names agree with the labels, which names are withheld, and what does naming cost?

Each labelled folder's true classes stand in for clusters (so a clustering mistake cannot blur a
name), and each class is named as ``assign`` names a cluster of a folder drawn light on black: its
``PER_CLUSTER`` members nearest the centre shown inverted (``imgcluster.negatives``), their Lite0
features read by the families rule with distinctness (``imgcluster.naming``). A name is right when
its first class is one of the ImageNet classes a person would accept for the label (``ACCEPT``) or
shares a WordNet family with one (a ``Loafer`` for an ankle boot: footwear); labels with no
acceptable class (a shirt) are named but not counted; every digit's name is wrong (ImageNet has no
digits).

Sureness: for each cluster, candidate measures of how sure its name is (``MEASURES``); for each, the
one threshold that best separates right names from wrong ones on Fashion-MNIST *training* images
(``TRAIN_DRAWS`` draws of ``PER_CLASS`` a class, none of them in the test folders), and how that
threshold does on the test folders. ``assign`` withholds a name whose likeness is under
``imgcluster.naming.LIKENESS``.

The naming pass's cost is measured apart, in a process of its own for each version (``--naming-pass``):
this tree, and the tree of ``BASE`` (main as this round began: the likeness rule, without the kept guesses),
alternating, on the Fashion-MNIST test folder with its labels as clusters and a cold names cache;
the embedding's own model build is outside the measure, as in a cold ``assign`` the embedding makes
it either way. Writes ``benchmarks/results_names.md``; ``$BENCH_NAMES_DATA`` moves its folders and
caches; ``--names-only`` prints the tables and writes nothing.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from common import DATA, HERE, machine
from datasets import FASHION_CLASSES, digits_folder, ensure_fashion_mnist, fashion_mnist_test, read_idx, write_folder

import imgcluster
from imgcluster.families import imagenet_families
from imgcluster.naming import LEAN, _lemmas, class_probabilities
from imgcluster.negatives import PER_CLUSTER, mostly_negative, sample_rows

try:
    from imgcluster.naming import LIKENESS, _chosen, likeness
    from imgcluster.negatives import view_features
except ImportError:  # BASE's tree, where only --naming-pass runs
    pass

OUT = HERE / "results_names.md"
PER_CLASS = int(os.environ.get("BENCH_NAMES_PER_CLASS", "200"))
ROOT = Path(os.environ.get("BENCH_NAMES_DATA", DATA / "names" / str(PER_CLASS)))
TRAIN_DRAWS = int(os.environ.get("BENCH_NAMES_TRAIN_DRAWS", "2"))  # disjoint draws of PER_CLASS training images a class
BASE = "09e9fd0"  # main as round 21 began: the likeness rule; the withheld guesses not yet in the sidecar
ROUNDS = int(os.environ.get("BENCH_NAMES_ROUNDS", "3"))  # of the cost measure, each version once a round
BOOTSTRAP = 50  # resamples of a cluster's members for the stability measure
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
DIGITS = {str(d) for d in range(10)}


@dataclass
class Named:
    """One cluster (a label): its name, whether it is right, and its sureness measures."""

    folder: str
    label: str
    name: str
    verdict: str  # right, wrong, or - (not counted)
    measures: dict[str, float]


def first_class(name: str) -> str:
    """``"footwear: sandal, clog"`` -> ``"sandal"``."""
    return name.split(": ", 1)[-1].split(", ")[0]


def verdict(label: str, name: str) -> str:
    """``right`` (an accepted class, or one of its family), ``wrong``, or ``-`` for a label ImageNet cannot name."""
    if label in DIGITS:
        return "wrong"
    if not ACCEPT.get(label):
        return "-"
    lemmas, families = _lemmas(), imagenet_families()

    def family(lemma: str) -> int:
        return int(families.group[lemmas.index(lemma)])

    first = first_class(name)
    kin = families.names[family(first)] != "" and family(first) in {family(c) for c in ACCEPT[label]}
    return "right" if first in ACCEPT[label] or kin else "wrong"


def _scores(mean: np.ndarray, folder_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each family's mass, its score as ``name_of`` weighs it against the folder)."""
    mass = imagenet_families().mass(mean)
    return mass, mass * np.maximum(mass / np.maximum(folder_mass, 1e-12), 1.0) ** LEAN


def measures(features: np.ndarray, folder_mean: np.ndarray) -> tuple[str, dict[str, float]]:
    """A cluster's name (from its members' ``features``) and each candidate sureness measure of it."""
    families = imagenet_families()
    probabilities = class_probabilities(features)
    mean = probabilities.mean(axis=0)
    name, chosen = _chosen(mean, folder_mean=folder_mean)
    group = int(families.group[chosen])
    folder_mass = families.mass(folder_mean)
    mass, score = _scores(mean, folder_mass)
    runner_up = float(np.sort(score)[-2])
    logits = features @ class_weights()[0][chosen] + class_weights()[1][chosen]
    rng = np.random.default_rng(0)
    resampled = [
        int(np.argmax(_scores(probabilities[rng.integers(0, len(features), len(features))].mean(axis=0), folder_mass)[1]))
        for _ in range(BOOTSTRAP)
    ]
    weight = class_weights()[0]
    rows = _unit(features.astype(np.float32))
    cosines = rows @ _unit(weight).T  # [members, 1000]: each member's likeness of every class
    centred = rows @ _unit(weight - weight.mean(axis=0))[chosen]
    typical = np.argsort(-(rows @ _unit(rows.mean(axis=0))))[: max(1, len(rows) // 2)]
    mean_cosine = cosines.mean(axis=0)
    return name, {
        "likeness": likeness(features, chosen),
        "centred": float(centred.mean()),
        "typical half": float(cosines[typical, chosen].mean()),
        "other family": float(mean_cosine[chosen] - mean_cosine[families.group != group].max()),
        "mean feature": float(_unit(features.mean(axis=0)) @ _unit(weight[chosen])),
        "logit": float(logits.mean()),
        "mass": float(mass[group]),
        "top share": float(mean[chosen] / mass[group]),
        "over folder": float(mass[group] / max(folder_mass[group], 1e-12)),
        "votes": float(np.mean([np.argmax(families.mass(row)) == group for row in probabilities])),
        "margin": float(score[group] / max(runner_up, 1e-12)),
        "stability": float(np.mean(np.array(resampled) == group)),
    }


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def class_weights() -> tuple[np.ndarray, np.ndarray]:
    from imgcluster.naming import _classifier

    return _classifier()


MEASURES = [
    "likeness", "centred", "typical half", "other family", "mean feature", "logit", "mass", "top share", "over folder", "votes",
    "margin", "stability",
]  # fmt: skip


def measure(title: str, folder: Path) -> tuple[list[Named], bool]:
    """Each label of ``folder`` named from its members nearest the centre, with its measures."""
    embeddings = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=ROOT / "cache", device="cpu")
    labels = np.array([p.split("/", 1)[0] for p in embeddings.paths])
    codes = np.unique(labels, return_inverse=True)[1]
    rows = sample_rows(codes, PER_CLUSTER, embeddings.features)
    files = [embeddings.folder / embeddings.paths[i] for i in rows]
    negative = mostly_negative(files)
    cache = ROOT / "views" / folder.name  # a cache a folder: each call keeps only its own rows
    cache.mkdir(parents=True, exist_ok=True)
    plain = view_features(files, cache, ("plain",))
    folder_mean = class_probabilities(plain).mean(axis=0)
    named = []
    for label in sorted(set(labels)):
        members = labels[rows] == label
        name, found = measures(plain[members], folder_mean)
        named.append(Named(title, label, name, verdict(label, name), found))
    return named, negative


def best_threshold(values: np.ndarray, right: np.ndarray) -> tuple[float, int]:
    """(the threshold t whose rule "shown when value >= t" makes fewest errors, those errors); among equals, the middle
    of the widest gap between measured values."""
    points = np.unique(values)
    cuts = np.concatenate([[points[0] - 1e-3], (points[1:] + points[:-1]) / 2, [points[-1] + 1e-3]])
    gaps = np.concatenate([[np.inf], np.diff(points), [np.inf]])
    errors = np.array([int(np.sum(right & (values < t)) + np.sum(~right & (values >= t))) for t in cuts])
    best = np.flatnonzero(errors == errors.min())
    pick = best[np.argmax(gaps[best])]
    return float(cuts[pick]), int(errors[pick])


def shown_counts(named: list[Named], rule: Callable[[Named], bool]) -> str:
    """``right shown / right, wrong shown / wrong``."""
    counted = [n for n in named if n.verdict != "-"]
    right = [n for n in counted if n.verdict == "right"]
    wrong = [n for n in counted if n.verdict == "wrong"]
    return f"{sum(map(rule, right))}/{len(right)}, {sum(map(rule, wrong))}/{len(wrong)}"


def sureness_tables(train: list[Named], tests: dict[str, list[Named]]) -> list[str]:
    """Each measure's threshold from the training folders, and how it sorts the test folders' names."""
    counted = [n for n in train if n.verdict != "-"]
    right = np.array([n.verdict == "right" for n in counted])
    lines = [
        "| measure | threshold (training) | training errors | " + " | ".join(f"{t}: right shown, wrong shown" for t in tests) + " |",
        "|---" * (3 + len(tests)) + "|",
    ]
    lines.append(
        "| (every name shown) | - | "
        + f"{int((~right).sum())} of {len(right)} | "
        + " | ".join(shown_counts(n, lambda _: True) for n in tests.values())
        + " |"
    )
    for key in MEASURES:
        threshold, errors = best_threshold(np.array([n.measures[key] for n in counted]), right)
        cells = [shown_counts(n, lambda x, k=key, t=threshold: x.measures[k] >= t) for n in tests.values()]  # type: ignore[misc]
        lines.append(f"| {key} | {threshold:.3f} | {errors} of {len(right)} | " + " | ".join(cells) + " |")
    return lines


def names_table(named: list[Named]) -> list[str]:
    lines = ["| label | name | judged | shown | " + " | ".join(MEASURES) + " |", "|---" * (4 + len(MEASURES)) + "|"]
    for n in named:
        shown = "yes" if n.measures["likeness"] >= LIKENESS else "**withheld**"
        cells = " | ".join(f"{n.measures[k]:.3f}" for k in MEASURES)
        lines.append(f"| {n.label} | `{n.name}` | {n.verdict} | {shown} | {cells} |")
    return lines


def naming_pass(folder: Path) -> dict[str, float]:
    """``--naming-pass``: CPU seconds of one cold naming pass over ``folder`` (labels as clusters), in this process."""
    from imgcluster import folder as folder_module
    from imgcluster.kept import by_name, keeping

    embeddings = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=ROOT / "cache", device="cpu")
    clusters = np.unique([p.split("/", 1)[0] for p in embeddings.paths], return_inverse=True)[1]
    with tempfile.TemporaryDirectory() as cold, keeping("efficientnet-lite0"):
        by_name("efficientnet-lite0", torch.device("cpu"))  # what the embedding left, as in a cold assign
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        named = folder_module._names_of_negatives(replace(embeddings, cache_dir=Path(cold)), clusters, None)
        after = resource.getrusage(resource.RUSAGE_SELF)
    assert named is not None
    return {
        "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "wall": time.perf_counter() - wall,
        "load": os.getloadavg()[0],
    }


def cost(folder: Path) -> list[str]:
    """The naming pass of this tree and of ``BASE``, each in a fresh process, alternating."""
    base = ROOT / f"tree-{BASE}"
    if not (base / "imgcluster").is_dir():
        base.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", BASE, "imgcluster"], cwd=HERE.parent, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    trees = {f"before ({BASE}: this round's start)": base, "now (the withheld guesses kept)": HERE.parent}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(ROUNDS):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": "PASSIVE"}  # as imgcluster sets it
            out = subprocess.run(
                [sys.executable, __file__, "--naming-pass", str(folder)], env=env, check=True, capture_output=True, text=True
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(name, runs[name][-1], flush=True)
    lines = ["| version | CPU s, each round | wall s, each round | load average after each |", "|---|---|---|---|"]
    for name, got in runs.items():
        cells = [", ".join(f"{r[key]:.1f}" for r in got) for key in ("cpu", "wall", "load")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratio = np.median([b["cpu"] / a["cpu"] for a, b in zip(*runs.values())])
    return [*lines, "", f"Median ratio of CPU seconds, now over before, round by round: {ratio:.2f}.", ""]


def fashion_mnist_train() -> tuple[np.ndarray, np.ndarray]:
    root = ensure_fashion_mnist()
    return read_idx(root / "train-images-idx3-ubyte.gz"), read_idx(root / "train-labels-idx1-ubyte.gz")


def folders() -> tuple[dict[str, Path], dict[str, Path]]:
    """(training folders, test folders) by title."""
    images, labels = fashion_mnist_test()
    keep = np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(len(FASHION_CLASSES))])
    tests = {
        "sample_data": HERE.parent / "sample_data",
        f"Fashion-MNIST test {PER_CLASS}/class": write_folder(images[keep], labels[keep], FASHION_CLASSES, ROOT / "fm-test"),
        "digits": digits_folder(ROOT / "digits"),
    }
    images, labels = fashion_mnist_train()
    train = {}
    for draw in range(TRAIN_DRAWS):
        keep = np.concatenate([np.flatnonzero(labels == c)[draw * PER_CLASS : (draw + 1) * PER_CLASS] for c in range(len(FASHION_CLASSES))])
        title = f"Fashion-MNIST train {PER_CLASS}/class" + (f", draw {draw + 1}" if TRAIN_DRAWS > 1 else "")
        train[title] = write_folder(images[keep], labels[keep], FASHION_CLASSES, ROOT / f"fm-train{draw}")
    return train, tests


def main() -> None:
    started = time.perf_counter()
    load = os.getloadavg()
    train_folders, test_folders = folders()
    measured: dict[str, list[Named]] = {}
    negative: dict[str, bool] = {}
    for title, folder in {**train_folders, **test_folders}.items():
        measured[title], negative[title] = measure(title, folder)
        print(title, [(n.label, n.name, n.verdict) for n in measured[title]], flush=True)
    train = [n for title in train_folders for n in measured[title]]
    lines = ["# Cluster names against labels: which are right, which are withheld, and their cost (`make bench-names`)", "", *HEADER, ""]
    lines += [
        "## Sureness measures: thresholds chosen on the training images",
        "",
        *sureness_tables(train, {t: measured[t] for t in test_folders}),
        "",
    ]
    lines += [f"`imgcluster.naming.LIKENESS` is {LIKENESS}.", ""]
    for title in [*train_folders, *test_folders]:
        lines += [f"## {title} (judged drawn light on black: {negative[title]})", "", *names_table(measured[title]), ""]
    print("\n".join(lines), flush=True)
    if "--names-only" in sys.argv[1:]:
        return
    fashion = test_folders[f"Fashion-MNIST test {PER_CLASS}/class"]
    lines += [
        f"## The naming pass's cost, Fashion-MNIST test {PER_CLASS} per class ({10 * PER_CLASS} images, 10 clusters)",
        "",
        *cost(fashion),
    ]
    lines.append(
        f"Took {time.perf_counter() - started:.0f} s on {machine()}, shared with four other engineers' work "
        f"(load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); names do not depend on the load, "
        "CPU seconds do (compare the versions round by round)."
    )
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


HEADER = """Each true class is named as `assign` names a cluster of a folder drawn light on black (see `benchmarks/bench_names.py`):
its 16 members nearest the centre shown inverted, their Lite0 features read by the classifier, classes summed by WordNet
family and each family weighed by how much more of it the cluster has than the folder. A name is right when its first
class is one ImageNet would accept for the label (`ACCEPT` in the script) or shares a family with one; shirts (no
ImageNet class) are not counted; every digit's name is wrong. Columns of the sureness tables: likeness, the mean cosine
between the members' features and the classifier's weights for the named class; centred, the same against the class's
weights less the mean of all 1000 classes' weights; typical half, the likeness of the 8 of the 16 members nearest their
mean only; other family, the likeness less the best likeness of any class of another family (for the members' mean
cosine to each class); mean feature, the cosine between the members' mean feature and the class's weights; logit, the
members' mean logit for it; mass, the winning family's share of the mean probabilities; top share, its top class's
share of that; over folder, the family's mass over the folder's; votes, the share of members whose own heaviest family
it is; margin, the family's score over the runner-up's; stability, the share of 50 resamples of the members that name
the same family.

Conclusions. The classifier is wrong consistently: the measures of how sure the softmax is (mass, top share, votes,
margin, stability) are as high for the sandals' `ski` and the trousers' `can opener` as for the T-shirts' `jersey`,
and no threshold on them chosen on training images holds on the test folders (votes shows 3 of 3 wrong names on the
Fashion-MNIST test folder, stability 3 of 3). What tells them apart is whether the images look like the class at all:
likeness and logit each separate the 18 counted names of the two training draws but for one (a coat called
`bulletproof vest`), and on the test folders withhold both wrong names of sample_data, 2 of the 3 wrong names of
Fashion-MNIST and all 10 digits' names, at a cost of right names withheld (sample_data's weak `mailbag`; Fashion-MNIST's
dress `abaya` and, for likeness, the ankle boots' `Loafer`). Adopted (round 20): likeness, chosen before the run as the
measure to try first (scale-free: it does not move with the features' length or the classifier's biases), at the
training images' cut, 0.164 (`imgcluster.naming.LIKENESS`); logit tied it on the training images and was not picked for
its one more right name on a test folder. Still shown wrongly: the Fashion-MNIST test sandals' `ski` (likeness 0.178;
the training draws' sandals were 0.150 and 0.153). A second view (mirrored) was measured in an earlier round: on these
members it changes no name, so it cannot tell a wrong name either.

Round 21, tried and lost (a time-boxed attempt; the bar for adopting a measure was to withhold more wrong names than
likeness without withholding more right ones, on both sample_data and the Fashion-MNIST test folder; thresholds chosen
on the training draws only, as before): four variants of the likeness (columns centred, typical half, other family,
mean feature). None withholds the sandals' `ski`, which on every one of them looks more like its class than right names
do (likeness 0.178, typical half 0.185, mean feature 0.197). Centred weights change no verdict: the classifier's mean
weight is small, so every likeness moves by about +0.002 and the cut with it. The typical half makes 2 training errors
and the same verdicts on the test folders. The margin over the best class of another family makes 3 training errors,
shows one more wrong name on the Fashion-MNIST test folder (the trousers' `can opener`) and withholds one more right
name on each test folder. The mean feature is the nearest miss: 1 training error, the same wrong names withheld, and
on the Fashion-MNIST test folder one right name more shown (the dresses' `abaya`, 0.178 against its cut 0.176); but
it withholds no more wrong names, and its training cut lies in a gap of 0.002 (the first draw's sneakers at 0.175, the
second draw's ankle boots at 0.177), too thin to trust. Also measured in the scratch run and not kept as columns: a
z-score of the class's likeness among all 1000 (the same verdicts as likeness), each member's likeness relative to its
best class's (3 training errors, shows 4 of 10 digits' names), the share of members whose best class it is (3 errors),
the median member's likeness (the same verdicts). Likeness stays.

Better names, tried in round 20 in a scratch run and not adopted: the classifier read as a cosine classifier (softmax
of a scaled cosine between features and class weights, no biases) names one more training class right (the dress
`abaya`, was `pedestal`) but the same on the Fashion-MNIST test folder (6 of 9) and no better on sample_data (3 of 5 at
the scale 40, 2 of 5 at 60 and 80). A prior correction, each class's probability divided by its mean over a fixed
reference set of drawings (the 160 inverted scikit-learn digits of this bench, to the power 0.25 or 0.5), changed no
verdict on any folder (training draws 4 and 5 of 9, test 6 of 9, sample_data 3 of 5, as without it).

Cost (last table): this round adds no work to the naming pass (the withheld guesses it already computed are said once
and written to the sidecar); it is measured against main as the round began, in fresh processes, alternating. In round
20 the pass went from caching class probabilities to caching Lite0's 1280 pooled features (2.8 and 3.1 CPU s against
3.3 and 3.4, ratio 0.88, load 14-15), with the same forward passes.

Round 23, tried and lost: what the classifier is shown (`python benchmarks/bench_names_renders.py`, its tables in
`results_names_renders.md`; 2026-11-30 16:58-18:03 UTC, 2-core CPU, no GPU, load 2.4-9; round 21's folders and
caches). Every measure above changes how sure a name is; this round changed the pixels the naming pass reads instead,
for its 16 members a cluster only (the clusters and the folders' features unchanged), read by `assign`'s rule as is and
judged as above: the inverted drawing at 192, 160, 128 or 96 px of the 224 px crop, centred on a white canvas (the
margin of a product shot); at 128 px on a grey (235) ground; the whole drawing on that grey ground; enlarged by Lanczos,
or by nearest neighbour and a 2 px blur, instead of bicubic; bicubic and a 1 px blur; bicubic and sharpened (unsharp
mask); its tones at gamma 0.7 and 1.4; its contrast stretched;
its bounding box filling the crop; Lite0 at a 288 or 320 px input (the same framing, more pixels); and the features
averaged over plain + canvas 160 + canvas 128, canvas 160 + 128 + 96, plain + canvas 128, plain + bounding box, plain +
gamma 1.4. None names a sandal, sneaker or trouser right on any folder: the sandals stay `ski`, `oboe` or
`assault rifle`, the sneakers cutting implements or `hatchet`, the trousers `can opener`. A smaller object is worse,
not better: at 192 px and below the ankle boots are `hatchet` on every folder (but the Fashion-MNIST test folder at
96 px), sample_data's bags `combination lock` or `binder`, and at 128 and 96 px most T-shirts and pullovers `can
opener`, `whistle` or `bulletproof vest` (3 and 1 of the 18 counted training names right, against 9); the bounding box
filling the crop and the larger inputs lose the boots (`hatchet`, `muzzle`; at 288 and 320 px all but sample_data's)
and sample_data's bags (`binder`, `cassette player`) the same way. The renders that keep
most plain names change no wrong one to a right one: the grey ground (sample_data's bags `combination lock`, the test
folder's pullovers `hand-held computer`), Lanczos and gamma 0.7 (one draw's ankle boots `muzzle`; 6 of 8 right names
shown on the training draws), and the
stretched contrast (the same verdicts on the training draws, but sample_data's sandals `assault rifle, ski` at
likeness 0.164: one more wrong name shown). The nearest miss is plain + gamma 1.4: on the training draws the same names
and verdicts as plain (9 right and 9 wrong named; 9 right and 1 wrong shown at 0.164, which is again its own cut),
on sample_data the same verdicts (the T-shirts `jersey, abaya`), and on the Fashion-MNIST test folder one right name
more shown (the ankle boots' `Loafer`, likeness 0.165, was 0.161) and one right name lost (the dresses `pedestal`, was
`abaya`; withheld either way), the sandals' `ski` still shown; no better on the training draws, where the bar is set,
at twice the naming pass's forward passes: not adopted. The only render that names more training classes right is
the sharpened one (10 of 18, the first draw's dresses `abaya`, was `pedestal`), but it raises the wrong names' likeness
with the right ones' (the sandals' `ski` 0.164 and 0.161, the trousers' `can opener` 0.161 and 0.157): at 0.164 it
shows 8 right names on the training draws, one fewer than plain (and withholds sample_data's ankle boots, 0.163), and
at its own cut, 0.161, it shows 10 right and 2 wrong (the first draw's sandals), and on the Fashion-MNIST test folder
the trousers' `can opener` (0.163) beside the sandals' `ski`: not adopted. A 1 px blur changes one test name (the
dresses `pedestal`, withheld either way). Item 2 of the round: the family table already judges a right
class right (sandal and running shoe are footwear with clog, Loafer and cowboy boot; mailbag, purse, backpack and
plastic bag are bag; sweatshirt and cardigan are sweater; jersey and jean stand alone, accepted for T-shirts and
trousers by name), so nothing changed there. No default changed; the tables below are round 21's run.""".splitlines()


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if sys.argv[1:2] == ["--naming-pass"]:
        print(json.dumps(naming_pass(Path(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
