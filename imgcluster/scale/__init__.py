"""Beyond one machine: embed on a Ray cluster into a feature store (:mod:`imgcluster.featurestore`).

Ray is an optional extra, imported only when a job runs (:mod:`imgcluster.scale.engine`).
"""

from __future__ import annotations

from imgcluster.scale.engine import RAY_MISSING, import_ray, ray_session

__all__ = ["RAY_MISSING", "import_ray", "ray_session"]
