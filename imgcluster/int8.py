"""int8 EfficientNet-Lite0 in ONNX Runtime: a quantised copy of the exported model, built on first use.

Static quantisation needs activation ranges. They are not taken from the user's folder: a file's
features must depend only on the file, the model and the cache key (a head trained on one folder is
applied to another). They come from a table shipped in the package (``data/int8_<model>.json``), made
once by ``tools/make_int8_calibration.py`` from a fixed, documented set of images. The table and the
recipe below name the quantised model (:func:`quantised_identity`), which goes into the cache key and
the sidecar, so int8 features never mix with float32 ones. Measured recipes and their tolerance:
``benchmarks/results_runtime.md``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcluster.atomic import atomic_open, atomic_write_text
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.onnxruntime_backend import (
    INPUT,
    ExportError,
    ensure_exported,
    exported_path,
    failure_at,
    model_cache_writable,
    record_failure,
    recorded_failure,
)

if TYPE_CHECKING:
    import numpy as np

    from imgcluster.backbones import Backbone

# Part of the quantised file's identity: bump it when the building code changes what the file computes.
BUILD_FORMAT = "1"
# Part of the quantised file's name only: bump it when the building code changes how the file computes the
# same features, so that a file built before is built again. 2: "same" padding folded (static_padding).
FILE_FORMAT = "2"


@dataclass(frozen=True)
class Recipe:
    """How the exported float32 model becomes int8; every field changes the features."""

    format: str = "qdq"  # qdq (QuantizeLinear/DequantizeLinear pairs, ORT fuses them) or qoperator
    per_channel: bool = True  # one weight scale per output channel
    activations: str = "uint8"  # uint8 (asymmetric) or int8 (symmetric)
    calibration: str = "minmax"  # minmax, percentile or entropy: how a tensor's range is taken from the set
    reduce_range: bool = False  # 7-bit weights, for CPUs without VNNI
    keep_float: tuple[str, ...] = field(default_factory=tuple)  # node-name prefixes left in float32
    keep_clip: bool = False  # keep ReLU6 (Clip) nodes that uint8 quantisation would fold into the ranges
    float_shapes: bool = False  # leave the arithmetic on tensor shapes (TF "same" padding) unquantised

    def name(self) -> str:
        kept = "+".join(p.strip("/").replace("/", ".") for p in self.keep_float) or "none"
        return (
            f"{self.format},{'pc' if self.per_channel else 'pt'},{'u8' if self.activations == 'uint8' else 's8'},"
            f"{self.calibration}{',rr' if self.reduce_range else ''}{',clip' if self.keep_clip else ''}"
            f"{',float-shapes' if self.float_shapes else ''},float={kept}"
        )


def prepare(model: Path, out: Path) -> Path:
    """ONNX Runtime's pre-processing for quantisation: shape inference and graph optimisation
    (constant folding), without which the ranges are taken on tensors the runtime would fold away."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(model), str(out))
    return out


def graph_signature(model: Path) -> str:
    """The prepared graph's nodes (type, name, inputs, outputs), without weights: the table of
    ranges is keyed by tensor names, so it only fits a graph with this signature."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    nodes = [[n.op_type, n.name, list(n.input), list(n.output)] for n in graph.node]
    return hashlib.sha256(json.dumps(nodes).encode()).hexdigest()


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    return methods[name]


def collect_ranges(prepared: Path, batches: Iterable[np.ndarray], recipe: Recipe) -> dict[str, list[float]]:
    """Each tensor's calibrated [low, high] over ``batches`` (float32 NCHW), one batch at a time so
    that the intermediate tensors of only a few images are held at once (histogram methods keep them)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import create_calibrator

    options: dict[str, Any] = {"symmetric": recipe.activations == "int8"}
    if recipe.calibration == "percentile":
        options.update(percentile=99.999, num_bins=2048)

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[np.ndarray]) -> None:
            self.items = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(({INPUT: x} for x in self.items), None)

    with tempfile.TemporaryDirectory(prefix="imgcluster-calibrate-") as tmp:
        calibrator = create_calibrator(
            prepared, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=_method(recipe.calibration),
            extra_options=options,
        )  # fmt: skip
        for batch in batches:
            calibrator.collect_data(Reader([batch]))
        data = calibrator.compute_data()
    return {name: [float(np.min(t.range_value[0])), float(np.max(t.range_value[1]))] for name, t in data.data.items()}


