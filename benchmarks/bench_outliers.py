"""`make bench-outliers`: how many images each outlier rule flags, and whether it finds planted strays.

Folders: 2,000 Fashion-MNIST test images, scikit-learn digits (1,797) and real wallpapers (the
distinct originals of `make bench-duplicates`, shrunk to 512 px), embedded with
efficientnet-lite0 through the project's cached pipeline. Into each about 1 % images from other
domains are planted (digits and wallpapers into Fashion-MNIST, Fashion-MNIST and wallpapers into
digits, Fashion-MNIST and digits into the wallpapers). The default objective is trained on the
mixed folder with K = the number of classes (the wallpapers: K chosen by ``choose_k``), as
``assign`` would, and every rule is applied to its clusters and confidences.

Reported per folder and rule: the share of ordinary images flagged (want well under 10 %) and
the share of planted images flagged (recall); where the planted images went (their distance to
their cluster's centre and their local outlier factor against the ordinary images'); and the
isolation test on Gaussian clusters with nothing odd in them. Writes
``benchmarks/results_outliers.md``; ``python benchmarks/bench_outliers.py SEED`` draws other
planted images and trains with that seed, into ``results_outliers_seed<SEED>.md``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_near_duplicates import ensure_wallpapers, originals
from common import DATA, HERE, features, machine, neighbours_for
from datasets import FASHION_CLASSES, digits_folder, fashion_mnist_test, write_folder
from PIL import Image

from imgcluster.assign import predict
from imgcluster.choose_k import choose_k
from imgcluster.config import TrainConfig
from imgcluster.naming import class_probabilities
from imgcluster.neighbours import knn_search
from imgcluster.outliers import (
    DEFAULT_MIN_CONFIDENCE,
    MAD_FLOOR,
    find_outliers,
    isolation_k,
    isolation_threshold,
    local_outlier_factor,
    robust_limit,
)
from imgcluster.train import train_objective

OUT = HERE / "results_outliers.md"
FASHION_N = 2000
WALLPAPER_PX = 512


def isolated(x: np.ndarray, k: int = 10, mad_factor: float = 3.0) -> np.ndarray:
    """The rejected candidate: kNN spread over the neighbours' median spread (the local outlier factor's idea), robust 3 sigma."""
    indices, sims = knn_search(x, k)
    spread = np.clip(1.0 - sims.mean(1), MAD_FLOOR, 2.0)
    ratio = spread / np.median(spread[indices], axis=1)
    return ratio > robust_limit(ratio, mad_factor, 0.02)


def rules(x: np.ndarray, cluster: np.ndarray, confidence: np.ndarray) -> dict[str, np.ndarray]:
    """Each rule's flags for one folder."""
    old = find_outliers(x, cluster, confidence, min_confidence=0.5)
    new = find_outliers(x, cluster, confidence)
    return {
        "old default: confidence < 0.5 or far from centre": old.low_confidence | old.far_from_centre,
        "confidence < 0.5 alone": old.low_confidence,
        "previous default: far from centre": new.far_from_centre,
        f"new default: far from centre or isolated (LOF){'' if DEFAULT_MIN_CONFIDENCE == 0 else ' or low confidence'}": new.flags,
        "isolated (LOF) alone": new.isolated,
        "candidate: isolated (LOF) at 3 sigma": new.isolation > isolation_threshold(new.isolation, factor=3.0),
        "candidate: isolated (LOF), no floors": new.isolation > isolation_threshold(new.isolation, mad_floor=0.0, min_lof=0.0),
        "candidate: isolated (kNN ratio, k = 10)": isolated(x),
        "candidate: far from the geometric median": geometric_median_rule(x, cluster),
        "candidate: far from a trimmed centre": trimmed_centre_rule(x, cluster),
        "candidate: far from centre at 2.5 sigma": find_outliers(x, cluster, confidence, mad_factor=2.5).far_from_centre,
        "candidate: far from centre, re-estimated without the flagged": iterated_rule(x, cluster),
        "candidate: k-th neighbour far (k = max(5, 2 %)), robust over the folder": kth_neighbour_rule(x),
        "candidate: ImageNet top class outside its cluster's": classifier_rule(x, cluster),
    }


GAUSSIAN_VARIANTS = {"default": {}, "min LOF 1.2": {"min_lof": 1.2}, "no floors": {"mad_floor": 0.0, "min_lof": 0.0}}


