"""The Python API: light import, embed, cluster_folder, progress events, outputs that never replace inputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from imagefolders import CLASSES, copy_sample

import imgcluster
from imgcluster import ParameterError
from imgcluster.progress import BATCH_DECODED, MODEL_READY, SAVED, SAVING, Event

MODEL = {"model": "efficientnet-lite0", "workers": 0}
HEAVY = ("torch", "timm", "faiss", "sklearn", "scipy", "pandas")


@pytest.mark.parametrize("module", ["imgcluster", "imgcluster.cli"])
def test_import_stays_light(module: str) -> None:
    """``imgcluster --version`` and argument errors must not wait for torch: nothing heavy loads on import."""
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_every_api_name_resolves() -> None:
    for name in imgcluster.__all__:
        assert getattr(imgcluster, name) is not None
    assert set(imgcluster.__all__) <= set(dir(imgcluster))
    with pytest.raises(AttributeError):
        imgcluster.no_such_name  # noqa: B018


def test_embed_a_folder_reports_progress_and_prints_nothing(
    small_folder: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events: list[Event] = []
    result = imgcluster.embed(small_folder, cache_dir=shared_cache, progress=events.append, **MODEL)
    assert capsys.readouterr() == ("", "")
    assert len(result.paths) == 24 and result.features.shape == (24, 1280) and result.skipped == []
    assert result.folder == small_folder and result.identity["model"] == "efficientnet-lite0"
    assert result.cache_dir.is_dir() and shared_cache in result.cache_dir.parents
    assert {e.stage for e in events} >= {"model", "embed"}
    assert any(e.kind == "info" and str(e).startswith("embedded ") for e in events)
    first = events[0]  # before the seconds of importing torch and building the model, it says what it does
    assert (first.stage, first.kind, str(first)) == ("model", "info", "starting with model efficientnet-lite0 (importing torch) ...")


def test_only_a_run_that_builds_the_model_says_it_loads_it(small_folder: Path, tmp_path: Path) -> None:
    """A fully cached run builds no model, so it must not say it loads one."""
    said: list[list[str]] = []
    for _ in range(2):
        events: list[Event] = []
        imgcluster.embed(small_folder, cache_dir=tmp_path / "cache", progress=events.append, **MODEL)
        said.append([str(e) for e in events if e.kind == "info"])
    assert "loading the model (efficientnet-lite0) ..." in said[0]
    assert not any(line.startswith("loading the model") for line in said[1])


def test_embed_marks_the_moments_that_time_its_stages(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What benchmarks/speed times the embed path by: the model ready, each batch decoded (its
    forward pass ends at the advance after it), each cache write between SAVING and SAVED."""
    from imgcluster.cli import Printer
    from imgcluster.ui import UI

    monkeypatch.setenv("IMGCLUSTER_FLUSH_EVERY", "8")
    events: list[Event] = []
    imgcluster.embed(small_folder, cache_dir=tmp_path / "cache", embed_batch_size=8, progress=events.append, **MODEL)
    timeline = [(e.stage, e.message if e.kind == "mark" else e.kind) for e in events if e.kind in ("mark", "advance")]
    batch = [("embed", BATCH_DECODED), ("embed", "advance"), ("embed", SAVING), ("embed", SAVED)]
    assert timeline == [("model", MODEL_READY), *batch * 3, ("embed", SAVING), ("embed", SAVED)]  # three shards, then compacted
    Printer(UI())(Event("embed", "mark", SAVING))
    assert capsys.readouterr() == ("", "")  # marks are for timing, not for the command line's output


def test_embed_a_list_of_files_relative_to_their_common_folder(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=4)
    cache = tmp_path / "cache"
    whole = imgcluster.embed(folder, cache_dir=cache, **MODEL)
    files = sorted((folder / CLASSES[1]).glob("*.png"))[:1] + sorted((folder / CLASSES[0]).glob("*.png"))[:2]
    result = imgcluster.embed([str(f) for f in files], cache_dir=cache, **MODEL)
    assert result.folder == folder and (result.reused, result.embedded) == (3, 0)
    assert result.paths == [f.relative_to(folder).as_posix() for f in files]  # in the order given
    assert (result.features == whole.features[[whole.paths.index(p) for p in result.paths]]).all()
    again = imgcluster.embed(folder, cache_dir=cache, **MODEL)  # the other files' features were kept
    assert (again.reused, again.embedded) == (8, 0)
    (folder / "notes.txt").write_text("not an image\n")
    with pytest.raises(ParameterError, match="not image files imgcluster reads") as info:
        imgcluster.embed([files[0], folder / "notes.txt"], cache_dir=cache, **MODEL)
    assert info.value.parameters == ("folder_or_paths",)


