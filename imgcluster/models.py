"""The backbones imgcluster knows, by name: a table that needs neither torch nor timm.

Kept apart from :mod:`imgcluster.backbones` so that a mistyped ``model`` is refused at once,
before the seconds that importing torch and timm take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgcluster.errors import ParameterError

OFFLINE_MODEL = "efficientnet-lite0"
DEFAULT_ONLINE_MODEL = "dinov2-vits14"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    description: str
    bundled: bool = False  # weights ship inside a Python package
    create_kwargs: dict[str, Any] = field(default_factory=dict)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        # DINOv2 is pretrained at 518 px; 224 px keeps most of its quality at a tenth of the cost.
        BackboneSpec("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14 (384-d)", create_kwargs={"img_size": 224}),
        BackboneSpec("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14 (768-d)", create_kwargs={"img_size": 224}),
        BackboneSpec("dino-vits16", "vit_small_patch16_224.dino", "DINO ViT-S/16 (384-d)"),
        BackboneSpec("clip-vitb16", "vit_base_patch16_clip_224.openai", "CLIP ViT-B/16 image tower (768-d)"),
        BackboneSpec("efficientnet-lite0", "tf_efficientnet_lite0", "EfficientNet-Lite0, ImageNet, bundled offline (1280-d)", bundled=True),
    )
}


def known_models() -> str:
    return ", ".join(sorted(BACKBONES))


def check_model_name(name: str) -> str:
    """``name`` when it is ``auto`` or a known backbone; otherwise a :class:`ParameterError` listing them."""
    if name != "auto" and name not in BACKBONES:
        raise ParameterError(f"unknown {{model}} {name!r}; known models: auto, {known_models()}")
    return name