def gaussian_isolation(draws: int = 10, dim: int = 64) -> list[str]:
    """The isolation test on folders with nothing odd in them: 1 or 3 Gaussian clusters around unit centres in 64-d
    (noise 0.15 in norm), the share of points flagged (mean and largest over draws) by the default and its variants."""
    rng = np.random.default_rng(0)
    lines = ["| points | clusters | " + " | ".join(GAUSSIAN_VARIANTS) + " |", "|---" * (len(GAUSSIAN_VARIANTS) + 2) + "|"]
    for n in (50, 100, 300, 1000):
        for k in (1, 3):
            shares: dict[str, list[float]] = {name: [] for name in GAUSSIAN_VARIANTS}
            for _ in range(draws):
                centres = rng.normal(size=(k, dim))
                centres /= np.linalg.norm(centres, axis=1, keepdims=True)
                x = centres[rng.integers(0, k, n)] + 0.15 * rng.normal(size=(n, dim)) / np.sqrt(dim)
                lof = local_outlier_factor(x.astype(np.float32), isolation_k(n))
                for name, options in GAUSSIAN_VARIANTS.items():
                    shares[name].append(float((lof > isolation_threshold(lof, **options)).mean()))
            cells = [f"{np.mean(v):.1%} (max {np.max(v):.1%})" for v in shares.values()]
            lines.append(f"| {n} | {k} | " + " | ".join(cells) + " |")
    return lines


def kth_neighbour_rule(x: np.ndarray, mad_factor: float = 3.0) -> np.ndarray:
    """The rejected candidate: the distance to the k-th neighbour (k above a plausible group of strays) against the
    folder's distribution of that distance, robust 3 sigma; dense and loose classes differ, so it is a cut on density."""
    k = max(5, round(0.02 * len(x)))
    _, sims = knn_search(x, k)
    d = 1.0 - sims[:, -1]
    return d > robust_limit(d, mad_factor, MAD_FLOOR)


def trimmed_centre_rule(x: np.ndarray, cluster: np.ndarray, mad_factor: float = 3.0) -> np.ndarray:
    """The rejected candidate: each cluster's centre from the half of its members nearest its mean, so that a group of
    strays at its edge cannot pull it; then the robust rule around that centre."""
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    flags = np.zeros(len(z), dtype=bool)
    for k in np.unique(cluster):
        members = np.flatnonzero(cluster == k)
        if len(members) < 10:
            continue
        centre = z[members].mean(0)
        d = 1.0 - z[members] @ (centre / np.linalg.norm(centre))
        centre = z[members][d <= np.median(d)].mean(0)
        d = 1.0 - z[members] @ (centre / np.linalg.norm(centre))
        flags[members] = d > robust_limit(d, mad_factor, MAD_FLOOR)
    return flags


def classifier_rule(x: np.ndarray, cluster: np.ndarray, mass: float = 0.8) -> np.ndarray:
    """The rejected candidate: the bundled Lite0's ImageNet classifier (the features are its input) puts an image's top
    class outside the classes that make up ``mass`` of its cluster's mean probability."""
    probabilities = class_probabilities(x)
    top = probabilities.argmax(1)
    flags = np.zeros(len(x), dtype=bool)
    for k in np.unique(cluster):
        members = np.flatnonzero(cluster == k)
        mean = probabilities[members].mean(0)
        order = np.argsort(-mean)
        kept = order[: int(np.searchsorted(np.cumsum(mean[order]), mass)) + 1]
        flags[members] = ~np.isin(top[members], kept)
    return flags


def geometric_median_rule(x: np.ndarray, cluster: np.ndarray, mad_factor: float = 3.0) -> np.ndarray:
    """The rejected candidate: the robust rule around each cluster's geometric median (50 % breakdown) instead of its mean."""
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    flags = np.zeros(len(z), dtype=bool)
    for k in np.unique(cluster):
        members = np.flatnonzero(cluster == k)
        if len(members) < 10:
            continue
        centre = z[members].mean(0)
        for _ in range(50):  # Weiszfeld's iterations
            weight = 1.0 / np.maximum(np.linalg.norm(z[members] - centre, axis=1), 1e-9)
            centre = (z[members] * weight[:, None]).sum(0) / weight.sum()
        d = 1.0 - z[members] @ (centre / np.linalg.norm(centre))
        flags[members] = d > robust_limit(d, mad_factor, MAD_FLOOR)
    return flags


def iterated_rule(x: np.ndarray, cluster: np.ndarray, mad_factor: float = 3.0, rounds: int = 10) -> np.ndarray:
    """The rejected candidate: each cluster's centre and spread estimated again without the images flagged so far,
    until the flags stop changing (finds more of a group of strays that pulls the centre, and flags more ordinary images)."""
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    flags = np.zeros(len(z), dtype=bool)
    for k in np.unique(cluster):
        members = np.flatnonzero(cluster == k)
        if len(members) < 10:
            continue
        keep = np.ones(len(members), dtype=bool)
        for _ in range(rounds):
            centre = z[members][keep].mean(0)
            d = 1.0 - z[members] @ (centre / np.linalg.norm(centre))
            inliers = d <= robust_limit(d[keep], mad_factor, MAD_FLOOR)
            if np.array_equal(inliers, keep):
                break
            keep = inliers
        flags[members] = ~keep
    return flags