def test_cluster_folder_in_memory_writes_nothing_until_asked(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = sorted(p for p in small_folder.rglob("*"))
    result = imgcluster.cluster_folder(small_folder, n_clusters=3, cache_dir=cache, **MODEL)
    assert sorted(p for p in small_folder.rglob("*")) == before  # the cache lives in cache_dir; no CSV anywhere
    frame = result.to_frame()
    assert list(frame.columns) == ["path", "cluster", "confidence", "cluster_name", "outlier", "outlier_reason"]
    assert len(frame) == 24 and set(frame["cluster"]) <= {0, 1, 2} and result.head.is_file()
    written = result.write(tmp_path / "out.csv")
    assert set(written) == {"csv", "sidecar"}
    read = pd.read_csv(written["csv"], keep_default_na=False)
    assert read["path"].tolist() == frame["path"].tolist() and read["cluster"].tolist() == frame["cluster"].tolist()
    assert result.provenance()["result"]["images"] == 24


def test_a_bad_value_names_the_parameter_not_a_flag(small_folder: Path) -> None:
    with pytest.raises(ParameterError) as info:
        imgcluster.cluster_folder(small_folder, n_clusters="many", **MODEL)
    assert str(info.value) == "n_clusters takes a whole number or 'auto', not 'many'" and info.value.parameters == ("n_clusters",)


@pytest.fixture
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any embedding fails the test: the checks under test come before any work."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded although the output was refused")

    monkeypatch.setattr("imgcluster.folder.embed_checked", fail)


@pytest.mark.usefixtures("no_embedding")
def test_an_output_that_is_an_input_image_is_refused_before_any_work(small_folder: Path) -> None:
    image = sorted((small_folder / CLASSES[0]).glob("*.png"))[0]
    data = image.read_bytes()
    with pytest.raises(ParameterError, match=r"is an image in .*which this run reads") as info:
        imgcluster.cluster_folder(small_folder, out=image, **MODEL)
    assert info.value.parameters == ("out",) and image.read_bytes() == data
    with pytest.raises(ParameterError, match="is an image in"):  # the same file by another name
        imgcluster.cluster_folder(small_folder, out=small_folder / CLASSES[0] / ".." / CLASSES[0] / image.name, **MODEL)
    with pytest.raises(ParameterError, match="is an image in"):  # a new image there: the next scan would read CSV text
        imgcluster.cluster_folder(small_folder, out=small_folder / "clusters.PNG", **MODEL)
    hidden = small_folder / ".notes" / "clusters.png"  # hidden folders are never scanned
    hidden.parent.mkdir()
    with pytest.raises(AssertionError, match="embedded although"):
        imgcluster.cluster_folder(small_folder, out=hidden, **MODEL)


@pytest.mark.usefixtures("no_embedding")
def test_an_output_that_is_the_head_is_refused(small_folder: Path, tmp_path: Path) -> None:
    import numpy as np

    head = imgcluster.ClusterHead(n_clusters=2, epochs=1, device="cpu").fit(np.eye(8, dtype=np.float32))
    path = tmp_path / "head.safetensors"
    head.save(path)
    for out in (path, path.with_suffix(".json")):
        with pytest.raises(ParameterError, match="is the head") as info:
            imgcluster.cluster_folder(small_folder, head=path, out=out)
        assert info.value.parameters == ("out",)


