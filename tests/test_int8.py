"""int8 in ONNX Runtime: ranges from a shipped table (never the folder), a cache of its own, its identity recorded."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolders import CLASSES, copy_sample
from test_onnxruntime_backend import tiny_backbone
from typer.testing import CliRunner

import imgcluster
import imgcluster.int8 as int8
import imgcluster.pipeline as pipeline
from imgcluster.backbones import Backbone
from imgcluster.cache import embeddings_dir
from imgcluster.cli import app
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.onnxruntime_backend import ExportError, plan_runtime, run, session


@pytest.fixture
def tiny_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backbone:
    """A tiny backbone that the pipeline builds in place of EfficientNet-Lite0, with a table of
    ranges made for it (from random pixels) where the shipped table would be."""
    backbone = tiny_backbone(5)
    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setattr(pipeline, "create_backbone", lambda *args, **kwargs: backbone)
    table = tmp_path / "tables" / "int8_efficientnet-lite0.json"
    table.parent.mkdir()
    monkeypatch.setattr(int8, "table_path", lambda model: table.parent / f"int8_{model}.json")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    int8.write_table(backbone, batches, int8.Recipe(activations="int8"), {"random": 12}, table)
    return backbone


def test_int8_is_planned_like_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan_runtime("onnx-int8", "cpu") == "onnx-int8"
    with pytest.raises(ParameterError, match="runtime onnx-int8 runs on the CPU only"):
        plan_runtime("onnx-int8", "cuda")
    monkeypatch.setattr("imgcluster.onnxruntime_backend.onnxruntime_installed", lambda: False)
    with pytest.raises(ImgclusterError, match=r"runtime onnx-int8 needs the packages onnxruntime and onnx: pip install onnxruntime onnx"):
        plan_runtime("onnx-int8", "cpu")


def test_the_runtime_name_is_the_tables_identity(tiny_int8: Backbone) -> None:
    """Other ranges or another recipe give another name, so another cache; no table, or another
    model's weights, is refused before anything is built."""
    identity = json.loads(json.dumps(tiny_int8.identity(), default=str))
    name = int8.runtime_name("efficientnet-lite0", identity)
    assert name.startswith("onnx-int8/") and len(name) == len("onnx-int8/") + 16
    table = int8.table_path("efficientnet-lite0")
    data = json.loads(table.read_text())
    first = next(iter(data["ranges"]))
    data["ranges"][first][1] *= 2
    table.write_text(json.dumps(data))
    assert int8.runtime_name("efficientnet-lite0", identity) != name
    root = Path("/c")
    dirs = {embeddings_dir(root, "m", identity, "float16", runtime=r) for r in ("torch", "onnx", name)}
    assert len(dirs) == 3
    with pytest.raises(ParameterError, match="runtime onnx-int8's activation ranges are for efficientnet-lite0's default weights only"):
        int8.runtime_name("efficientnet-lite0", {**identity, "weights": "other"})
    with pytest.raises(ParameterError, match="runtime onnx-int8 has activation ranges for efficientnet-lite0 only, not resnet50"):
        int8.runtime_name("resnet50", identity)


def test_int8_embeds_into_its_own_cache_and_records_its_identity(tmp_path: Path, tiny_int8: Backbone) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)
    cache = tmp_path / "cache"
    in_int8 = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="onnx-int8")
    in_float = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="onnx")
    assert in_int8.runtime == int8.runtime_name("efficientnet-lite0", in_int8.identity) and in_float.runtime == "onnx"
    assert in_int8.cache_dir != in_float.cache_dir and in_int8.embedded == in_float.embedded == 6
    assert json.loads((in_int8.cache_dir / "config.json").read_text())["runtime"] == in_int8.runtime
    assert not np.array_equal(in_int8.features, in_float.features)  # quantised: not the float32 features
    cosine = (
        (in_int8.features * in_float.features).sum(1) / np.linalg.norm(in_int8.features, axis=1) / np.linalg.norm(in_float.features, axis=1)
    )
    assert cosine.min() > 0.9
    again = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="onnx-int8")
    assert again.reused == 6 and again.cache_dir == in_int8.cache_dir
    built = list((tmp_path / "models" / "onnx").glob("*-int8-*.onnx"))
    assert len(built) == 1 and int8.runtime_name("efficientnet-lite0", in_int8.identity).endswith(built[0].stem.rsplit("-", 2)[1])


