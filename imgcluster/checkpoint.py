"""Trained heads on disk: safetensors weights plus a JSON description, never pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgcluster.atomic import atomic_write_bytes, atomic_write_text
from imgcluster.errors import UserError
from imgcluster.objectives import Objective, create_objective

CHECKPOINT_FORMAT = "imgcluster-head/1"


def checkpoint_json(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(path: Path, objective: Objective, description: dict[str, Any]) -> Path:
    """Write ``path`` (weights) and ``path`` with ``.json`` (how they were made); returns the JSON path."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "objective": objective.name,
        "clusters": objective.n_clusters,
        "feature_dim": objective.in_dim,
        "params": _jsonable(objective.params),
        **description,
    }
    atomic_write_bytes(path, save(state, metadata={"format": CHECKPOINT_FORMAT}))
    atomic_write_text(checkpoint_json(path), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return checkpoint_json(path)


def load_checkpoint(path: Path) -> tuple[Objective, dict[str, Any]]:
    """Rebuild a trained objective; any mismatch is a one-line :class:`UserError`."""
    from safetensors.torch import load

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    meta_path = checkpoint_json(path)
    if not path.is_file():
        raise UserError(f"head checkpoint not found: {path}")
    if not meta_path.is_file():
        raise UserError(f"head checkpoint {path} has no description {meta_path.name} beside it")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{meta_path} is not an imgcluster head description (format {CHECKPOINT_FORMAT})")
    try:
        state = load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad files
        raise UserError(f"{path} is not a valid safetensors checkpoint ({type(exc).__name__})") from None
    try:
        objective = create_objective(meta["objective"], int(meta["feature_dim"]), int(meta["clusters"]), meta.get("params") or {})
        objective.load_state_dict(state, strict=True)
    except UserError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"{path} does not match its description {meta_path.name}: {str(exc).splitlines()[0]}") from None
    objective.eval()
    return objective, meta


def _jsonable(params: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params)

