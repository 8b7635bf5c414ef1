"""Mistakes that need no features are refused before torch is imported and before any embedding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from imagefolders import sample_image

import imgcluster
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.preflight import check_inputs


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sample_image(i=i).save(folder / f"{i:02d}.png")
    return folder


def test_check_inputs_counts_the_scan(tmp_path: Path) -> None:
    assert len(check_inputs(_images(tmp_path / "f", 3), "auto", n_clusters=3).files) == 3
    assert len(check_inputs(_images(tmp_path / "one", 1), "auto").files) == 1  # enough to embed, or to label with a trained head


@pytest.mark.parametrize(
    ("setup", "kwargs", "error", "message"),
    [
        (lambda p: p / "nowhere", {}, ParameterError, "folder not found"),
        (lambda p: _images(p / "f", 1) / "00.png", {}, ParameterError, "not a folder"),
        (lambda p: p, {}, ImgclusterError, "no images found"),
        (lambda p: _images(p / "f", 2), {"model": "dinov2"}, ParameterError, "unknown model 'dinov2'; known models: auto"),
        (lambda p: _images(p / "f", 2), {"n_clusters": 10}, ParameterError, "n_clusters 10 is larger than the number of images (2)"),
        (lambda p: _images(p / "f", 1), {"n_clusters": 2}, ImgclusterError, "need at least two images to cluster"),
        (lambda p: _images(p / "f", 1), {"n_clusters": "many"}, ParameterError, "n_clusters takes a whole number or 'auto'"),
    ],
)
def test_check_inputs_refuses(tmp_path: Path, setup, kwargs: dict, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    options = {"model": "auto", **kwargs}
    with pytest.raises(error, match=None) as caught:
        check_inputs(setup(tmp_path), options.pop("model"), **options)
    assert message in str(caught.value)


def test_empty_folder_names_the_formats_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "phone.HEIC").write_bytes(b"not read")
    with pytest.raises(ImgclusterError, match=r"no images found .*1 file\(s\) in formats imgcluster cannot read \(\.heic\)"):
        check_inputs(tmp_path, "auto")


def test_api_refuses_too_many_clusters_before_embedding(tmp_path: Path) -> None:
    folder = _images(tmp_path / "two", 2)
    with pytest.raises(ParameterError) as caught:
        imgcluster.cluster_folder(folder, model="efficientnet-lite0")
    assert caught.value.parameters == ("n_clusters",)
    assert not (folder / ".imgcluster").exists()  # nothing was embedded, no cache was made
    with pytest.raises(ParameterError, match="n_clusters 5 is larger"):
        imgcluster.train_folder(folder, n_clusters=5, model="efficientnet-lite0")
    with pytest.raises(ParameterError, match="unknown model"):
        imgcluster.embed(folder, model="resnet")
    assert not (folder / ".imgcluster").exists()


# Runs the command line in a fresh interpreter and reports its exit code, stderr and whether torch was imported.
PROBE = """
import io, json, sys
from contextlib import redirect_stderr
from imgcluster.cli import app
err = io.StringIO()
with redirect_stderr(err):
    try:
        app(sys.argv[1:], prog_name="imgcluster")
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "stderr": err.getvalue(), "torch": "torch" in sys.modules}))
"""


def _cli(*args: str | Path, **environ: str) -> dict:
    env = {**os.environ, "COLUMNS": "200", **environ}
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("make", "args", "code", "message"),
    [
        (lambda p: None, ("assign", "{tmp}/no_such_folder"), 2, "error: folder not found"),
        (lambda p: None, ("embed", "{tmp}/no_such_folder"), 2, "error: folder not found"),
        (lambda p: p.joinpath("empty").mkdir(), ("assign", "{tmp}/empty"), 1, "error: no images found"),
        (lambda p: _images(p / "two", 2), ("assign", "{tmp}/two"), 2, "error: --clusters 10 is larger than the number of images (2)"),
        (lambda p: _images(p / "two", 2), ("train", "{tmp}/two", "-k", "3"), 2, "error: --clusters 3 is larger than the number"),
        (lambda p: _images(p / "one", 1), ("assign", "{tmp}/one", "-k", "2"), 1, "error: need at least two images to cluster"),
        (lambda p: _images(p / "two", 2), ("assign", "{tmp}/two", "--model", "dinov2"), 2, "error: unknown --model 'dinov2'"),
        (  # it failed after the model had loaded, advising to pass --cache-dir
            lambda p: [_images(p / "two", 2), p.joinpath("file").write_text("x")],
            ("embed", "{tmp}/two", "--cache-dir", "{tmp}/file"),
            2,
            "error: --cache-dir {tmp}/file is a file, not a folder",
        ),
        (  # "Not a directory" once the model had loaded
            lambda p: [_images(p / "two", 2), p.joinpath("two", ".imgcluster").write_text("x")],
            ("assign", "{tmp}/two", "-k", "2"),
            1,
            "error: cannot create the cache folder {tmp}/two/.imgcluster: {tmp}/two/.imgcluster is a file, not a folder; "
            "pass --cache-dir DIR or set $IMGCLUSTER_CACHE to a writable folder",
        ),
        # these two were found missing after torch had been imported (4.7 s), the weights with exit code 1
        (lambda p: _images(p / "two", 2), ("embed", "{tmp}/two", "--weights", "{tmp}/w"), 2, "error: weights file not found: {tmp}/w"),
        (lambda p: _images(p / "two", 2), ("assign", "{tmp}/two", "--head", "{tmp}/h"), 2, "error: head checkpoint not found: {tmp}/h"),
        # --weights a folder ("not found" after the scan, exit 1) or no weights at all (after the model's build), --dtype (after the scan)
        (lambda p: [_images(p / "two", 2), p.joinpath("w").mkdir()], ("embed", "{tmp}/two", "--weights", "{tmp}/w"), 2,
         "error: --weights {tmp}/w is not a file"),
        (lambda p: [_images(p / "two", 2), p.joinpath("w.safetensors").write_text("hello")],
         ("embed", "{tmp}/two", "--weights", "{tmp}/w.safetensors"), 1,
         "error: cannot read weights {tmp}/w.safetensors: it is not a safetensors file or a PyTorch state dict"),
        (lambda p: [_images(p / "two", 2), p.joinpath("w.pth").write_text("hello")],
         ("assign", "{tmp}/two", "-k", "2", "--weights", "{tmp}/w.pth"), 1,
         "error: cannot read weights {tmp}/w.pth: it is not a safetensors file or a PyTorch state dict"),
        (lambda p: _images(p / "two", 2), ("train", "{tmp}/two", "-k", "2", "--dtype", "float8"), 2,
         "error: --dtype must be float16 or float32, not 'float8'"),
        # --clusters auto with a --k-min above half the images, or above --k-max: refused once embedded, or once torch was imported
        (lambda p: _images(p / "two", 2), ("assign", "{tmp}/two", "-k", "auto", "--k-min", "3"), 2, "error: 2 images are too few"),
        (lambda p: _images(p / "two", 2), ("train", "{tmp}/two", "-k", "auto", "--k-min", "5", "--k-max", "3"), 2, "error: --k-max (3)"),
    ],
)
def test_cli_mistakes_fail_before_torch(tmp_path: Path, make, args: tuple, code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    (tmp_path / "two").mkdir(exist_ok=True)
    (tmp_path / "two" / "phone.heic").write_bytes(b"x")  # would be warned about by a scan that ran first
    result = _cli(*(a.format(tmp=tmp_path) for a in args))
    assert result["code"] == code, result
    message = message.format(tmp=tmp_path)
    assert result["stderr"].strip().splitlines() == [message] or result["stderr"].startswith(message), result
    assert result["stderr"].count("\n") == 1, result  # one line: no format warning, no progress before it
    assert not result["torch"]


def test_a_run_walks_the_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks' scan is the one the embedding reads: a large folder is not listed twice."""
    import imgcluster.preflight as preflight

    walks: list[Path] = []
    real = preflight.list_images

    def counted(root: Path, **options: object) -> list:
        walks.append(root)
        return real(root, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(preflight, "list_images", counted)
    folder = _images(tmp_path / "f", 3)
    result = imgcluster.embed(folder, model="efficientnet-lite0", cache_dir=tmp_path / "cache", workers=0)
    assert len(walks) == 1 and sorted(result.paths) == ["00.png", "01.png", "02.png"]


def test_a_cache_variable_naming_a_file_fails_before_torch(tmp_path: Path) -> None:
    _images(tmp_path / "two", 2)
    (tmp_path / "file").write_text("x")
    result = _cli("assign", tmp_path / "two", "-k", "2", IMGCLUSTER_CACHE=str(tmp_path / "file"))
    assert result["code"] == 2 and not result["torch"]
    assert result["stderr"] == f"error: $IMGCLUSTER_CACHE {tmp_path / 'file'} is a file, not a folder\n"


@pytest.mark.parametrize("where", ["folder", "cache_dir", "variable"])
def test_a_cache_that_cannot_be_created_fails_before_torch(tmp_path: Path, where: str) -> None:
    """A read-only FOLDER (its default cache inside it) or a cache root under a folder this user cannot write failed only
    once torch and the model had loaded. Run with real permissions: as root, without the capabilities that override them."""
    from unprivileged import prefix

    folder = _images(tmp_path / "photos", 3)
    closed = tmp_path / "closed"
    closed.mkdir()
    args, environ, root = ["assign", str(folder), "-k", "2"], {}, folder / ".imgcluster"
    if where == "cache_dir":
        args += ["--cache-dir", str(closed / "cache")]
    if where == "variable":
        environ["IMGCLUSTER_CACHE"] = str(closed / "cache")
    if where != "folder":
        from imgcluster.cache import default_cache_root

        root = default_cache_root(folder, str(closed / "cache"))
    (closed if where != "folder" else folder).chmod(0o555)
    try:
        env = {**os.environ, "COLUMNS": "200", **environ}
        done = subprocess.run([*prefix(), sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    finally:
        (closed if where != "folder" else folder).chmod(0o755)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    blocked = closed if where != "folder" else folder
    assert result["code"] == 1 and not result["torch"], result
    assert result["stderr"] == (
        f"error: cannot create the cache folder {root}: {blocked} is not writable; "
        "pass --cache-dir DIR or set $IMGCLUSTER_CACHE to a writable folder\n"
    )
    assert not root.exists()
