"""Flag images that fit no cluster well: pure functions on numpy arrays, no I/O.

An image is an outlier when

* it is **far from its cluster's centre**: the cosine distance ``1 - z·c`` between its
  L2-normalised feature ``z`` and the normalised mean ``c`` of its cluster's normalised features is
  above ``median + 3 · 1.4826 · MAD`` of the same distances within that cluster and above that median
  + ``NEAR_COPY_DISTANCE`` (0.05), or
* it is **isolated** from the rest of the folder: its local outlier factor (LOF, Breunig et al.,
  SIGMOD 2000) at ``k = max(10, 2 % of the images)`` neighbours (at most 50) is above 1.3,
  its logarithm is above ``median + 3.5 · 1.4826 · MAD`` of the folder's (MAD floored at 0.03),
  and its k-th neighbour lies beyond ``NEAR_COPY_DISTANCE``, or, when asked,
* its **confidence** (the head's probability of the chosen cluster) is below ``min_confidence``
  (default 0: off).

Why a folder-level density test beside the per-cluster one: odd images that arrive together
share a cluster, pull its centre and widen its spread, so the distance test misses them. Their
k-th neighbour, with k larger than such a group, lies outside the group and far away, while the
neighbours of ordinary images sit at ordinary distances: the LOF (the neighbours' local density
over the image's own, from reachability distances) is high for the group and near 1 for the rest,
whatever the folder's spread. Measured (``make bench-outliers``): planted other-domain images
found on Fashion-MNIST 65 % -> 100 %, digits 100 % -> 100 %, wallpapers 0 -> 1 of 4, at 2.7 % ->
3.8 %, 2.8 % -> 4.2 % and 1.5 % -> 1.5 % of ordinary images flagged (with the near-copy floor
below, digits 1.9 % by distance alone -> 3.7 %). The log makes the ratio's
spread symmetric. 3.5 deviations instead of 3: at 3 the test alone flagged 4.7 % and 4.5 % of the
ordinary Fashion-MNIST and digits images, at 3.5 2.5 % and 3.1 %, with the same recall. The floors
(MAD 0.03, LOF 1.3: neighbours up to 30 % denser are no sign) keep a folder of nearly uniform
density, where the log-LOF's MAD is tiny, from flagging its tail: on Gaussian clusters of 50-1,000
points in 64-d the test flags 0-0.9 % on average; without the floors 3.7-6.0 % (3 clusters of
50-300 points), with a floor of 1.2 instead of 1.3 up to 3.1 %. Folders of fewer than
``2 · ISOLATION_K_MIN`` images get no isolation test. The feature store's ``assign`` applies
both tests with thresholds and neighbours from its training sample (:mod:`imgcluster.scale.labels`).
Cost: no search of its own after training in
the same run: ``assign`` trains on a kNN search at ``max(knn, k)`` neighbours and hands it to
:func:`find_outliers` (``neighbours``); with a given or cached head the test runs one search.

Why the near-copy floor: a folder of exact copies of one picture has no spread, so every scale taken
from it (the MAD of the distances, the copies' density) is zero, and a JPEG re-save of the picture
(0.015-0.033 from it with efficientnet-lite0) or a 2x upscale (0.001) was flagged both far
(distance cut 0.0045) and isolated (LOF 15-32). Within ``NEAR_COPY_DISTANCE`` two images are one
picture to the model, so a cluster's cut lies at least that far past its median distance, and an
image whose k-th neighbour is that close sits in a crowd of near copies, not alone. It is a
condition, not a floor on the LOF's distances: flooring them at 0.05 flattened the density of
scikit-learn's digits (upscaled 8x8 drawings, nearest neighbours at 0.02-0.05) and flagged more
of them. Measured: ordinary digits flagged 4.2 % -> 3.7 % (the distance test's margin: 2.8 % ->
1.9 %), the same recall; Fashion-MNIST and the wallpapers unchanged; Gaussian clusters unchanged at
real features' spread (noise 0.6), 0-0.9 % -> 0 % where their neighbours are under 0.05 (noise 0.15).

What it still misses: on the 68 wallpapers the 4 planted images made up 4 of one cluster's 20.
From the centre of its 16 wallpapers the two digits lie at 0.46-0.47, inside the wallpapers' own
spread (up to 0.60), and their LOF (1.03-1.04) is that of an ordinary wallpaper: 68 different
wallpapers are as unlike each other as a digit is to them. The two Fashion-MNIST images lie at
0.73-0.75 with LOF 1.28 and 1.31 against the threshold 1.30 (the floor) and 1.30 for the most
isolated wallpaper: one is found, narrowly (in a replicate with other plants and another training
seed, ``results_outliers_seed1.md``, their LOF are 1.19-1.20 and none is found; Fashion-MNIST
70 % -> 100 % there, at 2.5 % -> 3.7 % ordinary flagged). Candidates measured and not adopted
(``benchmarks/results_outliers.md``): a geometric-median or trimmed centre, 2.5 deviations
instead of 3, re-estimating centre and spread without the flagged, the k-th neighbour's distance
against the folder's, and the ImageNet classifier's view (an image whose top class is outside its
cluster's).

Why no rule of its own for small photo folders: nothing in the features tells the planted images
apart from ordinary ones. In a folder of 68 different wallpapers, apart from a theme's close
variants, every picture is far from all others (nearest neighbour at cosine distance 0.19 in the
median, a quarter of them 0.51 or more, the largest 0.67), so there is no dense "rest" for a few
images to be unlike. Measured (``python benchmarks/bench_outliers.py groups``, 10 draws each of 2-10
planted images, half digits, half Fashion-MNIST): a threshold on an image's group's distance to the
rest (its distance to the nearest image outside its tight group) passes 10-28 ordinary wallpapers
before it reaches the most apart planted image and 32-56 before the least; on the distance to the
folder's centre 1.4-5 and 26-55; on the LOF 0.4-8 and 42-61, of 68. The planted pairs look like 15 of the
68 wallpapers (a theme's light and dark variants, its 16:9 and 4:3 crops: nearest neighbour within
0.14, the next 3.5 times farther or more). Measured and not adopted, as none finds a planted
wallpaper (0 % in groups of 2-10 and in both seeds of ``make bench-outliers``, where 0 % of the
ordinary wallpapers are flagged): (a) a tight group of 2 to 5 % of the folder (linked within the
folder's median nearest-neighbour distance) whose distance to everything outside it is past the
robust limit of the folder's nearest-neighbour distances (it finds none of the planted images on
Fashion-MNIST and digits either); (b) the distance to the 5th neighbour outside the image's tight
group, robust over the folder (Fashion-MNIST 0 % flagged / 40-50 % found, digits 0.4 % / 100 %,
against the default's 3.7-3.8 % / 100 % and 3.7 % / 100 %); (c) the distance test against the
folder's centre instead of the cluster's (0.8 % / 70-80 %, 5.1 % / 100 %, and up to 5.2 % of
three Gaussian clusters on average, 28 % in one draw). Centring, standardising or square-rooting
the features first does not change that enough: at best (square-rooted, 2 planted images, a group's
distance to the rest) 4 ordinary wallpapers rank above the most apart planted image and 11 above the
least. Earlier: "a small cluster unlike the rest" (a cluster under half the
median size whose centre is past the robust limit of the clusters' distances to their nearest other
centre) found none of the wallpaper plants, on the head's clusters (they share one of 20 with 16
wallpapers) or on k-means groups of about 10; the LOF at k = max(5, 2 %) finds a planted pair only
because the group is smaller than k, and flags 4.3-6.5 % of the wallpapers (the default: 0-1.3 %)
while finding 50 % of groups of 4, 8 % of 6, none of 8; its largest LOF over k = 5 .. default loses
Fashion-MNIST's plants (100 % -> 60 %). Folders with repeated subjects (Fashion-MNIST, digits) are
where planted images stand out: 100 % found there.

Why the confidence test is off by default: a head's confidence says how sure it is *between
clusters*, and how sure it is depends on the objective's calibration and on the folder, not on
whether the image belongs. At 0.5 it flagged 14.7 % of 2,000 Fashion-MNIST images, 47.7 % of the
scikit-learn digits and 50 % of 68 wallpapers, where the distance test alone flags 2.7 %, 2.8 %
and 1.5 % and finds the same planted images from other domains on Fashion-MNIST (65 %) and
digits (100 %) (``make bench-outliers``, ``benchmarks/results_outliers.md``).

Why a robust threshold per cluster: clusters differ in spread (a tight "sneaker" cluster and a
loose "shirt" cluster), so one global distance cut flags whole loose clusters and misses strays
from tight ones. The median and the median absolute deviation (MAD) are not pulled by the very
outliers they are meant to find, as a mean and standard deviation are; ``1.4826 · MAD`` estimates
the standard deviation of normal data, so 3 of them is the usual "three sigma" rule made robust
(Leys et al., "Detecting outliers: do not use standard deviation around the mean, use absolute
deviation around the median", JESP 2013). The rule is one-sided: being unusually *close* to the
centre is never suspicious.

Clusters with fewer than ``MIN_CLUSTER_SIZE`` = 10 members get no distance test: the MAD of a
few numbers is itself noisy. Measured on Gaussian blobs in 64-d (4,000 draws each), the share of
ordinary members flagged is 4.0 % at 5 members, 2.3 % at 8, 1.6 % at 12, 1.2 % at 20 and 0.4 %
at 200. The MAD is floored at ``MAD_FLOOR`` so that a cluster of identical images does not flag
a member that differs only by float16 rounding.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from imgcluster.errors import ParameterError
from imgcluster.neighbours import knn_search, l2_normalise

DEFAULT_MIN_CONFIDENCE = 0.0  # off: see the module docstring
DEFAULT_MAD_FACTOR = 3.0  # thresholds at median + 3 robust standard deviations
MAD_TO_SD = 1.4826  # MAD -> standard deviation for normally distributed data
MIN_CLUSTER_SIZE = 10
MAD_FLOOR = 1e-3  # cosine distance; float16 features of identical images differ by ~1e-4
# Cosine distance within which two images are one picture to the model: a JPEG re-save of a picture lies at 0.015-0.033
# from it, a 2x upscale at 0.001 (efficientnet-lite0 on three pictures; tests/test_outliers.py builds such a folder).
NEAR_COPY_DISTANCE = 0.05
ISOLATION_K_MIN = 10  # neighbours for the LOF: more than a plausible group of odd images ...
ISOLATION_K_SHARE = 0.02  # ... or 2 % of the folder ...
ISOLATION_K_MAX = 50  # ... but no more, so that the neighbour lists stay small on large folders
ISOLATION_FACTOR = 3.5  # robust deviations of log LOF
ISOLATION_MAD_FLOOR = 0.03  # log LOF
ISOLATION_MIN_LOF = 1.3

REASON_CONFIDENCE = "low-confidence"
REASON_DISTANCE = "far-from-centre"
REASON_ISOLATED = "isolated"
RULE = (
    "cosine distance to the cluster's mean feature > median + max(3 * 1.4826 * MAD, 0.05) of that cluster (clusters of 10 "
    "or more), or local outlier factor at k = max(10, 2% of the images, at most 50) > 1.3 with log LOF > median + 3.5 * "
    "1.4826 * max(MAD, 0.03) of the folder and the k-th neighbour farther than cosine distance 0.05 (folders of 20 or "
    "more), or confidence < min_confidence"
)


@dataclass
class Outliers:
    flags: np.ndarray  # [N] bool: outlier or not
    low_confidence: np.ndarray  # [N] bool
    far_from_centre: np.ndarray  # [N] bool
    distance: np.ndarray  # [N] float32, cosine distance to the own cluster's centre
    thresholds: dict[int, float]  # cluster -> distance threshold (inf when the cluster is too small)
    isolated: np.ndarray  # [N] bool
    isolation: np.ndarray  # [N] float32, local outlier factor (nan when the folder is too small)
    isolation_threshold: float  # LOF above which an image is isolated (inf when the folder is too small)

    def __repr__(self) -> str:
        # The generated repr printed five arrays of every image (7,500 characters for 125 images).
        return (
            f"Outliers({self.count} of {len(self.flags)}: {int(self.far_from_centre.sum())} far from their cluster's centre, "
            f"{int(self.isolated.sum())} isolated, {int(self.low_confidence.sum())} of low confidence)"
        )

    @property
    def count(self) -> int:
        return int(self.flags.sum())

    def reasons(self) -> np.ndarray:
        """Per image ``"low-confidence"``, ``"far-from-centre"``, ``"isolated"``, those that apply joined by ``+``, or ``""``."""
        out = np.full(self.flags.shape[0], "", dtype=object)
        for i in np.flatnonzero(self.flags):
            tests = ((REASON_CONFIDENCE, self.low_confidence), (REASON_DISTANCE, self.far_from_centre), (REASON_ISOLATED, self.isolated))
            out[i] = "+".join(reason for reason, flagged in tests if flagged[i])
        return out.astype(str)

    def summary(self) -> dict[str, object]:
        """What the sidecar JSON records: the rule and the counts it produced."""
        return {
            "rule": RULE,
            "outliers": self.count,
            "low_confidence": int(self.low_confidence.sum()),
            "far_from_centre": int(self.far_from_centre.sum()),
            "isolated": int(self.isolated.sum()),
            "distance_thresholds": {str(k): (None if not np.isfinite(v) else round(v, 6)) for k, v in self.thresholds.items()},
            "isolation_threshold": None if not np.isfinite(self.isolation_threshold) else round(self.isolation_threshold, 6),
        }


def centre_distances(features: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Cosine distance of every image to the normalised mean feature of its own cluster."""
    z = l2_normalise(features)
    clusters = np.asarray(clusters)
    distance = np.zeros(z.shape[0], dtype=np.float32)
    centres: dict[int, np.ndarray] = {}
    for k in np.unique(clusters):
        members = clusters == k
        centre = l2_normalise(z[members].mean(0, keepdims=True))[0]
        centres[int(k)] = centre
        distance[members] = 1.0 - z[members] @ centre
    return np.clip(distance, 0.0, 2.0), centres