def test_a_files_int8_features_do_not_depend_on_its_folder(tmp_path: Path, tiny_int8: Backbone) -> None:
    """The same picture in two folders of other pictures (other calibration data, were it taken
    from the folder; other batches) gets the same features."""
    one = copy_sample(tmp_path / "one", CLASSES[:1], per_class=2)
    other = copy_sample(tmp_path / "other", CLASSES[1:4], per_class=4)
    shared = sorted(one.rglob("*.png"))[0]
    shutil.copy(shared, other / "shared.png")
    a = imgcluster.embed(one, "efficientnet-lite0", cache_dir=tmp_path / "c1", runtime="onnx-int8")
    b = imgcluster.embed(other, "efficientnet-lite0", cache_dir=tmp_path / "c2", runtime="onnx-int8")
    assert a.runtime == b.runtime
    row_a = a.features[a.paths.index(shared.relative_to(one).as_posix())]
    row_b = b.features[b.paths.index("shared.png")]
    np.testing.assert_array_equal(row_a, row_b)


def test_a_table_made_for_another_export_falls_back_to_torch(tmp_path: Path, tiny_int8: Backbone) -> None:
    table = int8.table_path("efficientnet-lite0")
    table.write_text(json.dumps({**json.loads(table.read_text()), "graph": "0" * 64}))
    with pytest.raises(ExportError, match="made for another export"):
        int8.ensure_quantised(tiny_int8)
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    result = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache", runtime="onnx-int8")
    assert result.runtime == "torch" and "made for another export" in result.warnings[0]
    with torch.no_grad():
        assert result.features.shape == (2, 8)


@pytest.mark.slow
def test_the_shipped_table_builds_efficientnet_lite0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped table fits this torch and onnxruntime's export of EfficientNet-Lite0, and its
    int8 features stay close to float32's on real photos (measured bounds: results_runtime.md)."""
    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    folder = copy_sample(tmp_path / "photos", CLASSES, per_class=2)
    cache = tmp_path / "cache"
    in_int8 = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="onnx-int8")
    in_float = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="onnx")
    assert in_int8.runtime.startswith("onnx-int8/") and not in_int8.warnings
    cosine = (
        (in_int8.features * in_float.features).sum(1) / np.linalg.norm(in_int8.features, axis=1) / np.linalg.norm(in_float.features, axis=1)
    )
    assert cosine.min() > 0.9, cosine
    import onnx

    (built,) = (tmp_path / "models" / "onnx").glob("*-int8-*.onnx")
    ops = {n.op_type for n in onnx.load(str(built)).graph.node}
    assert "Pad" not in ops and "Shape" not in ops  # Lite0's five "same" paddings folded (int8.static_padding)


