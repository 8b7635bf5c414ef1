"""The assignment columns of one block of a feature store's rows, from a head and what its sample showed.

A streaming pass sees each row once and never all of them, so what ``assign`` computes over the
whole folder is estimated on the training sample (a seeded uniform sample of the store, all of it
when the store is no larger) and then applied row by row:

- ``outlier`` / ``outlier_reason``, with the folder's rules (:mod:`imgcluster.outliers`):
  - far from the centre: each cluster's centre and distance threshold (median + 3 x 1.4826 x
    MAD) come from the sample's members of that cluster; a cluster with fewer than 10 members in
    the sample gets no distance test, as in a folder.
  - isolated: the local outlier factor at the folder's ``k`` (2 % of the sample's rows, 10 to 50)
    from the sample's kNN (one machine's search, or the partitioned search as Ray tasks above
    ``knn_threshold``: :func:`imgcluster.scale.knn.scale_knn`), and its threshold from the
    sample's LOFs. A row of the sample keeps its LOF among the sample (so a store no larger than
    the sample gets the folder's column exactly); any other row's ``k`` neighbours are searched
    among the sample (:class:`imgcluster.scale.knn.Reference`) and its LOF is measured against
    the sample's densities, as a new image's would be.
  - ``min_confidence`` is per row.
- ``cluster_name``: from the sample's members (:mod:`imgcluster.naming`), only for stores of the
  bundled EfficientNet-Lite0's features: for any other backbone it would take an extra Lite0
  pass over every image, which at this scale costs as much as the embedding itself. When the
  store's source is a local folder that can be read and is drawn light on black, the chosen
  members' files are shown to the classifier inverted as a folder's ``assign`` does
  (:func:`imgcluster.negatives.drawing_names`); a source on object storage, or one that is gone,
  is named from the features and the sidecar says why.

Near-duplicates are not offered at this scale: they need every row's neighbours and a decode of
each candidate pair's pixels (docs/scale.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcluster.neighbours import l2_normalise
from imgcluster.progress import ProgressFn, Reporter, count

if TYPE_CHECKING:
    from imgcluster.naming import Naming
    from imgcluster.negatives import OnnxLite0
    from imgcluster.scale.knn import Reference


@dataclass
class Isolation:
    """The isolation test's estimates: the sample's LOF per row, its densities and a search over it.

    Memory: 5 numbers per sample row (key, row, LOF, k-distance, density: 36 bytes, 72 MB at
    2M rows) besides the reference's unit features (the sample's size again in float32) and the
    row each of them was; no neighbour table.
    """

    k: int
    threshold: float  # LOF above which a row is isolated
    seed: int  # of the sample's path keys (:func:`imgcluster.scale.sample.path_keys`)
    keys: np.ndarray  # [n] uint64, the sample rows' path keys, ascending
    rows: np.ndarray  # [n] the sample row of each key
    lof: np.ndarray  # [n] float32, each sample row's LOF among the sample (itself excluded), in sample order
    k_distance: np.ndarray  # [n] float64
    density: np.ndarray  # [n] float64
    reference: Reference
    search: dict[str, Any]  # how the sample's neighbours were searched (the sidecar's record)

    def scores(self, paths: list[str], z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(LOF, distance to the k-th neighbour) of rows ``paths`` with unit features ``z``: the sample's for its
        own rows, else against the sample."""
        from imgcluster.outliers import lof_against
        from imgcluster.scale.sample import path_keys

        keys = path_keys(paths, self.seed)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        known = self.keys[at] == keys
        lof = np.empty(len(paths), np.float32)
        kth = np.empty(len(paths), np.float64)
        lof[known] = self.lof[self.rows[at[known]]]
        kth[known] = self.k_distance[self.rows[at[known]]]
        new = np.flatnonzero(~known)
        if new.size:
            indices, sims = self.reference.search(z[new], self.k)
            lof[new] = lof_against(indices, sims, self.k_distance, self.density)
            kth[new] = 1.0 - sims[:, -1].astype(np.float64)
        return lof, kth

    def isolated(self, paths: list[str], z: np.ndarray) -> np.ndarray:
        """Whether each row is isolated, as :func:`imgcluster.outliers.find_outliers` judges a folder's: its LOF
        above the threshold and its k-th neighbour farther than a near copy."""
        from imgcluster.outliers import NEAR_COPY_DISTANCE

        lof, kth = self.scores(paths, z)
        return (lof > self.threshold) & (kth > NEAR_COPY_DISTANCE)