def robust_limit(values: np.ndarray, factor: float, mad_floor: float) -> float:
    """``median + factor · 1.4826 · max(MAD, mad_floor)`` of ``values``: a three-sigma rule that a few strays cannot widen."""
    median = np.median(values)
    return float(median + factor * MAD_TO_SD * max(float(np.median(np.abs(values - median))), mad_floor))


def robust_thresholds(
    distance: np.ndarray, clusters: np.ndarray, mad_factor: float = DEFAULT_MAD_FACTOR, near_copy: float = NEAR_COPY_DISTANCE
) -> dict[int, float]:
    """Per cluster :func:`robust_limit` of the distances (floor ``MAD_FLOOR``), at least ``near_copy`` past their median
    (a cluster of copies has no spread, and a re-save of them is no stray); ``inf`` for tiny clusters."""
    thresholds: dict[int, float] = {}
    for k in np.unique(clusters):
        d = distance[clusters == k].astype(np.float64)
        if d.size < MIN_CLUSTER_SIZE:
            thresholds[int(k)] = float("inf")
        else:
            thresholds[int(k)] = max(robust_limit(d, mad_factor, MAD_FLOOR), float(np.median(d)) + near_copy)
    return thresholds


def isolation_k(n: int) -> int:
    """Neighbours for the LOF of a folder of ``n`` images; 0 when the folder is too small to test."""
    if n < 2 * ISOLATION_K_MIN:
        return 0
    return min(max(ISOLATION_K_MIN, round(ISOLATION_K_SHARE * n)), ISOLATION_K_MAX)