def test_the_shape_arithmetic_of_same_padding_stays_float(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's TF-style "same" padding computes its pad widths from the input's shape in float at run
    time; quantising that arithmetic rounded the widths and moved uint8 features (mean cosine 0.87
    against 0.97 with it left in float, results_runtime.md). No quantised tensor may feed it."""
    import onnx
    from timm.layers import create_conv2d
    from torch import nn

    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    torch.manual_seed(0)
    model = nn.Sequential(create_conv2d(3, 8, 3, stride=2, padding="same"), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    base = tiny_backbone(6)
    backbone = Backbone(base.name, base.spec, model, base.data_config, "test:same", 8)
    prepared = int8.prepare(int8.ensure_exported(backbone), tmp_path / "prepared.onnx")
    shapes = set(int8.shape_arithmetic(onnx.load(str(prepared)).graph))
    assert any(name.endswith("Shape") for name in shapes) and len(shapes) > 5
    rng = np.random.default_rng(0)
    ranges = int8.collect_ranges(prepared, [rng.standard_normal((4, 3, 16, 16)).astype(np.float32)], int8.RECIPE)

    def quantised_feeds(recipe: int8.Recipe) -> list[str]:
        graph = onnx.load(str(int8.quantise(prepared, tmp_path / "int8.onnx", ranges, recipe))).graph
        quantised = {o for n in graph.node if n.op_type == "QuantizeLinear" for o in n.output}  # at run time, not constants
        dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantised for o in n.output}
        return [n.name for n in graph.node if n.name in shapes and n.op_type != "Shape" and any(i in dequantised for i in n.input)]

    assert int8.RECIPE.float_shapes and quantised_feeds(int8.RECIPE) == []
    assert quantised_feeds(dataclasses.replace(int8.RECIPE, float_shapes=False))  # what the flag prevents


def same_padding_backbone() -> Backbone:
    """A net with timm's TF-style "same" padding at stride 2 (3x3: pads 0/1; 5x5: 1/2), as EfficientNet-Lite has."""
    from timm.layers import create_conv2d
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        create_conv2d(3, 8, 3, stride=2, padding="same"), nn.ReLU6(),
        create_conv2d(8, 8, 5, stride=2, padding="same", groups=8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ).eval()  # fmt: skip
    base = tiny_backbone(6)
    return Backbone(base.name, base.spec, model, base.data_config, "test:same", 8)


def test_same_padding_is_folded_into_the_convolutions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input's size is fixed, so the pad widths are constants: folded into the convolutions, the Pad
    nodes and their arithmetic go (on Lite0 the int8 session took 0.69x the CPU; results_runtime.md,
    ``profile-int8``) and the graph computes what it computed."""
    import onnx
    import onnxruntime

    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "models"))
    prepared = int8.prepare(int8.ensure_exported(same_padding_backbone()), tmp_path / "prepared.onnx")
    static = int8.static_padding(prepared, tmp_path / "static.onnx")
    ops = [n.op_type for n in onnx.load(str(static)).graph.node]
    assert "Pad" in [n.op_type for n in onnx.load(str(prepared)).graph.node]
    assert "Pad" not in ops and "Shape" not in ops and ops.count("Conv") == 2
    pixels = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)

    def features(path: Path) -> np.ndarray:
        return np.asarray(onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": pixels})[0])

    np.testing.assert_allclose(features(static), features(prepared), rtol=1e-6, atol=1e-6)
    ranges = int8.collect_ranges(prepared, [pixels], int8.RECIPE)  # the table is taken on the unfolded graph
    folded = int8.quantise(static, tmp_path / "int8.onnx", ranges, int8.RECIPE)
    assert "Pad" not in [n.op_type for n in onnx.load(str(folded)).graph.node]
    unfolded = int8.quantise(prepared, tmp_path / "int8-unfolded.onnx", ranges, int8.RECIPE)
    # int8 features bit for bit the same as the unfolded file's: the cache key (BUILD_FORMAT) stays, the file's name changes
    np.testing.assert_array_equal(run(session(folded, 1), pixels), run(session(unfolded, 1), pixels))
    assert int8.quantised_path(tmp_path / "m.onnx", "abc").name == f"m-int8-abc-{int8.FILE_FORMAT}.onnx" and int8.FILE_FORMAT != "1"


def test_the_csv_sidecar_names_the_int8_runtime(tmp_path: Path, tiny_int8: Backbone) -> None:
    """The CSV's sidecar records which recipe and ranges made the features (they name the cache a report reads)."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4)
    result = imgcluster.cluster_folder(
        folder,
        out=tmp_path / "clusters.csv",
        model="efficientnet-lite0",
        n_clusters=2,
        epochs=2,
        cache_dir=tmp_path / "cache",
        runtime="onnx-int8",
    )
    sidecar = json.loads(result.written["sidecar"].read_text())
    assert sidecar["runtime"] == int8.runtime_name("efficientnet-lite0", sidecar["backbone"])


def test_auto_embeds_lite0_in_int8_and_says_so(tmp_path: Path, tiny_int8: Backbone, default_runtime: None) -> None:
    """No runtime asked for, on the CPU: int8, recorded where the runtime is recorded (the cache's name and
    config.json, the CSV's sidecar) and named on the line that names the model and the device."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4)
    result = CliRunner().invoke(
        app, ["assign", str(folder), "--model", "efficientnet-lite0", "--clusters", "2", "--epochs", "2", "--cache-dir",
              str(tmp_path / "cache"), "--out", str(tmp_path / "clusters.csv"), "--no-names"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    sidecar = json.loads((tmp_path / "clusters.csv.json").read_text())
    expected = int8.runtime_name("efficientnet-lite0", sidecar["backbone"])
    assert sidecar["runtime"] == expected and sidecar["embed"]["runtime"] == "auto"
    (config,) = (tmp_path / "cache").rglob("config.json")
    assert json.loads(config.read_text())["runtime"] == expected
    assert config.parent.name == embeddings_dir(Path("/c"), "efficientnet-lite0", sidecar["backbone"], "float16", runtime=expected).name
    said = [line for line in result.stderr.splitlines() if line.startswith("model ")]
    assert said == [f"model efficientnet-lite0 on cpu (onnx-int8); cache {config.parent}"], result.stderr
    assert "ONNX Runtime" not in result.stderr  # no fallback was said


def test_a_torch_cache_from_before_is_embedded_again_once_and_kept(tmp_path: Path, tiny_int8: Backbone, default_runtime: None) -> None:
    """After the upgrade that made auto int8, a folder's torch features are not reused for int8 (other
    features: never mixed), not an error either: the first run embeds it again into int8's own cache,
    the next reuses that, and torch's cache stays as it was for runs that ask for torch."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=3)
    cache = tmp_path / "cache"
    before = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="torch")
    torch_files = {p: p.read_bytes() for p in before.cache_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    upgraded = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache)
    assert upgraded.runtime.startswith("onnx-int8/") and upgraded.cache_dir != before.cache_dir
    assert (upgraded.embedded, upgraded.reused, upgraded.warnings) == (6, 0, [])
    assert not np.array_equal(upgraded.features, before.features)
    again = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache)
    assert (again.embedded, again.reused, again.cache_dir) == (0, 6, upgraded.cache_dir)
    np.testing.assert_array_equal(again.features, upgraded.features)
    assert {p: p.read_bytes() for p in before.cache_dir.rglob("*") if p.is_file() and p.name != ".lock"} == torch_files
    in_torch = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=cache, runtime="torch")
    assert (in_torch.embedded, in_torch.reused, in_torch.cache_dir) == (0, 6, before.cache_dir)