def shape_arithmetic(graph: Any) -> list[str]:
    """The nodes that compute on tensor shapes (from a Shape node on): timm's TF-style "same" padding
    computes its pad widths at run time in float, and quantising that arithmetic rounds the widths."""
    static = {t.name for t in graph.initializer}
    derived: set[str] = set()
    names = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        inputs = [i for i in node.input if i]
        if node.op_type == "Constant":
            static.update(node.output)
        elif node.op_type == "Shape" or (any(i in derived for i in inputs) and all(i in derived or i in static for i in inputs)):
            derived.update(node.output)
            names.append(node.name)
    return names


def static_padding(prepared: Path, out: Path) -> Path:
    """``prepared`` with each run-time "same" padding folded into the convolution it feeds.

    The graph's input has a fixed height and width (the backbone's input size), so the pad widths that
    :func:`shape_arithmetic` computes on every pass are constants. Computed once here, they become the
    convolution's own ``pads``, and the Pad node and its arithmetic go: ONNX Runtime then keeps the float
    layers in its blocked (NCHWc) layout across the padded convolutions and runs the int8 ones on their
    quantised input, where each Pad cost a reorder out of and back into that layout, or a dequantise, a
    float pad and a quantise (benchmarks/results_runtime.md, ``profile-int8``). Zero padding inside the
    convolution is the same arithmetic: the int8 features of all 10,000 Fashion-MNIST test images were the same
    bit for bit, so the features' cache key stays and only the file's name changes (``FILE_FORMAT``). Activation
    ranges keep their tensors' names, so the shipped table still fits.
    """
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    model = onnx.load(str(prepared), load_external_data=False)
    graph = model.graph
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]  # 0 where free (the batch)
    spatial = shape[2:]
    derived = set(shape_arithmetic(graph))
    producer = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    def zero_pad(node: Any) -> bool:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        value = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return (
            mode == b"constant" and (value is None or (value in constants and not constants[value].any()))
            and len(node.input) < 4 and node.input[1] in producer and producer[node.input[1]].name in derived
            and len(users.get(node.output[0], [])) == 1 and users[node.output[0]][0].op_type == "Conv"
        )  # fmt: skip

    pads = [n for n in graph.node if n.op_type == "Pad" and zero_pad(n)]
    if not pads or not all(spatial) or len(graph.input) != 1:
        return prepared
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n.input[1], onnx.TensorProto.INT64, None) for n in pads)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    runner = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    widths = runner.run([n.input[1] for n in pads], {graph.input[0].name: np.zeros((1, *shape[1:]), np.float32)})
    for pad, width in zip(pads, widths, strict=True):
        begin, end = np.split(np.asarray(width, np.int64).ravel(), 2)
        if begin[:2].any() or end[:2].any() or (width < 0).any():
            raise ExportError(f"cannot fold the padding {pad.name} into its convolution ({width.tolist()})")
        conv = users[pad.output[0]][0]
        conv.input[0] = pad.input[0]
        own = next((a for a in conv.attribute if a.name == "pads"), None)
        kept = list(own.ints) if own is not None else [0] * 2 * len(spatial)
        if own is not None:
            conv.attribute.remove(own)
        conv.attribute.append(onnx.helper.make_attribute("pads", [int(x) for x in np.concatenate([begin[2:], end[2:]]) + kept]))
        graph.node.remove(pad)
    _drop_unused(graph)
    onnx.save(model, str(out))
    return out