def nearest(
    features: np.ndarray, k: int, use_gpu: bool = False, neighbours: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns of ``neighbours`` (a search already run on ``features``: (indices, similarities), self
    excluded, best first, as :func:`knn_search` returns) when it has that many, else a search of its own."""
    if neighbours is None or neighbours[0].shape[1] < k:
        neighbours = knn_search(features, k, use_gpu=use_gpu)
    return neighbours[0][:, :k], neighbours[1][:, :k]


def local_outlier_factor(
    features: np.ndarray, k: int, use_gpu: bool = False, neighbours: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Each image's LOF over cosine distances: its k neighbours' mean local density over its own.

    ``neighbours``: a search already run (:func:`nearest`). Distances are floored at ``MAD_FLOOR`` so that exact
    duplicates do not make a density infinite.
    """
    indices, sims = nearest(features, k, use_gpu, neighbours)
    k_distance, density = local_densities(indices, sims)
    return lof_against(indices, sims, k_distance, density)


def local_densities(indices: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k-distance, local reachability density) of every row from its own ``k`` neighbours (self excluded):
    what the LOF of a row, of this set or a new one, is measured against (:func:`lof_against`)."""
    distance = np.clip(1.0 - sims.astype(np.float64), MAD_FLOOR, 2.0)
    k_distance = distance[:, -1]
    return k_distance, lof_density(distance, k_distance[indices])


def lof_density(distance: np.ndarray, neighbour_k_distance: np.ndarray) -> np.ndarray:
    """Local reachability density: reachability is at least the neighbour's own k-distance."""
    return 1.0 / np.maximum(distance, neighbour_k_distance).mean(1)


def lof_against(indices: np.ndarray, sims: np.ndarray, k_distance: np.ndarray, density: np.ndarray) -> np.ndarray:
    """The LOF of rows whose ``k`` neighbours among a reference set are ``indices`` at similarities ``sims``,
    given the reference's :func:`local_densities`: the rows of that set itself, or rows it does not hold."""
    distance = np.clip(1.0 - sims.astype(np.float64), MAD_FLOOR, 2.0)
    own = lof_density(distance, k_distance[indices])
    return (density[indices].mean(1) / own).astype(np.float32)


def isolation_threshold(
    lof: np.ndarray, factor: float = ISOLATION_FACTOR, mad_floor: float = ISOLATION_MAD_FLOOR, min_lof: float = ISOLATION_MIN_LOF
) -> float:
    """``exp`` of the log LOF's :func:`robust_limit`, at least ``min_lof``."""
    return max(float(np.exp(robust_limit(np.log(lof.astype(np.float64)), factor, mad_floor))), min_lof)


def check_min_confidence(min_confidence: float) -> None:
    """Refuse a confidence floor outside [0, 1]; also called before the work of a run that ends in :func:`find_outliers`."""
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, numbers.Real) or not 0.0 <= min_confidence <= 1.0:
        raise ParameterError(f"{{min_confidence}} must lie in [0, 1], got {min_confidence!r}")


