"""Registry of clustering objectives: one module per method, created by name.

Modules are imported lazily so that ``imgcluster --help`` stays fast and one broken optional
dependency cannot break every objective.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
from typing import Any

from imgcluster.config import DEFAULT_OBJECTIVE
from imgcluster.errors import ImgclusterError, ParameterError
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

SELF_LABEL_EPOCHS = 10  # epochs of SCAN's self-labelling stage that --self-label adds

__all__ = [
    "DEFAULT_OBJECTIVE",
    "Batch",
    "Objective",
    "Stage",
    "StepOutput",
    "create_objective",
    "list_objectives",
    "objective_class",
    "objective_flags",
]


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    if name not in _REGISTRY:
        raise ImgclusterError(f"unknown objective {name!r}; known objectives: {', '.join(list_objectives())}", "objective")
    module_name, cls_name = _REGISTRY[name].split(":")
    cls: type[Objective] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def _checked(name: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the option's default: ints stay whole, floats accept ints, no strings for numbers."""
    kind = type(default)
    if default is None or (isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    what = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(kind, kind.__name__)
    raise ImgclusterError(f"objective {name!r}: option {key} must be {what}, got {value!r}", "objective_options")


def make_params(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build the objective's hyper-parameter dataclass, rejecting unknown keys, wrong types and values
    out of range (the ``ranges`` of its :class:`~imgcluster.objectives.base.CheckedParams`) by name."""
    cls = objective_class(name)
    defaults = {f.name: getattr(cls.Params(), f.name) for f in dataclasses.fields(cls.Params)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ImgclusterError(
            f"objective {name!r} has no option {', '.join(unknown)}; its options: {', '.join(sorted(defaults))}", "objective_options"
        )
    checked = {key: _checked(name, key, value, defaults[key]) for key, value in overrides.items()}
    try:
        return cls.Params(**checked)
    except ValueError as exc:  # a value out of range: the message names the option, the value and the range
        raise ParameterError(f"objective {name!r} cannot be built with options {overrides}: {exc}", "objective_options") from None


def objective_flags(
    name: str, options: dict[str, Any], *, balance: float | None = None, self_label: bool = False, uco: bool = False
) -> dict[str, Any]:
    """Fold the shortcuts into the objective's options; an explicit entry in ``options`` wins.

    ``balance`` scales the weight of the uniform-prior term (see ``Objective.balance_options``),
    ``self_label`` adds SCAN's self-labelling stage and ``uco`` DDC's companion objectives. A
    shortcut the objective has no use for is a usage error, not silently ignored.
    """
    try:
        cls = objective_class(name)
    except ImgclusterError as exc:  # given as an argument, an unknown name is a bad value
        raise ParameterError(str(exc), "objective") from None
    merged: dict[str, Any] = {}
    if balance is not None:
        if isinstance(balance, bool) or not isinstance(balance, numbers.Real) or not (balance >= 0 and math.isfinite(balance)):
            raise ParameterError(f"{{balance}} is a weight, 0 or more; got {balance!r}")
        if not cls.balance_options:
            with_term = ", ".join(n for n in list_objectives() if objective_class(n).balance_options)
            raise ParameterError(f"{{balance}}: objective {name!r} has no uniform-prior term to weight; objectives with one: {with_term}")
        merged.update(cls.balanced_options(balance))
    if self_label:
        if name != "scan":
            raise ParameterError(f"{{self_label}} is SCAN's second stage; use it with {{objective}} scan, not {name!r}")
        merged["self_label_epochs"] = SELF_LABEL_EPOCHS
    if uco:
        if name != "ddc":
            raise ParameterError(f"{{uco}} adds DDC's companion objectives; use it with {{objective}} ddc, not {name!r}")
        merged["uco"] = True
    merged.update(options)
    try:
        make_params(name, merged)  # unknown keys fail here, before any embedding
    except ParameterError:
        raise
    except ImgclusterError as exc:
        raise ParameterError(str(exc), "objective_options") from None
    return merged


def create_objective(name: str, in_dim: int, n_clusters: int, overrides: dict[str, Any] | None = None) -> Objective:
    cls = objective_class(name)
    params = make_params(name, overrides)
    try:
        return cls(in_dim, n_clusters, params)
    except (RuntimeError, ValueError) as exc:  # e.g. a negative width: torch's message names the problem
        raise ParameterError(f"objective {name!r} cannot be built with options {overrides or {}}: {exc}", "objective_options") from None
