"""Beyond one machine: embed on a Ray cluster into a feature store (:mod:`imgcluster.featurestore`).

Ray is an optional extra, imported only when a job runs (:mod:`imgcluster.scale.engine`);
``embed_to_store`` and its types load on first use, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgcluster.scale.engine import RAY_MISSING, import_ray, ray_session

if TYPE_CHECKING:
    from imgcluster.scale.embed_job import EmbedInterrupted, StoreSummary, embed_to_store

__all__ = ["RAY_MISSING", "EmbedInterrupted", "StoreSummary", "embed_to_store", "import_ray", "ray_session"]
_LAZY = {"EmbedInterrupted", "StoreSummary", "embed_to_store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from imgcluster.scale import embed_job

        return getattr(embed_job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
