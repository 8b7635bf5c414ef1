"""Trained heads on disk: safetensors weights plus a JSON description, never pickle.

The JSON records the SHA-256 of the weights file and the weights file records the head's
defining fields (objective, K, feature width, hyper-parameters, backbone), so a torn pair (a
run killed between the two writes), an edited or truncated file, a pair mixed from two saves
or an older format is refused in one line instead of being loaded as valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from imgcluster.atomic import atomic_write_bytes, atomic_write_text
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.lock import pair_lock
from imgcluster.objectives import Objective, create_objective
from imgcluster.outputs import check_head_name

CHECKPOINT_FORMAT = "imgcluster-head/2"  # 2: weights checksum in the JSON, head fields in the weights


def checkpoint_json(path: Path) -> Path:
    return path.with_suffix(".json")


def save_checkpoint(path: Path, objective: Objective, description: dict[str, Any]) -> Path:
    """Write ``path`` (weights) and ``path`` with ``.json`` (how they were made); returns the JSON path."""
    check_head_name(path)  # ClusterHead.save("head") wrote a head that load_checkpoint refused
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
    meta = json.loads(json.dumps(meta, default=str))  # exactly what a reader will see
    data = save(state, metadata={"format": CHECKPOINT_FORMAT, "head": _head_fields(meta)})
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    # Weights first: a run killed between the two writes leaves new weights beside an old JSON,
    # which the checksum refuses, never an old head described as a new one. The folder's lock
    # keeps two saves to one path from interleaving (one's weights under the other's JSON).
    with contextlib.suppress(OSError):  # if it cannot be made, the write below says why
        path.parent.mkdir(parents=True, exist_ok=True)
    with pair_lock(path.parent, exclusive=True):
        atomic_write_bytes(path, data)
        atomic_write_text(checkpoint_json(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return checkpoint_json(path)


def _head_fields(meta: dict[str, Any]) -> str:
    """The fields that decide what the weights mean, as canonical JSON."""
    keys = ("objective", "clusters", "feature_dim", "params", "backbone")
    return json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, default=str)


def _head_named_by(description: Path) -> str | None:
    """The head an assignment's ``.json`` names, or None when ``description`` is not one."""
    try:
        meta = json.loads(description.read_text())
    except (OSError, ValueError):
        return None
    head = meta.get("head") if isinstance(meta, dict) and "assign" in meta else None
    return str(head.get("path")) if isinstance(head, dict) and head.get("path") else None


def load_checkpoint(path: Path, parameter: str = "head") -> tuple[Objective, dict[str, Any]]:
    """Rebuild a trained objective; any mismatch is a one-line :class:`ImgclusterError`. ``parameter``
    is the caller's name for ``path`` (``head``; ``path`` for ``ClusterHead.load``), which a wrong name is blamed on."""
    from safetensors.torch import load

    path = Path(path)
    if path.suffix == ".json":
        used = _head_named_by(path)
        if used is not None:  # an assignment's description: point at the head it names
            raise ParameterError(f"{path} describes an assignment, not a head; the head it used is {used}: give that to {{{parameter}}}")
        # A head's description, given for the head (head.json beside head.safetensors).
        path = path.with_name(path.name[: -len(".json")]) if path.name.endswith(".safetensors.json") else path.with_suffix(".safetensors")
    if path.suffix != ".safetensors":
        raise ParameterError(
            f"{path} is not a head checkpoint: {{{parameter}}} takes the .safetensors file that train or assign saved "
            "(an assignment's .json names the one it used, under head.path)"
        )
    meta_path = checkpoint_json(path)
    with pair_lock(path.parent, exclusive=False):  # both files from one save, even while another save runs
        if not path.is_file():
            raise ParameterError(f"head checkpoint not found: {path}", parameter)
        if not meta_path.is_file():
            raise ImgclusterError(f"head checkpoint {path} has no description {meta_path.name} beside it")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ImgclusterError(f"cannot read {meta_path}: {exc}") from None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImgclusterError(f"cannot read {path}: {exc.strerror or exc}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(found, str) and found.startswith("imgcluster-head/") and found != CHECKPOINT_FORMAT:
        raise ImgclusterError(f"head checkpoint {path} has format {found}, this imgcluster reads {CHECKPOINT_FORMAT}; train it again")
    if not isinstance(meta, dict) or found != CHECKPOINT_FORMAT:
        raise ImgclusterError(f"{meta_path} is not an imgcluster head description (format {CHECKPOINT_FORMAT})")
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise ImgclusterError(
            f"head checkpoint {path} does not match the checksum in {meta_path.name} "
            "(truncated, edited, or the two files come from different saves); train it again"
        )
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
        state = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on bad files
        raise ImgclusterError(f"{path} is not a valid safetensors checkpoint ({type(exc).__name__})") from None
    if header.get("format") != CHECKPOINT_FORMAT or header.get("head") != _head_fields(meta):
        raise ImgclusterError(f"{meta_path.name} does not describe the weights in {path} (edited or mixed up); train it again")
    _check_weights(path, meta_path, meta, state)
    try:
        objective = create_objective(meta["objective"], int(meta["feature_dim"]), int(meta["clusters"]), meta.get("params") or {})
        objective.load_state_dict(state, strict=True)
    except ImgclusterError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ImgclusterError(f"{path} does not match its description {meta_path.name}: {str(exc).splitlines()[0]}") from None
    objective.eval()
    return objective, meta


def _check_weights(path: Path, meta_path: Path, meta: dict[str, Any], state: dict[str, Any]) -> None:
    """Refuse weights that do not have the shapes the description gives, before building anything.

    The head is built from the sizes in the JSON, so a small crafted file declaring three million
    clusters would allocate gigabytes before ``load_state_dict`` compared shapes: the head is
    first built on torch's ``meta`` device, which allocates nothing. NaN or infinite weights
    would put every image in cluster 0 with confidence NaN, so they are refused too.
    """
    import torch

    try:
        dim, clusters = int(meta["feature_dim"]), int(meta["clusters"])
        if dim < 1 or clusters < 1:
            raise ValueError("sizes must be positive")
        with torch.device("meta"):
            skeleton = create_objective(meta["objective"], dim, clusters, meta.get("params") or {})
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except ImgclusterError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ImgclusterError(f"{path} does not match its description {meta_path.name}: {str(exc).splitlines()[0]}") from None
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ImgclusterError(
            f"{meta_path.name} declares a {meta.get('objective')} head of {clusters} clusters on {dim}-d features, "
            f"but the weights in {path} have other shapes ({', '.join(wrong[:3])}); train it again"
        )
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise ImgclusterError(f"head checkpoint {path} holds weights that are not finite numbers (NaN or infinity); train it again")


def check_backbone(meta: dict[str, Any], identity: dict[str, Any], head: Path | str) -> None:
    """Refuse a head trained on another backbone's features, even one of the same width.

    Only the fields the head's description records are compared (hand-written descriptions
    may name just the model).
    """
    recorded = meta.get("backbone") or {}
    differ = [k for k, v in recorded.items() if identity.get(k) != v] if isinstance(recorded, dict) else ["backbone"]
    if differ:
        raise ImgclusterError(
            f"head {head} was trained on features of {recorded.get('model', '?')} (weights {recorded.get('weights', '?')}), "
            f"but this run embeds with {identity.get('model')} (weights {identity.get('weights')}); "
            f"differs in: {', '.join(differ)}. Use the same {{model}}/{{weights}}, or train a new head"
        )


def _jsonable(params: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) and not isinstance(params, type) else dict(params)

