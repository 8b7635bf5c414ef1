"""Registry of clustering objectives: one module per method, created by name.

Modules are imported lazily so that ``imgcluster --help`` stays fast and one broken optional
dependency cannot break every objective.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from imgcluster.errors import UserError
from imgcluster.objectives.base import Batch, Objective, Stage, StepOutput

_REGISTRY: dict[str, str] = {
    "scan": "imgcluster.objectives.scan:SCAN",
    "temi": "imgcluster.objectives.temi:TEMI",
    "secu": "imgcluster.objectives.secu:SeCu",
    "dsc2i": "imgcluster.objectives.dsc2i:DSC2I",
    "mixture-em": "imgcluster.objectives.mixture_em:MixtureEM",
    "ddc": "imgcluster.objectives.ddc:DDC",
    "kmeans": "imgcluster.objectives.kmeans:KMeans",
}

DEFAULT_OBJECTIVE = "scan"

__all__ = ["DEFAULT_OBJECTIVE", "Batch", "Objective", "Stage", "StepOutput", "create_objective", "list_objectives", "objective_class"]


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    if name not in _REGISTRY:
        raise UserError(f"unknown objective {name!r}; known objectives: {', '.join(list_objectives())}")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls: type[Objective] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def make_params(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build the objective's hyper-parameter dataclass, rejecting unknown keys by name."""
    cls = objective_class(name)
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"objective {name!r} has no option {', '.join(unknown)}; its options: {', '.join(sorted(fields))}")
    return cls.Params(**overrides)


def create_objective(name: str, in_dim: int, n_clusters: int, overrides: dict[str, Any] | None = None) -> Objective:
    cls = objective_class(name)
    return cls(in_dim, n_clusters, make_params(name, overrides))
