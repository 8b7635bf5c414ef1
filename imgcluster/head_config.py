"""A head's training settings from the parameters of :class:`imgcluster.ClusterHead`, checked.

Apart from the estimator so that a run can check them before any slow work without importing
scikit-learn (seconds), which only training needs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from imgcluster.config import DEFAULT_CLUSTERS, DEFAULT_KNN, DEFAULT_OBJECTIVE, TrainConfig


@dataclass(frozen=True)
class Training:
    """The parameters that shape a head's training, with their defaults: the one list that
    :class:`imgcluster.ClusterHead`, ``cluster_folder``, ``train_folder`` and the feature-store
    functions take (their signatures spell it out for ``help()``; tests/test_api.py checks each
    against this one)."""

    objective: str = DEFAULT_OBJECTIVE
    n_clusters: int | str = DEFAULT_CLUSTERS
    seed: int = 0
    epochs: int | None = None
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    knn: int = DEFAULT_KNN
    k_min: int = 2
    k_max: int = 20
    balance: float | None = None
    self_label: bool = False
    uco: bool = False

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Training:
        """The training parameters among ``values``: an API function's ``locals()``, an estimator's ``vars()``."""
        return cls(**{name: values[name] for name in TRAINING})

    def arguments(self) -> dict[str, Any]:
        """As keyword arguments, for :class:`imgcluster.ClusterHead`."""
        return {name: getattr(self, name) for name in TRAINING}

    def config(self, options: dict[str, Any]) -> TrainConfig:
        """The training settings, checked (see :func:`train_config`); ``options`` are the objective's own."""
        return train_config(**self.arguments(), options=options)


def train_config(
    objective: str,
    n_clusters: int | str,
    seed: int,
    *,
    epochs: int | None,
    batch_size: int,
    lr: float,
    knn: int,
    k_min: int,
    k_max: int,
    balance: float | None,
    self_label: bool,
    uco: bool,
    options: dict[str, Any],
) -> TrainConfig:
    """The training settings these parameters give, checked (unknown options, values out of
    range), so that mistakes surface before any slow work. With ``n_clusters="auto"`` its K
    is a stand-in: fitting chooses the real one. ``options`` are the objective's own."""
    from imgcluster.errors import ParameterError
    from imgcluster.objectives import objective_flags
    from imgcluster.preflight import check_k_range, parse_clusters

    check_flags(self_label=self_label, uco=uco)
    requested = parse_clusters(n_clusters)
    check_whole("k_min", k_min, 2)  # as the command line's option types: 1 (or 2.5) failed only after the embedding
    check_whole("k_max", k_max, 2)
    if requested is None:
        check_k_range(k_min, k_max)
    for name, value, least in (("batch_size", batch_size, 2), ("knn", knn, 1), ("epochs", epochs, 1)):
        check_whole(name, value, least)
    # What both numpy's and torch's generators take: a negative seed failed in choosing K
    # ("expected non-negative integer"), one of 2**64 or more in torch ("Overflow when unpacking").
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise ParameterError(f"{{seed}} must be a whole number from 0 to 2**64 - 1, got {seed!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"{{lr}} must be above 0, got {lr!r}")
    flags = objective_flags(objective, options, balance=balance, self_label=self_label, uco=uco)
    return TrainConfig(
        objective=objective, clusters=requested or DEFAULT_CLUSTERS,
        epochs=TrainConfig.epochs if epochs is None else int(epochs), batch_size=int(batch_size),
        lr=float(lr), knn=int(knn), seed=int(seed), objective_options=flags,
        # Epochs given are trained as given: no floor of steps, no early stop.
        min_steps=TrainConfig.min_steps if epochs is None else 0,
        stable_fraction=TrainConfig.stable_fraction if epochs is None else None,
    )  # fmt: skip


def check_whole(name: str, value: object, least: int) -> None:
    """Refuse ``value`` for parameter ``name`` unless it is None or a whole number of at least ``least``."""
    from imgcluster.errors import ParameterError

    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least):
        raise ParameterError(f"{{{name}}} must be a whole number of at least {least}, got {value!r}")


def check_flags(**flags: object) -> None:
    """Refuse, by name, an on/off parameter that is not True or False: ``names="no"`` (from a config file) is true
    to Python, and turned the names on."""
    from imgcluster.errors import ParameterError, literal

    for name, value in flags.items():
        if not isinstance(value, bool) and not _numpy_bool(value):
            raise ParameterError(f"{{{name}}} must be True or False, got {literal(repr(value))}")


def _numpy_bool(value: object) -> bool:
    """Whether ``value`` is a numpy bool (a grid search's), without importing numpy for the command line's checks."""
    import sys

    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.bool_)


def option_dict(options: object) -> dict[str, Any]:
    """``objective_options`` as a dict; anything else refused by name ("hidden=3" failed inside ``dict()``)."""
    from collections.abc import Mapping

    from imgcluster.errors import ParameterError, literal

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ParameterError(
            f"{{objective_options}} takes a dict of the objective's options, such as dict(hidden=64), not {literal(repr(options))}"
        )
    return dict(options)


TRAINING = tuple(field.name for field in fields(Training))