def _readme_examples() -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n", 1)[1] for block in section.split("```")[1::2] if block.startswith("python\n")]


def test_readme_python_api_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_runtime: None) -> None:
    """The README's "Python API" examples, run in order on a copy of sample_data (125 images, 5 classes), in the
    runtime a user gets (int8 for EfficientNet-Lite0 on the CPU)."""
    import shutil

    examples = _readme_examples()
    assert len(examples) >= 2
    shutil.copytree(Path(__file__).resolve().parents[1] / "sample_data", tmp_path / "sample_data", ignore=shutil.ignore_patterns(".*"))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for code in examples:
        exec(compile(code, "README.md (Python API)", "exec"), namespace)  # the README's own examples
    assert (tmp_path / "clusters.csv").is_file() and (tmp_path / "clusters.html").is_file()


def test_results_carry_their_warnings(messy_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    (messy_folder / "phone.heic").write_bytes(b"not decodable by Pillow")
    heard: list[Event] = []
    result = imgcluster.cluster_folder(
        messy_folder, n_clusters=3, cache_dir=shared_cache, out=tmp_path / "out.csv", progress=heard.append, **MODEL
    )
    assert any("formats imgcluster cannot read (.heic)" in w for w in result.embeddings.warnings)
    assert any(w.startswith("skipped 3 unreadable files; details in ") for w in result.warnings)
    assert result.warnings == [str(e) for e in heard if e.kind == "warning"] and len(result.warnings) >= 2
    assert result.written["skipped"] == tmp_path / "out-skipped.csv"


def test_the_backbone_is_released_before_training(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model and its folded copy are freed when the embedding ends, not held through training and naming."""
    import weakref

    import imgcluster.embedding as embedding
    import imgcluster.pipeline as pipeline
    import imgcluster.train as train

    models: list[weakref.ref] = []
    create, prepare, fit = pipeline.create_backbone, embedding.prepare_model, train.train_objective

    def created(*args: object, **kwargs: object) -> object:
        backbone = create(*args, **kwargs)  # type: ignore[arg-type]
        models.extend([weakref.ref(backbone), weakref.ref(backbone.model)])
        return backbone

    def prepared(*args: object, **kwargs: object) -> object:
        model = prepare(*args, **kwargs)  # type: ignore[arg-type]
        models.append(weakref.ref(model))
        return model

    alive: list[list[bool]] = []

    def training(*args: object, **kwargs: object) -> object:
        alive.append([ref() is not None for ref in models])
        return fit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "create_backbone", created)
    monkeypatch.setattr(embedding, "prepare_model", prepared)
    monkeypatch.setattr(train, "train_objective", training)
    imgcluster.cluster_folder(small_folder, n_clusters=3, cache_dir=tmp_path / "cache", names=False, **MODEL)
    assert alive == [[False, False, False]]


def test_features_that_are_not_finite_are_refused_before_training() -> None:
    """What scikit-learn's input checks refused when assign trained through ClusterHead."""
    import numpy as np

    from imgcluster.folder import _finite

    with pytest.raises(imgcluster.ImgclusterError, match="NaN or infinite") as info:
        _finite(np.array([[0.5, np.inf], [0.1, 0.2]], np.float32))
    assert info.value.parameters == ("reembed",)
    features = np.ones((2, 2), np.float32)
    assert _finite(features) is features


@pytest.mark.usefixtures("no_embedding")
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("embed_batch_size", 0, "embed_batch_size must be a whole number of at least 1, got 0"),
        ("workers", -1, "workers must be a whole number of at least 0, got -1"),
        ("workers", 1.5, "workers must be a whole number of at least 0, got 1.5"),
        ("lock_timeout", -1, "lock_timeout is a number of seconds, 0 or more; got -1"),
        ("lock_timeout", float("nan"), "lock_timeout is a number of seconds, 0 or more; got nan"),
        ("dtype", "float8", "dtype must be float16 or float32, not 'float8'"),  # after the scan
        ("dtype", None, "dtype must be float16 or float32, not None"),
    ],
)
def test_embedding_options_the_command_line_refuses_are_refused_by_name(
    small_folder: Path, option: str, value: object, message: str
) -> None:
    """The options' types refuse these on the command line; from Python they ran (a batch size of 0 as the default)."""
    for call in (imgcluster.embed, imgcluster.cluster_folder, imgcluster.train_folder):
        with pytest.raises(ParameterError) as info:
            call(small_folder, model="efficientnet-lite0", **{option: value})  # type: ignore[operator]
        assert str(info.value) == message and info.value.parameters == (option,)


def test_train_folder_refuses_features_that_are_not_finite(small_folder: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As cluster_folder does: a damaged cache's NaN reached scikit-learn's check, a bare ValueError (a crash from the command line)."""
    import numpy as np

    import imgcluster.folder as folder

    embedded = folder.embed_checked

    def damaged(*args: object, **kwargs: object) -> object:
        embeddings = embedded(*args, **kwargs)  # type: ignore[arg-type]
        embeddings.features = embeddings.features.copy()
        embeddings.features[3, 5] = np.nan
        return embeddings

    monkeypatch.setattr(folder, "embed_checked", damaged)
    with pytest.raises(imgcluster.ImgclusterError, match="NaN or infinite") as info:
        imgcluster.train_folder(small_folder, n_clusters=3, epochs=1, cache_dir=shared_cache, **MODEL)
    assert info.value.parameters == ("reembed",)


@pytest.mark.usefixtures("no_embedding")
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("min_confidence", "0.5", "min_confidence must lie in [0, 1], got '0.5'"),
        ("min_confidence", float("nan"), "min_confidence must lie in [0, 1], got nan"),
        ("near_duplicates", "0.9", "near_duplicates is a cosine similarity in (0, 1], got '0.9'"),
        ("near_duplicates", True, "near_duplicates is a cosine similarity in (0, 1], got True"),
        ("k_min", 1, "k_min must be a whole number of at least 2, got 1"),
        ("k_max", 2.5, "k_max must be a whole number of at least 2, got 2.5"),
    ],
)
def test_values_that_need_no_features_are_refused_before_any_work(small_folder: Path, option: str, value: object, message: str) -> None:
    """As the README promises: these were refused after the embedding and training (NaN and True not at all, "0.9" as a TypeError)."""
    with pytest.raises(ParameterError) as info:
        imgcluster.cluster_folder(small_folder, n_clusters="auto", model="efficientnet-lite0", **{option: value})  # type: ignore[arg-type]
    assert str(info.value) == message and info.value.parameters == (option,)


def test_a_head_refuses_embeddings_of_another_backbone(small_folder: Path, shared_cache: Path) -> None:
    """As assign --head does: other weights of the same model give features of the same width that mean something else."""
    import dataclasses

    embeddings = imgcluster.embed(small_folder, cache_dir=shared_cache, **MODEL)
    head = imgcluster.ClusterHead(n_clusters=3, epochs=1, device="cpu").fit(embeddings)
    other = dataclasses.replace(embeddings, identity={**embeddings.identity, "weights": "sha256:0000"})
    with pytest.raises(imgcluster.ImgclusterError, match="differs in: weights"):
        head.predict(other)
    assert (head.predict(embeddings) == head.labels_).all() and (head.predict(other.features) == head.labels_).all()


def test_embed_takes_a_folder_named_in_bytes_and_refuses_what_is_no_folder(tmp_path: Path) -> None:
    """bytes were read as a list of numbers and None as a list ("expected str ... not int", "not iterable")."""
    with pytest.raises(ParameterError, match=r"folder not found: .*missing") as info:
        imgcluster.embed(bytes(tmp_path / "missing"), **MODEL)
    assert info.value.parameters == ("folder",)
    for value in (None, 123):
        with pytest.raises(ParameterError, match=f"folder_or_paths takes a folder or a list of image files, not {value}") as info:
            imgcluster.embed(value, **MODEL)  # type: ignore[arg-type]
        assert info.value.parameters == ("folder_or_paths",)


@pytest.mark.usefixtures("no_embedding")
def test_train_folder_refuses_a_head_name_assign_cannot_read(small_folder: Path, tmp_path: Path) -> None:
    """train --out head.pt trained and saved, then assign --head head.pt refused it."""
    with pytest.raises(ParameterError, match=r"does not end in \.safetensors") as info:
        imgcluster.train_folder(small_folder, n_clusters=3, out=tmp_path / "head.pt", **MODEL)
    assert info.value.parameters == ("out",) and not (tmp_path / "head.pt").exists()


@pytest.mark.usefixtures("no_embedding")
def test_objective_options_that_are_not_a_dict_are_refused_by_name(small_folder: Path) -> None:
    """A string such as "hidden=3" failed inside dict() (cluster_folder) or as ** of a str (train_folder): a bare ValueError, TypeError."""
    for call in (imgcluster.cluster_folder, imgcluster.train_folder):
        with pytest.raises(ParameterError, match=re.escape("objective_options takes a dict of the objective's options")) as info:
            call(small_folder, n_clusters=3, objective_options="hidden=3", **MODEL)  # type: ignore[operator]
        assert info.value.parameters == ("objective_options",)


def test_results_print_as_a_summary_line(small_folder: Path, shared_cache: Path) -> None:
    """In a notebook, `result` printed every path, column and outlier score (19,000 characters for
    125 images) and `embeddings` every path and a feature matrix: each is now one line saying what it holds."""
    result = imgcluster.cluster_folder(small_folder, n_clusters=3, cache_dir=shared_cache, **MODEL)
    sizes = result.cluster_sizes
    assert repr(result.embeddings) == (
        f"Embeddings(24 images of {str(small_folder)!r}, efficientnet-lite0 features [24, 1280], "
        f"{result.embeddings.embedded} embedded, {result.embeddings.reused} reused, 0 skipped)"
    )
    assert repr(result) == (
        f"Assignment(24 images of {str(small_folder)!r} in 3 clusters (sizes {sizes}), secu, {result.outliers.count} outliers)"
    )
    outliers = r"Outliers\(\d+ of 24: \d+ far from their cluster's centre, 0 isolated, 0 of low confidence\)"
    assert re.fullmatch(outliers, repr(result.outliers))


def test_help_of_the_package_names_every_public_name() -> None:
    """help(imgcluster) listed seven functions and no result type, event or error class."""
    doc = imgcluster.__doc__ or ""
    assert [name for name in imgcluster.__all__ if name != "__version__" and f"`{name}`" not in doc] == []
    assert "cluster_folder(" in doc  # and shows a call


def test_every_public_class_says_what_it_is() -> None:
    """help(imgcluster.Evaluation) and help(imgcluster.ReportResult) showed only the dataclass's
    generated signature."""
    import inspect

    classes = [getattr(imgcluster, name) for name in imgcluster.__all__ if inspect.isclass(getattr(imgcluster, name))]
    generated = [c.__name__ for c in classes if not c.__doc__ or c.__doc__.startswith(f"{c.__name__}(")]
    assert generated == [] and len(classes) >= 9


def test_a_result_given_for_a_csv_path_is_refused_with_what_to_pass(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    """write_report(result), evaluate(result, ...) and export(result, ...) failed inside pathlib:
    "expected str, bytes or os.PathLike object, not Assignment"."""
    result = imgcluster.cluster_folder(small_folder, n_clusters=3, cache_dir=shared_cache, **MODEL)
    calls = [
        lambda: imgcluster.write_report(result),  # type: ignore[arg-type]
        lambda: imgcluster.evaluate(result, small_folder),  # type: ignore[arg-type]
        lambda: imgcluster.export(result, tmp_path / "sorted"),  # type: ignore[arg-type]
    ]
    refused = re.escape("assignments takes the path of a CSV that assign wrote, not Assignment: write it first")
    for call in calls:
        with pytest.raises(ParameterError, match=refused) as info:
            call()
        assert info.value.parameters == ("assignments",)
    result.write(tmp_path / "clusters.csv")
    with pytest.raises(ParameterError, match=re.escape(f"pass the CSV it wrote, {tmp_path / 'clusters.csv'}")):
        imgcluster.write_report(result)  # type: ignore[arg-type]
    assert imgcluster.evaluate(os.fsencode(tmp_path / "clusters.csv"), small_folder).matched == 24  # a path in bytes is a path


@pytest.mark.usefixtures("no_embedding")
def test_a_progress_that_cannot_be_called_is_refused_before_any_work(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`progress="bar"` ran the scan (embed: the model's load) and failed at the first event with a TypeError."""
    import numpy as np
    from test_exporting import write_csv

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded although progress was refused")

    monkeypatch.setattr("imgcluster.features.embed_checked", fail)
    images = sorted(small_folder.rglob("*.png"))
    csv_path = write_csv(tmp_path / "c.csv", [(p.relative_to(small_folder).as_posix(), 0, "", 0) for p in images])
    calls = [
        lambda: imgcluster.embed(small_folder, progress="bar", **MODEL),  # type: ignore[arg-type]
        lambda: imgcluster.cluster_folder(small_folder, progress="bar", **MODEL),  # type: ignore[arg-type]
        lambda: imgcluster.train_folder(small_folder, progress="bar", **MODEL),  # type: ignore[arg-type]
        lambda: imgcluster.export(csv_path, tmp_path / "sorted", folder=small_folder, progress="bar"),  # type: ignore[arg-type]
        lambda: imgcluster.write_report(csv_path, folder=small_folder, progress="bar"),  # type: ignore[arg-type]
        lambda: imgcluster.ClusterHead(n_clusters=2, epochs=1, device="cpu").fit(np.eye(8), progress="bar"),  # type: ignore[arg-type]
    ]
    before = sorted(tmp_path.rglob("*"))
    for call in calls:
        with pytest.raises(ParameterError) as info:
            call()
        assert str(info.value) == "progress takes a function that receives each Event (or None), not a str"
        assert info.value.parameters == ("progress",)
    assert sorted(tmp_path.rglob("*")) == before  # no cache, export or report begun


@pytest.mark.parametrize(
    "function",
    ["ClusterHead.__init__", "cluster_folder", "train_folder", "scale.train_from_store", "scale.assign_store"],
)
def test_each_training_function_takes_the_one_list_of_training_parameters(function: str) -> None:
    """The list is spelled out in each signature for help(); ``head_config.Training`` is the one that each passes on
    (``Training.of(locals())``), so a parameter added to a signature and not to it, or with another default, would be
    lost or changed on its way to the head."""
    import dataclasses
    import importlib
    import inspect

    from imgcluster.head_config import Training

    importlib.import_module("imgcluster.scale")  # an attribute of imgcluster once imported
    target: object = imgcluster
    for part in function.split("."):
        target = getattr(target, part)
    parameters = inspect.signature(target).parameters
    for field in dataclasses.fields(Training):
        assert field.name in parameters, (function, field.name)
        parameter = parameters[field.name]
        assert parameter.default == field.default, (function, field.name)
        assert parameter.annotation == field.type, (function, field.name)


@pytest.mark.parametrize(
    ("call", "parameter", "value"),
    [
        (lambda v: imgcluster.cluster_folder("missing", names=v), "names", "no"),
        (lambda v: imgcluster.cluster_folder("missing", raw_csv=v), "raw_csv", 1),
        (lambda v: imgcluster.train_folder("missing", reembed=v), "reembed", "false"),
        (lambda v: imgcluster.embed("missing", rehash=v), "rehash", "yes"),
        (lambda v: imgcluster.write_report("missing.csv", montage=v), "montage", "no"),
        (lambda v: imgcluster.export("missing.csv", "sorted", follow_symlinks=v), "follow_symlinks", 0),
        (lambda v: imgcluster.ClusterHead(self_label=v).train_config(), "self_label", "no"),
    ],
)
def test_an_on_off_parameter_takes_true_or_false(call: object, parameter: str, value: object) -> None:
    """``names="no"`` (a config file's value) is true to Python: it turned the names on, ``montage="no"`` wrote montages."""
    with pytest.raises(ParameterError) as info:
        call(value)  # type: ignore[operator]
    assert str(info.value) == f"{parameter} must be True or False, got {value!r}" and info.value.parameters == (parameter,)


def test_a_numpy_bool_is_true_or_false() -> None:
    import numpy as np

    assert imgcluster.ClusterHead("ddc", uco=np.bool_(True)).train_config().objective == "ddc"


def test_a_list_of_files_with_one_twice_or_a_non_path_is_refused_by_name(tmp_path: Path) -> None:
    """embed([a, a, b]) gave two rows for three files, so the features no longer lined up with the list; a number in
    the list was a TypeError from pathlib."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=2)
    a, b = sorted(folder.rglob("*.png"))
    with pytest.raises(ParameterError) as info:
        imgcluster.embed([a, str(a.parent / "." / a.name), b], model="efficientnet-lite0")
    assert str(info.value) == f"folder_or_paths lists {a} more than once; each file has one row of features"
    with pytest.raises(ParameterError) as info:
        imgcluster.embed([a, 3], model="efficientnet-lite0")
    assert str(info.value) == "folder_or_paths takes a folder or a list of image files, and the list holds 3"
    assert info.value.parameters == ("folder_or_paths",) and not (folder / ".imgcluster").exists()