def why_missed(x: np.ndarray, cluster: np.ndarray, is_planted: np.ndarray) -> str:
    """Where the planted images went: per cluster holding any, planted/size, and their distance to the centre of
    that cluster's ordinary images against the largest such distance of an ordinary image; then every planted
    image's LOF against the largest ordinary one and the isolation threshold."""
    z = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    parts = []
    for k in np.unique(cluster[is_planted]):
        members = cluster == k
        centre = z[members & ~is_planted].mean(0)
        centre /= np.linalg.norm(centre)
        ordinary = 1.0 - z[members & ~is_planted] @ centre
        planted = np.sort(1.0 - z[members & is_planted] @ centre)
        parts.append(
            f"{int((members & is_planted).sum())}/{int(members.sum())}: {', '.join(f'{d:.2f}' for d in planted)} vs {ordinary.max():.2f}"
        )
    found = find_outliers(x, cluster, np.ones(len(x)))
    lof = found.isolation
    planted_lof = ", ".join(f"{v:.2f}" for v in np.sort(lof[is_planted]))
    ordinary_lof = f"{lof[~is_planted].max():.2f} (threshold {found.isolation_threshold:.2f})"
    return "; ".join(parts) + f". LOF of the planted: {planted_lof} vs {ordinary_lof}"


def wallpaper_folder(out: Path) -> Path:
    if (out / ".complete").exists():
        return out
    ensure_wallpapers()
    (out / "wallpapers").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(originals()):
        with Image.open(path) as im:
            im.thumbnail((WALLPAPER_PX, WALLPAPER_PX))
            im.save(out / "wallpapers" / f"{i:03d}-{path.stem}.png")
    (out / ".complete").write_text("ok\n")
    return out


def folders() -> dict[str, Path]:
    images, labels = fashion_mnist_test()
    return {
        "fashion-mnist": write_folder(images[:FASHION_N], labels[:FASHION_N], FASHION_CLASSES, DATA / f"fashion-mnist-{FASHION_N}"),
        "digits": digits_folder(DATA / "digits"),
        "wallpapers": wallpaper_folder(DATA / "wallpapers"),
    }


def main(seed: int = 0) -> None:
    """Seed 0 writes ``results_outliers.md``; another seed draws other planted images and trains with that seed, a
    replicate that was not used to choose the rule's constants, into ``results_outliers_seed<seed>.md``."""
    started = time.perf_counter()
    load = os.getloadavg()
    missed: list[str] = []
    cpu = torch.device("cpu")
    feats = {name: features(folder, cpu)[0] for name, folder in folders().items()}
    plants = {name: [other for other in feats if other != name] for name in feats}
    classes = {"fashion-mnist": 10, "digits": 10}
    rng = np.random.default_rng(seed)
    lines = [
        f"# Outlier rules (`make bench-outliers`{'' if seed == 0 else f', seed {seed}: `python benchmarks/bench_outliers.py {seed}`'})",
        "",
        "Default objective trained on each mixed folder (efficientnet-lite0 features); every rule applied to its clusters.",
        "",
        "| folder | images | planted | K | median confidence |",
        "|---|---|---|---|---|",
    ]
    table: dict[str, list[str]] = {}
    for name, base in feats.items():
        per_source = max(2, round(0.005 * len(base)))
        planted = [feats[src][rng.choice(len(feats[src]), per_source, replace=False)] for src in plants[name]]
        x = np.concatenate([base, *planted]).astype(np.float32)
        is_planted = np.arange(len(x)) >= len(base)
        k = classes.get(name) or choose_k(x, 2, 20).k
        config = TrainConfig(clusters=k, seed=seed)
        trained = train_objective(x, neighbours_for(x, config.knn), config, cpu)
        assigned = predict(trained.objective, x, cpu)
        for rule, flags in rules(x, assigned.cluster, assigned.confidence).items():
            table.setdefault(rule, []).append(f"{flags[~is_planted].mean():.1%} / {flags[is_planted].mean():.0%}")
        median = float(np.median(assigned.confidence))
        lines.append(f"| {name} | {len(base)} | {int(is_planted.sum())} | {k} | {median:.2f} |")
        missed.append(f"- {name}: {why_missed(x, assigned.cluster, is_planted)}")
        print(lines[-1], missed[-1], *(f"{rule}: {cells[-1]}" for rule, cells in table.items()), sep="\n", flush=True)
    lines += [
        "",
        "Share of ordinary images flagged / share of planted other-domain images flagged (recall):",
        "",
        "| rule | " + " | ".join(feats) + " |",
        "|---" * (len(feats) + 1) + "|",
        *(f"| {rule} | " + " | ".join(cells) + " |" for rule, cells in table.items()),
    ]
    lines += [
        "",
        "The isolation test on ordinary Gaussian clusters (64-d, 10 draws each): share of points flagged, mean (largest):",
        "",
        *gaussian_isolation(),
    ]
    lines += [
        "",
        "Where the planted images went (per cluster holding any: planted/cluster size: each planted image's cosine distance",
        "to the centre of the cluster's ordinary images, vs the largest distance of an ordinary image there; then each",
        "planted image's local outlier factor vs the largest of an ordinary image, and the isolation threshold):",
        "",
        *missed,
        "",
        f"Took {time.perf_counter() - started:.0f} s on {machine()}, shared with five other engineers' work "
        f"(load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; shares do not depend on the load).",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    (OUT if seed == 0 else OUT.with_name(f"results_outliers_seed{seed}.md")).write_text(body)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
