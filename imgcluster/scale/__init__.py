"""Beyond one machine: embed on a Ray cluster into a feature store (:mod:`imgcluster.featurestore`),
then train and assign from it (:func:`train_from_store`, :func:`assign_store`; docs/scale.md).

Ray is an optional extra, imported only when a job runs (:mod:`imgcluster.scale.engine`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imgcluster.scale.engine import RAY_MISSING, import_ray, ray_session

__all__ = ["RAY_MISSING", "StoreAssignment", "assign_store", "import_ray", "ray_session", "train_from_store"]

# name -> module that defines it, imported on first use (PEP 562): torch comes with these
_LAZY = {
    "train_from_store": "imgcluster.scale.training",
    "assign_store": "imgcluster.scale.assign_job",
    "StoreAssignment": "imgcluster.scale.assign_job",
}

if TYPE_CHECKING:
    from imgcluster.scale.assign_job import StoreAssignment, assign_store
    from imgcluster.scale.training import train_from_store


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'imgcluster.scale' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
