"""Flag images that fit no cluster well: pure functions on numpy arrays, no I/O.

An image is an outlier when

* it is **far from its cluster's centre**: the cosine distance ``1 - z·c`` between its
  L2-normalised feature ``z`` and the normalised mean ``c`` of its cluster's normalised features is
  above ``median + 3 · 1.4826 · MAD`` of the same distances within that cluster, or, when asked,
* its **confidence** (the head's probability of the chosen cluster) is below ``min_confidence``
  (default 0: off).

Why the confidence test is off by default: a head's confidence says how sure it is *between
clusters*, and how sure it is depends on the objective's calibration and on the folder, not on
whether the image belongs. At 0.5 it flagged 14.7 % of 2,000 Fashion-MNIST images, 47.7 % of the
scikit-learn digits and 50 % of 68 wallpapers, where the distance test alone flags 2.7 %, 2.8 %
and 1.5 % and finds the same planted images from other domains on Fashion-MNIST (65 %) and
digits (100 %) (``make bench-outliers``, ``benchmarks/results_outliers.md``). A test of each
image's kNN distance relative to its neighbours' (as the local outlier factor does) was measured
too and found no planted image the distance test missed.

What it misses: odd images that arrive together share a cluster, pull its centre and widen its
spread. On the 68 wallpapers the 4 planted drawings made up 4 of one cluster's 20 images; from
the centre of its 16 wallpapers two of them lie inside the wallpapers' own spread and two just
beyond it, by less than three robust deviations of so diverse a group, so none is flagged. A
geometric-median centre (robust to that pull) found none either; 2.5 deviations instead of 3
raised the ordinary share on Fashion-MNIST from 2.7 % to 4.9 % and still found none there;
re-estimating centre and spread without the flagged until the flags settle found 90 % instead of
65 % of the Fashion-MNIST plants but flagged 3.4 % instead of 2.7 % of its ordinary images (digits
3.6 % instead of 2.8 %), and none of the wallpapers' plants.

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

from dataclasses import dataclass

import numpy as np

from imgcluster.errors import ParameterError
from imgcluster.neighbours import l2_normalise

DEFAULT_MIN_CONFIDENCE = 0.0  # off: see the module docstring
DEFAULT_MAD_FACTOR = 3.0  # thresholds at median + 3 robust standard deviations
MAD_TO_SD = 1.4826  # MAD -> standard deviation for normally distributed data
MIN_CLUSTER_SIZE = 10
MAD_FLOOR = 1e-3  # cosine distance; float16 features of identical images differ by ~1e-4

REASON_CONFIDENCE = "low-confidence"
REASON_DISTANCE = "far-from-centre"
RULE = (
    "cosine distance to the cluster's mean feature > median + 3 * 1.4826 * MAD of that cluster (clusters of 10 or more), "
    "or confidence < min_confidence"
)


@dataclass
class Outliers:
    flags: np.ndarray  # [N] bool: outlier or not
    low_confidence: np.ndarray  # [N] bool
    far_from_centre: np.ndarray  # [N] bool
    distance: np.ndarray  # [N] float32, cosine distance to the own cluster's centre
    thresholds: dict[int, float]  # cluster -> distance threshold (inf when the cluster is too small)

    @property
    def count(self) -> int:
        return int(self.flags.sum())

    def reasons(self) -> np.ndarray:
        """Per image ``"low-confidence"``, ``"far-from-centre"``, both joined by ``+``, or ``""``."""
        out = np.full(self.flags.shape[0], "", dtype=object)
        for i in np.flatnonzero(self.flags):
            parts = [REASON_CONFIDENCE] if self.low_confidence[i] else []
            if self.far_from_centre[i]:
                parts.append(REASON_DISTANCE)
            out[i] = "+".join(parts)
        return out.astype(str)

    def summary(self) -> dict[str, object]:
        """What the sidecar JSON records: the rule and the counts it produced."""
        return {
            "rule": RULE,
            "outliers": self.count,
            "low_confidence": int(self.low_confidence.sum()),
            "far_from_centre": int(self.far_from_centre.sum()),
            "distance_thresholds": {str(k): (None if not np.isfinite(v) else round(v, 6)) for k, v in self.thresholds.items()},
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


def robust_thresholds(distance: np.ndarray, clusters: np.ndarray, mad_factor: float = DEFAULT_MAD_FACTOR) -> dict[int, float]:
    """Per cluster ``median + mad_factor · 1.4826 · max(MAD, MAD_FLOOR)``; ``inf`` for tiny clusters."""
    thresholds: dict[int, float] = {}
    for k in np.unique(clusters):
        d = distance[clusters == k].astype(np.float64)
        if d.size < MIN_CLUSTER_SIZE:
            thresholds[int(k)] = float("inf")
            continue
        median = float(np.median(d))
        mad = max(float(np.median(np.abs(d - median))), MAD_FLOOR)
        thresholds[int(k)] = median + mad_factor * MAD_TO_SD * mad
    return thresholds


def check_min_confidence(min_confidence: float) -> None:
    """Refuse a confidence floor outside [0, 1]; also called before the work of a run that ends in :func:`find_outliers`."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ParameterError(f"{{min_confidence}} must lie in [0, 1], got {min_confidence}")


def find_outliers(
    features: np.ndarray,
    clusters: np.ndarray,
    confidence: np.ndarray,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    mad_factor: float = DEFAULT_MAD_FACTOR,
) -> Outliers:
    """Flag images far from their cluster's centre, and those below ``min_confidence`` (see the module docstring)."""
    check_min_confidence(min_confidence)
    if mad_factor <= 0:
        raise ParameterError(f"{{mad_factor}} must be positive, got {mad_factor}")
    clusters = np.asarray(clusters)
    n = clusters.shape[0]
    if features.shape[0] != n or np.asarray(confidence).shape[0] != n:
        raise ValueError("features, clusters and confidence must have one row per image")
    if n == 0:
        empty = np.zeros(0, dtype=bool)
        return Outliers(empty, empty, empty, np.zeros(0, np.float32), {})
    distance, _ = centre_distances(features, clusters)
    thresholds = robust_thresholds(distance, clusters, mad_factor)
    limit = np.array([thresholds[int(k)] for k in clusters])
    far = distance > limit
    low = np.asarray(confidence, dtype=np.float64) < min_confidence
    return Outliers(flags=low | far, low_confidence=low, far_from_centre=far, distance=distance, thresholds=thresholds)
