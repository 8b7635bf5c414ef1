"""Run a backbone with ONNX Runtime on the CPU: the same timm model and weights, exported once.

``runtime="onnx"`` runs the float32 export: on the project's 2-core CPU it computed EfficientNet-Lite0's
features as torch does (within 3e-5) but a whole cold ``assign`` took the same CPU time as torch's
(``benchmarks/results_runtime.md``), so nothing chooses it but the user. ``onnx-int8`` runs that export
quantised (:mod:`imgcluster.int8`): a cold ``assign`` of 10,000 images in half of torch's time
(``results_peers.md``), so ``auto`` chooses it where it can (:func:`auto_runtime`). The model is exported
from the torch backbone the first time a backbone identity is run, checked against torch on a probe
input, and kept in ``<model cache>/onnx/`` (see :func:`model_cache_dir`) for every later run.
:func:`plan_runtime` decides which runtime runs, from the request, the device and the model's name
alone, so the cache key is known without building or exporting anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcluster.atomic import atomic_open, atomic_write_text
from imgcluster.errors import ImgclusterError, ParameterError

if TYPE_CHECKING:
    import numpy as np

    from imgcluster.backbones import Backbone

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")  # onnx-int8: imgcluster.int8
# Part of the exported file's name: bump it when the export changes what the file computes.
EXPORT_FORMAT = "1"
# max |onnx - torch| / max |torch| on the probe batch for an export to be kept. Measured on
# EfficientNet-Lite0: 1.4e-6 (benchmarks/results_runtime.md); a wrong graph is off by far more.
CHECK_TOLERANCE = 1e-4
INPUT, OUTPUT = "pixels", "features"
RUNTIME_VARIABLE = "IMGCLUSTER_RUNTIME"  # torch: what auto runs (auto_from_env)


class ExportError(Exception):
    """The backbone could not be exported or does not run the same in ONNX Runtime; the reason
    is one line, for a warning before the run falls back to torch."""


def onnxruntime_installed() -> bool:
    """Both packages import: onnx is what torch's exporter writes the model with. Imported rather than
    looked up, so that an install whose shared libraries do not load counts as none (0.1 s after torch)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def check_runtime(requested: str) -> str:
    """``requested`` when it names a runtime (and, for ``auto``, ``$IMGCLUSTER_RUNTIME`` is valid);
    checked before torch is imported, so a typo costs nothing."""
    if requested not in RUNTIMES:
        raise ParameterError(f"{{runtime}} must be auto, torch, onnx or onnx-int8, not {requested!r}")
    if requested == "auto":
        auto_from_env()
    return requested


def auto_from_env() -> str:
    """``$IMGCLUSTER_RUNTIME``: ``torch`` keeps ``auto`` on torch (to keep using caches made before
    ``auto`` chose int8, or for features equal to float32's without naming the runtime on every run);
    unset, empty or ``auto``: :func:`auto_runtime`'s rule."""
    raw = os.environ.get(RUNTIME_VARIABLE, "")
    if raw not in ("", "auto", "torch"):
        raise ParameterError(f"{RUNTIME_VARIABLE} must be auto or torch, not {raw!r}")
    return raw or "auto"


def auto_runtime(device_type: str, model: str | None, weights: str | None) -> str:
    """What ``auto`` runs: ``onnx-int8`` for a model int8 ships activation ranges for (EfficientNet-Lite0),
    with its default weights, on the CPU, when onnxruntime and onnx import; torch otherwise.

    A cold ``assign`` of 10,000 images took half of torch's time in int8 (``benchmarks/results_peers.md``), with
    features close to float32's, not equal (what that changes: ``results_runtime.md``). torch stays for CUDA (int8
    runs on the CPU only), for other models and other weights (no ranges were made for them), and for
    ``model`` None: a run that has no model of its own to embed with (a feature store's, whose features
    Ray's actors made in torch). Whether the ranges fit the built model's identity is checked later
    (:func:`imgcluster.int8.fitting_runtime`), where a misfit also means torch.
    """
    if auto_from_env() == "torch" or device_type != "cpu" or weights is not None:
        return "torch"
    from imgcluster.int8 import shipped_models

    return "onnx-int8" if model in shipped_models() and onnxruntime_installed() else "torch"


def plan_runtime(requested: str, device_type: str, model: str | None = None, weights: str | None = None) -> str:
    """``torch``, ``onnx`` or ``onnx-int8`` for a run of ``model`` (resolved, not ``auto``; None when the
    run embeds nothing) with ``weights`` on ``device_type``, from these alone.

    ``auto`` is :func:`auto_runtime`. A model whose export failed before falls back to torch: see
    :func:`recorded_failure`.
    """
    check_runtime(requested)
    if requested in ("onnx", "onnx-int8"):
        if device_type != "cpu":
            raise ParameterError(f"{{runtime}} {requested} runs on the CPU only; use {{device}} cpu with it, or {{runtime}} torch")
        if not onnxruntime_installed():
            raise ImgclusterError(f"{{runtime}} {requested} needs the packages onnxruntime and onnx: pip install onnxruntime onnx")
        return requested
    if requested == "auto":
        return auto_runtime(device_type, model, weights)
    return "torch"


