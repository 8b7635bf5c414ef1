"""Models one library call prepared, kept for a later pass of the same call.

A cold ``assign`` on a folder drawn light on black with the bundled EfficientNet-Lite0 ran the same
model twice: the embedding built and folded it, and the naming pass (:mod:`imgcluster.negatives`)
built and folded it again, 1.0-1.3 CPU s each (``benchmarks/results_names.md``). Inside
:func:`keeping` the first prepared model is kept, by model, weights and device, and handed to the
second pass; outside it nothing is kept, so no model outlives the call that needed it. The folded
Lite0 (about 19 MB) then stays through training, which peaks lower than the naming pass did with a
Lite0 of its own; a call that names nothing frees the model before training, as it did
(:func:`keeping_when`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    import torch

    from imgcluster.backbones import Backbone

P = ParamSpec("P")
R = TypeVar("R")
_kept: ContextVar[tuple[str, dict[tuple[str, str, str], Prepared]] | None] = ContextVar("kept_models", default=None)


@dataclass(frozen=True)
class Prepared:
    """A model as it runs (``embedding.prepare_model``) and what a pass needs beside it."""

    model: Any  # torch.nn.Module; torch is not imported here
    data_config: dict[str, Any]
    feature_dim: int


@contextmanager
def keeping(model: str) -> Iterator[None]:
    """Keep the prepared models named ``model`` while inside (any other model: a DINOv2 ViT is 330 MB,
    and no later pass uses it). Nested, the outermost call's keeping holds. Also a decorator."""
    if _kept.get() is not None:
        yield
        return
    token = _kept.set((model, {}))
    try:
        yield
    finally:
        _kept.reset(token)


def keeping_when(model: str, parameter: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each call keeps ``model`` (:func:`keeping`) when its keyword-only ``parameter``
    is true, as given or by default: ``cluster_folder`` keeps Lite0 only when it names the clusters, and otherwise
    frees the model before training as before."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        default = inspect.signature(function).parameters[parameter].default

        @functools.wraps(function)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            with keeping(model) if kwargs.get(parameter, default) else nullcontext():
                return function(*args, **kwargs)

        return call

    return decorate


def prepared(key: tuple[str, str, str], build: Callable[[], Prepared]) -> Prepared:
    """The model for ``key`` (model name, weights identity, device): kept inside :func:`keeping`, else built."""
    state = _kept.get()
    if state is None or state[0] != key[0]:
        return build()
    kept = state[1]
    if key not in kept:
        kept[key] = build()
    return kept[key]


def of_backbone(backbone: Backbone, device: torch.device) -> Prepared:
    """``backbone`` prepared to run on ``device`` (what the embedding runs)."""
    return prepared((backbone.name, backbone.weights_id, str(device)), lambda: _prepare(backbone, device))


def by_name(name: str, device: torch.device) -> Prepared:
    """Model ``name`` with its default weights prepared to run on ``device``; built only when none is kept."""
    from imgcluster.backbones import create_backbone, weights_identity

    return prepared((name, weights_identity(name, None), str(device)), lambda: _prepare(create_backbone(name), device))


def _prepare(backbone: Backbone, device: torch.device) -> Prepared:
    from imgcluster.embedding import prepare_model

    return Prepared(prepare_model(backbone, device), backbone.data_config, backbone.feature_dim)
