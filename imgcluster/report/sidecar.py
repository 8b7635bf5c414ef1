"""What the CSV's sidecar JSON tells a report: where the images are and where their features are cached."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.config import sidecar_path
from imgcluster.errors import ImgclusterError, ParameterError


def read_sidecar(csv_path: Path) -> dict[str, Any] | None:
    """The ``<csv>.json`` written by ``assign``, or None when there is none."""
    path = sidecar_path(csv_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImgclusterError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def resolve_folder(csv_path: Path, sidecar: dict[str, Any] | None, folder: Path | None) -> Path:
    """The image folder: ``folder`` if given, else the one the sidecar recorded.

    ``assign`` records the folder as typed (``embed.folder``, relative to where it ran) and
    resolved (``assign.folder``); the resolved one is tried first, then the typed one from here
    and from the CSV's folder, so a report works from anywhere while the images stay put.
    """
    if folder is not None:
        if not folder.is_dir():
            raise ParameterError(f"image folder not found: {folder}", "folder")
        return folder
    sidecar = sidecar or {}
    recorded = [str(v) for v in (_section(sidecar, "assign").get("folder"), _section(sidecar, "embed").get("folder")) if v]
    if not recorded:
        raise ImgclusterError(
            f"{csv_path} has no sidecar {csv_path.name}.json saying where its images are; give the folder with {{folder}}"
        )
    candidates = [Path(r) for r in recorded] + [csv_path.parent / r for r in recorded if not Path(r).is_absolute()]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]  # gone: every image becomes a placeholder, and the caller warns


def _section(sidecar: dict[str, Any] | None, name: str) -> dict[str, Any]:
    value = (sidecar or {}).get(name)
    return value if isinstance(value, dict) else {}


def cache_dir_of(sidecar: dict[str, Any] | None) -> str | None:
    """The shared cache root the embedding run was given, if any."""
    value = _section(sidecar, "embed").get("cache_dir")
    return str(value) if value else None


def cached_features(folder: Path, sidecar: dict[str, Any] | None) -> tuple[dict[str, np.ndarray] | None, str]:
    """Features of the assigned images, read from the embedding cache the sidecar points at.

    Read-only on purpose: it loads no model, embeds nothing, takes no lock and never rewrites the
    cache, so a report is quick and safe beside a running ``embed``. Returns (None, reason) when
    the features cannot be had.
    """
    from imgcluster.cache import ShardError, default_cache_root, embeddings_dir, read_shard

    embed = _section(sidecar, "embed")
    backbone = _section(sidecar, "backbone")
    if not backbone.get("model"):
        return None, "no sidecar JSON names the backbone" if sidecar is None else "the sidecar JSON does not name the backbone"
    dtype = embed.get("dtype") or "float16"
    root = default_cache_root(folder, cache_dir_of(sidecar))
    recorded = (sidecar or {}).get("compute")
    # A sidecar written before the precision was recorded: features made on the CPU, else on a GPU.
    precisions = [recorded] if isinstance(recorded, str) else ["float32", "bfloat16"]
    runtime = (sidecar or {}).get("runtime")
    runtime = runtime if isinstance(runtime, str) else "torch"  # sidecars from before the runtime was recorded: torch's
    directories = [embeddings_dir(root, backbone["model"], backbone, dtype, compute, runtime) for compute in precisions]
    directory = next((d for d in directories if any((d / "shards").glob("*.safetensors"))), directories[0])
    shards = sorted((directory / "shards").glob("*.safetensors"))
    if not shards:
        return None, f"no cached features in {directory}"
    found: dict[str, np.ndarray] = {}
    for shard in shards:  # a later shard overrides an earlier one, as in the cache itself
        with contextlib.suppress(ShardError, OSError):  # a shard compacted away or damaged meanwhile: skip it
            block, rows = read_shard(shard, cache=directory.name, dtype=dtype, dim=backbone.get("feature_dim"))
            for i, (rel, _size, _mtime) in enumerate(rows):
                found[rel] = block[i]
    if not found:
        return None, f"the cached features in {directory} are unreadable"
    return found, ""
