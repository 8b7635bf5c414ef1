"""Beyond one machine: embed on a Ray cluster into a feature store (:mod:`imgcluster.featurestore`),
then train and assign from it (:func:`train_from_store`, :func:`assign_store`; docs/scale.md).

Ray is an optional extra, imported only when a job runs (:mod:`imgcluster.scale.engine`);
``embed_to_store``, ``train_from_store``, ``assign_store`` and their types load on first use, so
importing this package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imgcluster.scale.engine import RAY_MISSING, import_ray, ray_session

if TYPE_CHECKING:
    from imgcluster.scale.assign_job import StoreAssignment, assign_store
    from imgcluster.scale.embed_job import EmbedInterrupted, StoreSummary, embed_to_store
    from imgcluster.scale.training import train_from_store

__all__ = [
    "RAY_MISSING", "EmbedInterrupted", "StoreAssignment", "StoreSummary", "assign_store", "embed_to_store", "import_ray", "ray_session",
    "train_from_store",
]  # fmt: skip

# name -> module that defines it, imported on first use (PEP 562): torch comes with these
_LAZY = {
    "EmbedInterrupted": "imgcluster.scale.embed_job",
    "StoreSummary": "imgcluster.scale.embed_job",
    "embed_to_store": "imgcluster.scale.embed_job",
    "train_from_store": "imgcluster.scale.training",
    "assign_store": "imgcluster.scale.assign_job",
    "StoreAssignment": "imgcluster.scale.assign_job",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