def fit_isolation(
    features: np.ndarray,
    paths: list[str],
    seed: int,
    *,
    knn_threshold: int,
    nprobe: int,
    use_gpu: bool = False,
    progress: ProgressFn | None = None,
) -> Isolation | None:
    """The isolation test fitted on the sample (``features`` float32, ``paths`` its rows, ``seed`` its
    path keys'); None when the sample is too small for it (the folder's rule, :func:`imgcluster.outliers.isolation_k`).

    The kNN table (N x k ids and similarities, as the training's kNN holds at its own k) lives only
    inside this function: each row keeps its k-distance, density and LOF.
    """
    from imgcluster.outliers import isolation_k, isolation_threshold, local_densities, lof_against
    from imgcluster.scale.knn import Reference, scale_knn
    from imgcluster.scale.sample import path_keys

    k = isolation_k(len(paths))
    if not k:
        return None
    Reporter(progress, "assign").info(f"isolation test: the sample's {k} nearest neighbours of each of {count(len(paths), 'row')}")
    # seed 0 as a folder's isolation search (outliers.local_outlier_factor): the same neighbours above the IVF threshold too
    indices, sims = scale_knn(features, k, threshold=knn_threshold, use_gpu=use_gpu, seed=0, nprobe=nprobe, progress=progress)
    k_distance, density = local_densities(indices, sims)
    lof = lof_against(indices, sims, k_distance, density)
    del indices, sims
    keys = path_keys(paths, seed)
    order = np.argsort(keys, kind="stable")
    reference = Reference.build(features, nprobe, seed=0)
    search = {"knn_threshold": knn_threshold, "nprobe": nprobe, "search": "partitioned" if len(paths) > knn_threshold else "one machine"}
    return Isolation(k, isolation_threshold(lof), seed, keys[order], order, lof, k_distance, density, reference, search)


@dataclass
class SampleModel:
    """What the pass needs besides the head: per-cluster centres, thresholds and names, and the options."""

    centres: np.ndarray  # [K, d] unit mean feature of each cluster's sample members (zeros when it had none)
    thresholds: np.ndarray  # [K] distance above which a member is far from its centre (inf: no test)
    names: list[str] | None  # [K] cluster names, None without the cluster_name column
    min_confidence: float
    explain: bool
    isolation: Isolation | None = None  # None: the sample is too small for the isolation test
    names_from: str = ""  # how the names were made (the sidecar's record)
    withheld_names: dict[int, str] = field(default_factory=dict)  # cluster id -> the classifier's guess, withheld as unlike its class

    def to_dict(self) -> dict[str, Any]:
        """What the sidecar records about the estimates."""
        isolation = self.isolation
        return {
            "distance_thresholds": {str(k): (None if not np.isfinite(t) else round(float(t), 6)) for k, t in enumerate(self.thresholds)},
            "isolation": None
            if isolation is None
            else {"k": isolation.k, "threshold": round(isolation.threshold, 6), "search": isolation.search},
            **(
                {"cluster_names": dict(enumerate(self.names)), "withheld_names": self.withheld_names, "names_from": self.names_from}
                if self.names is not None
                else {}
            ),
        }


def fit_sample_model(
    objective: Any,
    features: np.ndarray,
    device: Any,
    *,
    min_confidence: float,
    names: bool,
    explain: bool,
    isolation: Isolation | None = None,
    paths: list[str] | None = None,
    source: str | None = None,
    onnx: tuple[OnnxLite0 | None, str] = (None, ""),
    progress: ProgressFn | None = None,
) -> tuple[SampleModel, np.ndarray]:
    """The estimates from the sample's ``features`` (float32, the head's input) and the sample's clusters.

    ``paths`` and ``source`` (the sample's rows and the store's source) let the names of a folder
    drawn light on black come from its images (:func:`sample_names`), their views run in the file
    ``onnx`` names, or said why not (:func:`naming_file`)."""
    from imgcluster.assign import predict
    from imgcluster.outliers import centre_distances, robust_thresholds

    clusters = predict(objective, features, device).cluster
    k, dim = objective.n_clusters, features.shape[1]
    distance, found = centre_distances(features, clusters)
    limits = robust_thresholds(distance, clusters)
    centres = np.zeros((k, dim), np.float32)
    thresholds = np.full(k, np.inf)
    for c, centre in found.items():
        centres[c], thresholds[c] = centre, limits[c]
    cluster_names, how, withheld = None, "", {}
    if names:
        from imgcluster.naming import say_withheld

        named, how = sample_names(features, clusters, paths, source, progress, onnx)
        say_withheld(named, progress)
        cluster_names, withheld = [named.names.get(c, "") for c in range(k)], named.withheld
    return SampleModel(centres, thresholds, cluster_names, min_confidence, explain, isolation, how, withheld), clusters