def _drop_unused(graph: Any) -> None:
    """Remove the nodes, initialisers and shape records that nothing left reads."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):  # topologically sorted: readers come after what they read
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    for items in (graph.initializer, graph.value_info):
        unused = [t for t in items if t.name not in needed]
        for t in unused:
            items.remove(t)


def quantise(prepared: Path, out: Path, ranges: dict[str, list[float]], recipe: Recipe) -> Path:
    """``prepared`` quantised by ``recipe`` with the given activation ranges, written to ``out``."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    graph = onnx.load(str(prepared), load_external_data=False).graph
    excluded = [n.name for n in graph.node if any(n.name.startswith(p) for p in recipe.keep_float)]
    if recipe.float_shapes:
        excluded += shape_arithmetic(graph)
    table = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()}
    symmetric = recipe.activations == "int8"
    with tempfile.TemporaryDirectory(prefix="imgcluster-quantise-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, table), cache)
        quantize_static(
            str(prepared), str(out), None, calibration_cache_path=cache, calibrate_method=CalibrationMethod.MinMax,
            quant_format=QuantFormat.QDQ if recipe.format == "qdq" else QuantFormat.QOperator, per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range, weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QDQKeepRemovableActivations": recipe.keep_clip},
        )  # fmt: skip
    return out


# The recipe the shipped tables are made with (benchmarks/results_runtime.md: every recipe tried).
RECIPE = Recipe(float_shapes=True, keep_float=("/conv_stem/", "/blocks/blocks.0/", "/blocks/blocks.1/"))


def table_path(model_name: str) -> Path:
    """The shipped activation ranges of one model (``tools/make_int8_calibration.py`` writes it)."""
    return Path(__file__).resolve().parent / "data" / f"int8_{model_name}.json"


def write_table(backbone: Backbone, batches: Iterable[np.ndarray], recipe: Recipe, images: dict[str, int], out: Path) -> None:
    """Take the ranges of ``backbone``'s exported graph over ``batches`` and write them as the table."""
    with tempfile.TemporaryDirectory(prefix="imgcluster-int8-") as tmp:
        prepared = prepare(ensure_exported(backbone), Path(tmp) / "prepared.onnx")
        ranges = collect_ranges(prepared, batches, recipe)
        signature = graph_signature(prepared)
    table = {
        "about": "Activation ranges for int8 inference, made by tools/make_int8_calibration.py from the images it names.",
        "model": backbone.name, "backbone": json.loads(json.dumps(backbone.identity(), default=str)), "recipe": asdict(recipe),
        "images": images, "graph": signature, "ranges": {k: ranges[k] for k in sorted(ranges)},
    }  # fmt: skip
    atomic_write_text(out, json.dumps(table, indent=1, sort_keys=True) + "\n")


def _table(model_name: str) -> tuple[dict[str, Any], str] | None:
    """The shipped table and its identity (sha256 of its bytes and the build format), or None."""
    try:
        data = table_path(model_name).read_bytes()
    except OSError:
        return None
    return json.loads(data), hashlib.sha256(data + BUILD_FORMAT.encode()).hexdigest()[:16]


def runtime_name(model_name: str, identity: dict[str, Any]) -> str:
    """``onnx-int8/<table identity>``: names the int8 features' cache and is recorded in the sidecar,
    so features quantised with other ranges or another recipe never share a cache.

    Checked before anything is built: int8 needs a table made for this model with these weights.
    """
    name = fitting_runtime(model_name, identity)
    if name is not None:
        return name
    if _table(model_name) is None:
        shipped = ", ".join(shipped_models())
        raise ParameterError(f"{{runtime}} onnx-int8 has activation ranges for {shipped} only, not {model_name}; use {{runtime}} onnx")
    raise ParameterError(
        f"{{runtime}} onnx-int8's activation ranges are for {model_name}'s default weights only; use {{runtime}} onnx for others"
    )


def fitting_runtime(model_name: str, identity: dict[str, Any]) -> str | None:
    """:func:`runtime_name` when a shipped table was made for this model with these weights (and
    preprocessing); None when not."""
    found = _table(model_name)
    if found is None or found[0]["backbone"] != json.loads(json.dumps(identity, default=str)):
        return None
    return f"onnx-int8/{found[1]}"


def chosen_runtime(model_name: str, identity: dict[str, Any]) -> str:
    """What ``auto`` runs once it has planned int8 (:func:`imgcluster.onnxruntime_backend.auto_runtime`) and the
    model's identity is known: :func:`runtime_name` when a shipped table fits and the int8 file is there or can
    be built in the model cache; torch otherwise, without a warning (nobody asked for int8)."""
    name = fitting_runtime(model_name, identity)
    if name is None or (runtime_file(identity, name) is None and not model_cache_writable()):
        return "torch"
    return name


def shipped_models() -> list[str]:
    return sorted(p.stem.removeprefix("int8_") for p in table_path("x").parent.glob("int8_*.json"))


def ensure_quantised(backbone: Backbone) -> Path:
    """The backbone's int8 ONNX file, built now from the exported model and the shipped table
    unless an intact one is there (cached beside the export, checked by its digest as the export is)."""
    from imgcluster.onnxruntime_backend import _file_digest, _is_intact, _record_path

    found = _table(backbone.name)
    if found is None:
        raise ExportError(f"no int8 activation ranges are shipped for {backbone.name}")
    table, digest = found
    exported = ensure_exported(backbone)
    path = quantised_path(exported, digest)
    if path.is_file() and _is_intact(path):
        return path
    with tempfile.TemporaryDirectory(prefix="imgcluster-int8-") as tmp:
        try:
            prepared = prepare(exported, Path(tmp) / "prepared.onnx")
            if graph_signature(prepared) != table["graph"]:
                raise ExportError("the shipped int8 ranges were made for another export of this model (other torch or onnx versions)")
            recipe = Recipe(**{**table["recipe"], "keep_float": tuple(table["recipe"]["keep_float"])})
            static = static_padding(prepared, Path(tmp) / "static.onnx")
            built = quantise(static, Path(tmp) / "int8.onnx", table["ranges"], recipe)
            with atomic_open(path, "wb") as handle:
                handle.write(built.read_bytes())
        except ImgclusterError as exc:  # the model cache cannot be written: not the model's fault, nothing recorded
            raise ExportError(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the quantiser fails in many types (an older onnxruntime among them)
            first = str(exc).splitlines()[0] if str(exc) else ""
            reason = str(exc) if isinstance(exc, ExportError) else f"int8: {type(exc).__name__}: {first}"
            record_failure(path, reason)
            raise ExportError(reason) from None
    record = {"sha256": _file_digest(path), "table": digest, "recipe": table["recipe"], "build": BUILD_FORMAT, "file": FILE_FORMAT}
    atomic_write_text(_record_path(path), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def quantised_path(exported: Path, digest: str) -> Path:
    """Where the int8 copy of the exported model ``exported`` made with the table ``digest`` is kept."""
    return exported.with_name(f"{exported.stem}-int8-{digest}-{FILE_FORMAT}.onnx")


def recorded_runtime_failure(identity: dict[str, Any], runtime: str) -> str | None:
    """Why ``runtime`` (``onnx`` or ``onnx-int8/<digest>``) could not be made for the backbone ``identity``,
    when an earlier run with the same torch and onnxruntime found out: the export failed, or (int8) its
    quantisation did. A later run then goes straight to torch: with ``auto`` every run would otherwise
    build the model and fail again."""
    failure = recorded_failure(identity)
    if failure is None and runtime.startswith("onnx-int8/"):
        failure = failure_at(quantised_path(exported_path(identity), runtime.removeprefix("onnx-int8/")))
    return failure


def runtime_file(identity: dict[str, Any], runtime: str) -> Path | None:
    """The ONNX file that ran ``runtime`` (``onnx`` or ``onnx-int8/<digest>``, as recorded with the features)
    for the backbone ``identity``, when it is on disk intact; None for torch or a file that is gone.

    A later pass over the same model (the naming pass) runs it without building the torch model.
    """
    from imgcluster.onnxruntime_backend import _is_intact

    if runtime == "onnx":
        path = exported_path(identity)
    elif runtime.startswith("onnx-int8/"):
        path = quantised_path(exported_path(identity), runtime.removeprefix("onnx-int8/"))
    else:
        return None
    return path if path.is_file() and _is_intact(path) else None
