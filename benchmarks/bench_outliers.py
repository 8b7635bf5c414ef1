"""`make bench-outliers`: how many images each outlier rule flags, and whether it finds planted strays.

Folders: 2,000 Fashion-MNIST test images, scikit-learn digits (1,797) and real wallpapers (the
distinct originals of `make bench-duplicates`, shrunk to 512 px), embedded with
efficientnet-lite0 through the project's cached pipeline. Into each about 1 % images from other
domains are planted (digits and wallpapers into Fashion-MNIST, Fashion-MNIST and wallpapers into
digits, Fashion-MNIST and digits into the wallpapers). The default objective is trained on the
mixed folder with K = the number of classes (the wallpapers: K chosen by ``choose_k``), as
``assign`` would, and every rule is applied to its clusters and confidences.

Reported per folder and rule: the share of ordinary images flagged (want well under 10 %) and
the share of planted images flagged (recall). Writes ``benchmarks/results_outliers.md``.
"""

from __future__ import annotations

import os
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
from imgcluster.neighbours import knn_search
from imgcluster.outliers import DEFAULT_MIN_CONFIDENCE, MAD_FLOOR, MAD_TO_SD, find_outliers
from imgcluster.train import train_objective

OUT = HERE / "results_outliers.md"
FASHION_N = 2000
WALLPAPER_PX = 512


def isolated(x: np.ndarray, k: int = 10, mad_factor: float = 3.0) -> np.ndarray:
    """The rejected candidate: kNN spread over the neighbours' median spread (the local outlier factor's idea), robust 3 sigma."""
    indices, sims = knn_search(x, k)
    spread = np.clip(1.0 - sims.mean(1), MAD_FLOOR, 2.0)
    ratio = spread / np.median(spread[indices], axis=1)
    median = np.median(ratio)
    return ratio > median + mad_factor * MAD_TO_SD * max(float(np.median(np.abs(ratio - median))), 0.02)


def rules(x: np.ndarray, cluster: np.ndarray, confidence: np.ndarray) -> dict[str, np.ndarray]:
    """Each rule's flags for one folder."""
    old = find_outliers(x, cluster, confidence, min_confidence=0.5)
    new = find_outliers(x, cluster, confidence)
    return {
        "old default: confidence < 0.5 or far from centre": old.flags,
        "confidence < 0.5 alone": old.low_confidence,
        f"new default: far from centre{'' if DEFAULT_MIN_CONFIDENCE == 0 else f' or confidence < {DEFAULT_MIN_CONFIDENCE}'}": new.flags,
        "candidate: isolated (kNN ratio)": isolated(x),
        "far from centre or isolated": new.flags | isolated(x),
        "candidate: far from the geometric median": geometric_median_rule(x, cluster),
        "candidate: far from centre at 2.5 sigma": find_outliers(x, cluster, confidence, mad_factor=2.5).flags,
        "candidate: far from centre, re-estimated without the flagged": iterated_rule(x, cluster),
    }


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
        median = np.median(d)
        flags[members] = d > median + mad_factor * MAD_TO_SD * max(float(np.median(np.abs(d - median))), MAD_FLOOR)
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
            median = np.median(d[keep])
            inliers = d <= median + mad_factor * MAD_TO_SD * max(float(np.median(np.abs(d[keep] - median))), MAD_FLOOR)
            if np.array_equal(inliers, keep):
                break
            keep = inliers
        flags[members] = ~keep
    return flags


def why_missed(x: np.ndarray, cluster: np.ndarray, is_planted: np.ndarray) -> str:
    """Where the planted images went: per cluster holding any, planted/size, and their distance to the centre of
    that cluster's ordinary images against the largest such distance of an ordinary image."""
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
    return "; ".join(parts)


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


def main() -> None:
    started = time.perf_counter()
    load = os.getloadavg()
    missed: list[str] = []
    cpu = torch.device("cpu")
    feats = {name: features(folder, cpu)[0] for name, folder in folders().items()}
    plants = {name: [other for other in feats if other != name] for name in feats}
    classes = {"fashion-mnist": 10, "digits": 10}
    rng = np.random.default_rng(0)
    lines = [
        "# Outlier rules (`make bench-outliers`)",
        "",
        "Share of ordinary images flagged / share of planted other-domain images flagged (recall), "
        "default objective trained on each mixed folder (efficientnet-lite0 features).",
        "",
    ]
    for name, base in feats.items():
        per_source = max(2, round(0.005 * len(base)))
        planted = [feats[src][rng.choice(len(feats[src]), per_source, replace=False)] for src in plants[name]]
        x = np.concatenate([base, *planted]).astype(np.float32)
        is_planted = np.arange(len(x)) >= len(base)
        k = classes.get(name) or choose_k(x, 2, 20).k
        config = TrainConfig(clusters=k, seed=0)
        trained = train_objective(x, neighbours_for(x, config.knn), config, cpu)
        assigned = predict(trained.objective, x, cpu)
        flagged = rules(x, assigned.cluster, assigned.confidence)
        if name == next(iter(feats)):
            header = "| folder | images | planted | K | median confidence | " + " | ".join(flagged) + " |"
            lines += [header, "|---" * (len(flagged) + 5) + "|"]
        cells = [f"{flags[~is_planted].mean():.1%} / {flags[is_planted].mean():.0%}" for flags in flagged.values()]
        median = float(np.median(assigned.confidence))
        lines.append(f"| {name} | {len(base)} | {int(is_planted.sum())} | {k} | {median:.2f} | " + " | ".join(cells) + " |")
        missed.append(f"- {name}: {why_missed(x, assigned.cluster, is_planted)}")
        print(lines[-1], missed[-1], sep="\n", flush=True)
    lines += [
        "",
        "Where the planted images went (per cluster holding any: planted/cluster size: each planted image's cosine distance",
        "to the centre of the cluster's ordinary images, vs the largest distance of an ordinary image there):",
        "",
        *missed,
        "",
        f"Took {time.perf_counter() - started:.0f} s on {machine()}, shared with five other engineers' work "
        f"(load average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; shares do not depend on the load).",
    ]
    body = "\n".join(lines) + "\n"
    print(body)
    OUT.write_text(body)


if __name__ == "__main__":
    main()