def find_outliers(
    features: np.ndarray,
    clusters: np.ndarray,
    confidence: np.ndarray,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    mad_factor: float = DEFAULT_MAD_FACTOR,
    use_gpu: bool = False,
    neighbours: tuple[np.ndarray, np.ndarray] | None = None,
) -> Outliers:
    """Flag images far from their cluster's centre, isolated from the folder, or below ``min_confidence`` (module docstring);
    ``use_gpu`` runs the neighbour search of the isolation test on the GPU; ``neighbours``, a search training already
    ran on ``features`` with at least :func:`isolation_k` columns, replaces it."""
    check_min_confidence(min_confidence)
    if mad_factor <= 0:
        raise ParameterError(f"{{mad_factor}} must be positive, got {mad_factor}")
    clusters = np.asarray(clusters)
    n = clusters.shape[0]
    if features.shape[0] != n or np.asarray(confidence).shape[0] != n:
        raise ValueError("features, clusters and confidence must have one row per image")
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return Outliers(empty, empty, empty, np.zeros(0, np.float32), {}, empty, np.zeros(0, np.float32), float("inf"))
    distance, _ = centre_distances(features, clusters)
    thresholds = robust_thresholds(distance, clusters, mad_factor)
    limit = np.array([thresholds[int(k)] for k in clusters])
    far = distance > limit
    k = isolation_k(n)
    lof, cut, isolated = np.full(n, np.nan, np.float32), float("inf"), np.zeros(n, dtype=bool)
    if k:
        searched = nearest(features, k, use_gpu, neighbours)
        lof = local_outlier_factor(features, k, neighbours=searched)
        cut = isolation_threshold(lof)
        # Among copies of one picture, which have no spread, a re-save's LOF is huge; its k-th neighbour is still a copy.
        isolated = (lof > cut) & (1.0 - searched[1][:, -1] > NEAR_COPY_DISTANCE)
    low = np.asarray(confidence, dtype=np.float64) < min_confidence
    return Outliers(
        flags=low | far | isolated, low_confidence=low, far_from_centre=far, distance=distance, thresholds=thresholds,
        isolated=isolated, isolation=lof, isolation_threshold=cut,
    )  # fmt: skip