def sample_names(
    features: np.ndarray,
    clusters: np.ndarray,
    paths: list[str] | None,
    source: str | None,
    progress: ProgressFn | None = None,
    onnx: tuple[OnnxLite0 | None, str] = (None, ""),
) -> tuple[Naming, str]:
    """(each cluster's :class:`imgcluster.naming.Naming`, how the names were made): from the chosen members'
    images shown inverted when the store's local source is drawn light on black, as a folder's ``assign``
    names it (:func:`imgcluster.negatives.drawing_names`); otherwise from the features."""
    from imgcluster.naming import name_clusters
    from imgcluster.negatives import drawing_names

    if paths is None:
        return name_clusters(features, clusters), "the features"
    root, why = readable_source(source)
    if root is not None:

        def say(shown: int) -> None:
            Reporter(progress, "assign").info(
                f"the images are drawn light on black: the clusters are named from {count(shown, 'image')} of {root} shown inverted, "
                "as photos show such things"
            )

        drawn = drawing_names(root, paths, clusters, None, say, features=features, onnx=onnx[0])
        if drawn is not None:
            if onnx[1]:
                Reporter(progress, "assign").info(onnx[1])
            return drawn, "the images shown inverted (the source is drawn light on black)"
        return name_clusters(features, clusters), "the features"
    Reporter(progress, "assign").info(f"the clusters are named from the features: {why}")
    return name_clusters(features, clusters), f"the features ({why})"


def naming_file(runtime: str, identity: dict[str, Any]) -> tuple[OnnxLite0 | None, str]:
    """The ONNX file the naming pass runs its views in under ``runtime`` (``torch``, ``onnx`` or
    ``onnx-int8``, as :func:`imgcluster.onnxruntime_backend.plan_runtime` plans it), found as a
    folder's ``assign`` finds the file its embedding ran (:func:`imgcluster.negatives.onnx_lite0`),
    so such a run builds no torch Lite0; and what to say when there is none. None for torch, and when
    the file is not on disk (a store's features were embedded elsewhere, and building the file
    would build the torch Lite0 it spares): torch's Lite0 then classifies the views."""
    from imgcluster.negatives import onnx_lite0

    if runtime == "torch":
        return None, ""
    recorded = runtime
    if runtime == "onnx-int8":
        from imgcluster.int8 import runtime_name
        from imgcluster.naming import NAMING_MODEL

        recorded = runtime_name(NAMING_MODEL, identity)
    found = onnx_lite0(recorded, identity)
    if found is not None:
        return found, ""
    from imgcluster.onnxruntime_backend import model_cache_dir

    return None, (
        f"the images shown inverted were classified by torch's Lite0: no {runtime} file of it in {model_cache_dir()} "
        f"(a folder's run with {{runtime}} {runtime} writes it)"
    )


def readable_source(source: str | None) -> tuple[Path | None, str]:
    """(the local folder a store's paths are relative to, "") or (None, why its images cannot be reopened)."""
    if not source:
        return None, "the store records no source, so images drawn light on black are named from their plain view"
    local = source.removeprefix("file://")
    if "://" in local:
        return None, f"its source {source} is not a local folder, so images drawn light on black are named from their plain view"
    if not Path(local).is_dir():
        return None, f"its source folder {source} is not there, so images drawn light on black are named from their plain view"
    return Path(local), ""


def label_batch(objective: Any, model: SampleModel, paths: list[str], features: np.ndarray, device: Any) -> dict[str, np.ndarray]:
    """The CSV's columns for these rows: path, cluster, confidence and the extra columns."""
    from imgcluster.assign import predict
    from imgcluster.outliers import REASON_CONFIDENCE, REASON_DISTANCE, REASON_ISOLATED

    x = np.asarray(features, dtype=np.float32)
    with _one_thread():
        prediction = predict(objective, x, device, explain=model.explain)
    cluster, confidence = prediction.cluster, prediction.confidence
    z = l2_normalise(x)
    distance = np.clip(1.0 - np.einsum("ij,ij->i", z, model.centres[cluster]), 0.0, 2.0)
    far = distance > model.thresholds[cluster]
    low = confidence.astype(np.float64) < model.min_confidence
    isolation = model.isolation
    lonely = isolation.isolated(paths, z) if isolation is not None else np.zeros(len(paths), bool)
    tests = (REASON_CONFIDENCE, REASON_DISTANCE, REASON_ISOLATED)  # in the folder's order (outliers.Outliers.reasons)
    reasons = np.array(["+".join(r for r, on in zip(tests, flags) if on) for flags in zip(low, far, lonely)], dtype=object).astype(str)
    extra: dict[str, np.ndarray] = {**prediction.extra, "outlier": (low | far | lonely).astype(np.int64), "outlier_reason": reasons}
    if model.names is not None:
        extra["cluster_name"] = np.array([model.names[int(c)] for c in cluster], dtype=object).astype(str)
    return {"path": np.array(paths, dtype=object), "cluster": cluster, "confidence": confidence, **dict(sorted(extra.items()))}


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread while labelling: a float32 product's last bits depend on how many
    threads share it (measured: 23 of 455 confidences moved), and a Ray actor has one CPU, so the
    local pass computes as an actor does and both engines write the same CSV."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