def test_auto_runs_torch_where_int8_does_not_fit(
    tmp_path: Path, tiny_int8: Backbone, default_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges made for other weights, or no onnxruntime: auto runs torch without a warning (it was not asked
    for int8); asked for, int8 is refused."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    table = int8.table_path("efficientnet-lite0")
    original = table.read_text()
    table.write_text(json.dumps({**json.loads(original), "backbone": {**json.loads(original)["backbone"], "weights": "other"}}))
    result = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache")
    assert (result.runtime, result.warnings) == ("torch", [])
    with pytest.raises(ParameterError, match="activation ranges are for efficientnet-lite0's default weights only"):
        imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache", runtime="onnx-int8")
    table.write_text(original)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # its import fails
    result = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache")
    assert (result.runtime, result.warnings, result.reused) == ("torch", [], 2)
    assert not list((tmp_path / "models").rglob("*-int8-*.onnx"))


def test_an_int8_build_that_failed_is_not_tried_again(
    tmp_path: Path, tiny_int8: Backbone, default_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auto, the first run says why it runs torch; later runs neither build the int8 file again (which
    builds the torch model: seconds each run) nor say it again. Asked for, int8 says it on every run."""
    table = int8.table_path("efficientnet-lite0")
    table.write_text(json.dumps({**json.loads(table.read_text()), "graph": "0" * 64}))
    attempts: list[int] = []
    build = pipeline.ensure_quantised
    monkeypatch.setattr(pipeline, "ensure_quantised", lambda backbone: attempts.append(1) or build(backbone))
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    first = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache")
    assert first.runtime == "torch" and len(first.warnings) == 1 and "made for another export" in first.warnings[0]
    (tmp_path / "photos" / "more").mkdir()
    shutil.copy(next(folder.rglob("*.png")), tmp_path / "photos" / "more" / "new.png")
    second = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache")
    assert (second.runtime, second.warnings, second.embedded, second.reused) == ("torch", [], 1, 2)
    assert len(attempts) == 1
    asked = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache", runtime="onnx-int8")
    assert asked.runtime == "torch" and "made for another export" in asked.warnings[0] and len(attempts) == 1


def test_auto_runs_torch_where_the_int8_file_cannot_be_built(
    tmp_path: Path, tiny_int8: Backbone, default_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model cache that cannot be written (a read-only home; here a file where its folder would go): auto
    runs torch at once, without a warning and without trying to build the int8 file, and a rerun reuses torch's
    cache. It tried int8 on every run before (its empty cache first, so even a cached rerun built the model),
    and said each time that it could not write the file."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    monkeypatch.setenv("IMGCLUSTER_MODEL_CACHE", str(tmp_path / "blocker" / "models"))
    attempts: list[int] = []
    build = pipeline.ensure_quantised
    monkeypatch.setattr(pipeline, "ensure_quantised", lambda backbone: attempts.append(1) or build(backbone))
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    first = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache")
    assert (first.runtime, first.warnings, first.embedded) == ("torch", [], 2)
    again = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache")
    assert (again.runtime, again.warnings, again.reused, attempts) == ("torch", [], 2, [])
    asked = imgcluster.embed(folder, "efficientnet-lite0", cache_dir=tmp_path / "cache", runtime="onnx-int8")
    assert asked.runtime == "torch" and "cannot write" in asked.warnings[0]  # asked for, it says why it cannot