def model_cache_dir() -> Path:
    """Where exported models live: ``$IMGCLUSTER_MODEL_CACHE``, else ``imgcluster/`` in the user's
    cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``), beside the model hub's and torch's caches."""
    if os.environ.get("IMGCLUSTER_MODEL_CACHE"):
        return Path(os.environ["IMGCLUSTER_MODEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgcluster"


def model_cache_writable() -> bool:
    """A new file can go into the model cache's ``onnx/`` folder (made if missing). Where it cannot (a
    read-only home), ``auto`` does not choose a runtime that would build its file there on every run,
    fail, and say so every time."""
    folder = model_cache_dir() / "onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def exported_path(identity: dict[str, Any]) -> Path:
    """One file per backbone identity (model, weights, preprocessing) and export format."""
    blob = json.dumps({"backbone": identity, "export": EXPORT_FORMAT}, sort_keys=True, default=str)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(identity["model"]))
    return model_cache_dir() / "onnx" / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.onnx"


def _record_path(model: Path) -> Path:
    return model.with_suffix(".json")


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def _read_record(model: Path) -> dict[str, Any]:
    try:
        record = json.loads(_record_path(model).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded_failure(identity: dict[str, Any]) -> str | None:
    """Why this backbone could not be exported, when an earlier run with the same torch and
    onnxruntime found out (so a cached rerun neither builds nor exports again); else None."""
    return failure_at(exported_path(identity))


def failure_at(model: Path) -> str | None:
    """Why the file ``model`` could not be made, as :func:`record_failure` recorded it with these torch and onnxruntime versions."""
    record = _read_record(model)
    if "failed" in record and record.get("versions") == _versions():
        return str(record["failed"])
    return None


def record_failure(model: Path, reason: str) -> None:
    """Remember that ``model`` could not be made (a file a failed attempt left is removed), with the
    versions that failed: another torch or onnxruntime tries again. Best effort: a cache that cannot
    be written only means the next run tries again too."""
    with contextlib.suppress(OSError, ImgclusterError):
        model.unlink(missing_ok=True)
        atomic_write_text(_record_path(model), json.dumps({"failed": reason, "versions": _versions()}, indent=2) + "\n")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _is_intact(path: Path) -> bool:
    """The file is the one a finished export wrote: its record (written after it) holds its digest."""
    record = _read_record(path)
    try:
        return "sha256" in record and _file_digest(path) == record["sha256"]
    except OSError:
        return False


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on ``threads`` cores (the same count torch would get).

    Its threads do not spin while they wait: spinning took 2.1-2.3 CPU seconds for six batches of 16
    EfficientNet-Lite0 images against 1.5-1.6 without (twice each, on the 2 busy cores).
    Without the memory pattern (one block planned for all of a
    pass's activations) EfficientNet-Lite0's peak at batch 16 was 350 MB instead of 520, at the
    same CPU time (measured twice each on the 2-core machine under load).
    """
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def session_options(threads: int) -> Any:
    """The options :func:`session` runs with; benchmarks/profile_int8.py profiles a session made with them."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: its warnings would reach the user's terminal
    return options


def run(model: Any, pixels: np.ndarray) -> np.ndarray:
    """Features of a float32 NCHW batch."""
    import numpy as np

    return np.asarray(model.run([OUTPUT], {INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})[0])


def _export_bytes(backbone: Backbone) -> bytes:
    """The backbone as ONNX with a free batch axis, by torch's TorchScript-based exporter: it took
    4 s for EfficientNet-Lite0 here, the ``torch.export`` one 21 s for the same features."""
    import torch

    probe = torch.zeros((1, *backbone.data_config["input_size"]))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes would litter stderr
        torch.onnx.export(
            backbone.model.cpu().eval(), (probe,), buffer,  # type: ignore[arg-type]  # a file object works, as documented
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=18, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


def _check(backbone: Backbone, path: Path) -> None:
    """Refuse an export that computes other features than torch on a random probe of two images."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.randn((2, *backbone.data_config["input_size"]), generator=generator)
    with torch.no_grad():
        expected = backbone.model.cpu().eval()(probe).numpy()
    got = run(session(path, 1), probe.numpy())
    scale = float(np.abs(expected).max()) or 1.0
    if got.shape != expected.shape:
        raise ExportError(f"the exported model gives {got.shape[1:]} features, torch {expected.shape[1:]}")
    error = float(np.abs(got - expected).max()) / scale
    if not error <= CHECK_TOLERANCE:
        raise ExportError(f"the exported model's features differ from torch's by {error:.1e} (relative), over {CHECK_TOLERANCE:g}")


def ensure_exported(backbone: Backbone) -> Path:
    """The backbone's ONNX file, exported and checked now unless an intact one is there.

    The file is written atomically and its digest recorded after it, so a torn, truncated or
    edited file fails the digest and is exported again. A failure raises :class:`ExportError`
    and is recorded, with the torch and onnxruntime versions, so later runs skip the attempt.
    """
    path = exported_path(backbone.identity())
    if path.is_file() and _is_intact(path):
        return path
    try:
        data = _export_bytes(backbone)
        with atomic_open(path, "wb") as handle:
            handle.write(data)
        _check(backbone, path)
        record = {"sha256": _file_digest(path), "backbone": backbone.identity(), "export": EXPORT_FORMAT, "versions": _versions()}
        atomic_write_text(_record_path(path), json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    except ImgclusterError as exc:  # the cache folder cannot be written: not the model's fault, nothing recorded
        raise ExportError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - exporters and runtimes fail in many types
        reason = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        record_failure(path, reason)
        raise ExportError(reason) from None
    return path
