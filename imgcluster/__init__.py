"""imgcluster: sort a folder of images into groups without labels.

The Python API (README, section "Python API"); each command of the ``imgcluster`` CLI is one call::

    import imgcluster

    result = imgcluster.cluster_folder("photos", n_clusters=5)   # imgcluster assign: an Assignment
    result.to_frame()                                            # path, cluster, confidence, cluster_name, ...
    result.write("clusters.csv")                                 # the CSV and its sidecar, as assign --out
    imgcluster.write_report("clusters.csv")                      # imgcluster report: clusters.html

Folders: :func:`embed` (features, cached: :class:`Embeddings`), :func:`cluster_folder`
(:class:`Assignment`), :func:`train_folder` (a :class:`ClusterHead` and its checkpoint);
CSVs: :func:`evaluate` (:class:`Evaluation`), :func:`write_report` (:class:`ReportResult`),
:func:`export` (:class:`ExportResult`). :class:`ClusterHead` is a scikit-learn estimator on any
feature array (``fit``, ``predict``, ``predict_proba``, ``save``/``load``). Functions never print:
``progress=`` receives :class:`Event` objects. A bad argument raises :class:`ParameterError` (a
``ValueError`` naming the parameter), any other problem a user can act on :class:`ImgclusterError`.

Each name is imported when first used, so ``import imgcluster`` stays light (no torch, timm, faiss or
scikit-learn) and ``imgcluster --version`` stays fast.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from imgcluster.errors import ImgclusterError, ParameterError

# OpenMP threads that spin while waiting make small training steps 30x slower as soon as another
# process (a decode worker, a second job) shares the cores: 0.41 s vs 0.014 s per step measured
# on 2 busy cores. Passive waiting costs nothing measurable when the cores are free. It must be
# set before torch loads OpenMP; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# name -> module that defines it, imported on first use (PEP 562)
_LAZY = {
    "embed": "imgcluster.features",
    "Embeddings": "imgcluster.pipeline",
    "ClusterHead": "imgcluster.estimator",
    "cluster_folder": "imgcluster.folder",
    "train_folder": "imgcluster.folder",
    "Assignment": "imgcluster.folder",
    "evaluate": "imgcluster.scoring",
    "Evaluation": "imgcluster.scoring",
    "write_report": "imgcluster.reporting",
    "ReportResult": "imgcluster.reporting",
    "Event": "imgcluster.progress",
    "export": "imgcluster.exporting",
    "ExportResult": "imgcluster.exporting",
}

__all__ = [
    "Assignment",
    "ClusterHead",
    "Embeddings",
    "Evaluation",
    "Event",
    "ExportResult",
    "ImgclusterError",
    "ParameterError",
    "ReportResult",
    "__version__",
    "cluster_folder",
    "embed",
    "evaluate",
    "export",
    "train_folder",
    "write_report",
]

if TYPE_CHECKING:
    from imgcluster.estimator import ClusterHead
    from imgcluster.exporting import ExportResult, export
    from imgcluster.features import embed
    from imgcluster.folder import Assignment, cluster_folder, train_folder
    from imgcluster.pipeline import Embeddings
    from imgcluster.progress import Event
    from imgcluster.reporting import ReportResult, write_report
    from imgcluster.scoring import Evaluation, evaluate


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'imgcluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
