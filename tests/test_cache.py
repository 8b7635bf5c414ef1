import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcluster.cache import FAILURES_FILE, KEY_FORMAT, cache_key, read_failures, read_shard
from imgcluster.config import EmbedConfig
from imgcluster.pipeline import EmbedHooks, embed_folder

CPU = torch.device("cpu")


def run(folder: Path, cache: Path, hooks: EmbedHooks | None = None):
    return embed_folder(EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(cache), workers=0, batch_size=4), CPU, hooks)


def test_second_run_embeds_nothing_and_touch_reembeds_one(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(small_folder, cache)
    assert first.embedded == 24 and first.reused == 0
    second = run(small_folder, cache)
    assert second.embedded == 0 and second.reused == 24
    assert np.array_equal(first.features, second.features)
    target = sorted(small_folder.rglob("*.png"))[5]
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = run(small_folder, cache)
    assert (third.embedded, third.reused) == (1, 23)


def test_deleted_files_are_dropped_and_new_ones_added(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run(small_folder, cache)
    victim = sorted(small_folder.rglob("*.png"))[0]
    victim.unlink()
    (small_folder / "copy.png").write_bytes(sorted(small_folder.rglob("*.png"))[3].read_bytes())
    result = run(small_folder, cache)
    assert result.embedded == 1 and len(result.paths) == 24
    assert victim.relative_to(small_folder).as_posix() not in result.paths
    shards = list((result.cache_dir / "shards").glob("*.safetensors"))
    assert len(shards) == 1  # compacted
    _, rows = read_shard(shards[0])
    assert sorted(r[0] for r in rows) == sorted(result.paths)


def test_interrupted_run_keeps_finished_batches(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imgcluster.pipeline.FLUSH_EVERY", 4)
    cache = tmp_path / "cache"
    seen = 0

    def advance(n: int) -> None:
        nonlocal seen
        seen += n
        if seen >= 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(small_folder, cache, EmbedHooks(on_advance=advance))
    resumed = run(small_folder, cache)
    assert resumed.reused == 12 and resumed.embedded == 12


def test_damaged_shard_is_reported_and_rebuilt(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(small_folder, cache)
    shard = next((first.cache_dir / "shards").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the feature block
    shard.write_bytes(bytes(data))
    warnings: list[str] = []
    again = run(small_folder, cache, EmbedHooks(on_warning=warnings.append))
    assert any("checksum" in w for w in warnings)
    assert again.embedded == 24
    assert np.allclose(again.features, first.features)


def test_bad_files_are_skipped_not_fatal(messy_folder: Path, shared_cache: Path) -> None:
    result = run(messy_folder, shared_cache)
    skipped = dict(result.skipped)
    assert set(skipped) == {"empty.png", "notes.jpg", "truncated.png"}
    assert "not an image" in skipped["notes.jpg"]
    for good in ["grey.png", "palette.gif", "rotated.jpg", "ünïcødé 名前.webp", "cmyk.tiff", "nested/deeper/rgba.png"]:
        assert good in result.paths
    assert not any(p.startswith(".hidden") for p in result.paths)
    assert result.features.shape == (len(result.paths), 1280)


def test_bfloat16_features_get_a_cache_of_their_own() -> None:
    """CUDA runs compute in bfloat16: their features must never share a cache with float32 ones,
    while the float32 key stays what it was before the field existed (old caches remain valid)."""
    identity = {"model": "m", "weights": "w", "feature_dim": 4}
    assert cache_key(identity, "float16", "float32") == cache_key(identity, "float16")
    assert cache_key(identity, "float16", "bfloat16") != cache_key(identity, "float16")
    legacy = json.dumps({"backbone": identity, "dtype": "float16", "format": KEY_FORMAT}, sort_keys=True)
    assert cache_key(identity, "float16") == hashlib.sha256(legacy.encode()).hexdigest()[:16]


def test_cache_description_records_the_compute_precision(small_folder: Path, tmp_path: Path) -> None:
    result = run(small_folder, tmp_path / "cache")
    assert json.loads((result.cache_dir / "config.json").read_text())["compute"] == "float32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_embedding_is_close_to_cpu_and_cached_apart(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cpu = run(small_folder, cache)
    config = EmbedConfig(str(small_folder), model="efficientnet-lite0", cache_dir=str(cache), workers=2, batch_size=8)
    gpu = embed_folder(config, torch.device("cuda"))
    assert gpu.cache_dir != cpu.cache_dir and gpu.embedded == 24
    assert gpu.paths == cpu.paths
    a = cpu.features / np.linalg.norm(cpu.features, axis=1, keepdims=True)
    b = gpu.features / np.linalg.norm(gpu.features, axis=1, keepdims=True)
    assert (a * b).sum(1).min() > 0.98  # bfloat16 autocast against float32
    assert json.loads((gpu.cache_dir / "config.json").read_text())["compute"] == "bfloat16"


def test_a_shared_cache_keeps_one_cache_per_folder(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$IMGCLUSTER_CACHE (or --cache-dir) set once for every folder: running B must not drop A's rows."""
    other = tmp_path / "other"
    other.mkdir()
    for path in sorted(small_folder.rglob("*.png"))[:6]:
        (other / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("IMGCLUSTER_CACHE", str(tmp_path / "shared"))

    def embed(folder: Path):
        return embed_folder(EmbedConfig(str(folder), model="efficientnet-lite0", workers=0, batch_size=4), CPU)

    first = embed(small_folder)
    assert (first.embedded, embed(other).embedded) == (24, 6)
    again = embed(small_folder)
    assert (again.embedded, again.reused) == (0, 24)
    assert again.cache_dir == first.cache_dir and again.cache_dir.is_relative_to(tmp_path / "shared" / "folders")
    assert again.cache_dir.parent.parent.name.startswith(small_folder.name + "-")


def test_a_file_that_failed_is_not_tried_again_while_unchanged(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgcluster.embedding as embedding

    cache = tmp_path / "cache"
    (small_folder / "broken.png").write_bytes(b"not a png at all")
    first = run(small_folder, cache)
    reason = dict(first.skipped)["broken.png"]
    assert reason == "not an image (unrecognised format)" and first.embedded == 24
    assert json.loads((first.cache_dir / FAILURES_FILE).read_text())["files"].keys() == {"broken.png"}
    decoded: list[Path] = []
    load = embedding.load_image
    monkeypatch.setattr(embedding, "load_image", lambda path, *a, **kw: decoded.append(path) or load(path, *a, **kw))
    warnings: list[str] = []
    second = run(small_folder, cache, EmbedHooks(on_warning=warnings.append))
    assert decoded == [] and (second.embedded, second.reused) == (0, 24)
    when = r" \(unchanged since it failed on \d{4}-\d\d-\d\d \d\d:\d\d UTC\)"
    assert re.fullmatch(re.escape(reason) + when, dict(second.skipped)["broken.png"])
    assert "1 file(s) that could not be embedded before are unchanged and were not tried again ({reembed} does)" in warnings
    (small_folder / "broken.png").write_bytes(b"still not a png, but changed")
    third = run(small_folder, cache)
    assert [p.name for p in decoded] == ["broken.png"] and dict(third.skipped)["broken.png"] == reason
    shutil.copy(sorted(small_folder.rglob("*.png"))[0], small_folder / "broken.png")  # mended
    fourth = run(small_folder, cache)
    assert (fourth.embedded, fourth.skipped) == (1, []) and not (fourth.cache_dir / FAILURES_FILE).exists()


def test_reembed_tries_known_failures_again(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (small_folder / "broken.png").write_bytes(b"not a png at all")
    run(small_folder, cache)
    config = EmbedConfig(str(small_folder), model="efficientnet-lite0", cache_dir=str(cache), workers=0, batch_size=4, reembed=True)
    again = embed_folder(config, CPU)
    assert again.embedded == 24 and dict(again.skipped)["broken.png"] == "not an image (unrecognised format)"


def test_a_damaged_failure_record_means_trying_again(small_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (small_folder / "broken.png").write_bytes(b"not a png at all")
    first = run(small_folder, cache)
    (first.cache_dir / FAILURES_FILE).write_text('{"format": "1", "files": {"broken.png": [1, 2, "x"]}')
    assert read_failures(first.cache_dir) == {}
    again = run(small_folder, cache)
    assert dict(again.skipped)["broken.png"] == "not an image (unrecognised format)"
    assert read_failures(first.cache_dir).keys() == {"broken.png"}  # rewritten whole


def test_an_unchanged_description_is_not_written_again_so_a_full_disk_does_not_stop_a_cached_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fully cached rerun on a full disk failed writing config.json, before reading the features it had."""
    from faults import fill_disk_for

    from imgcluster.cache import EmbeddingCache
    from imgcluster.errors import ImgclusterError

    description = {"backbone": {"model": "m", "feature_dim": 4}, "embed": {"workers": None, "dtype": "float16"}, "runtime": "torch"}
    EmbeddingCache.open(tmp_path, "float16", description)
    written, inode = (tmp_path / "config.json").read_text(), (tmp_path / "config.json").stat().st_ino
    EmbeddingCache.open(tmp_path, "float16", description)  # nothing changed: nothing written (a write replaces the file)
    assert (tmp_path / "config.json").stat().st_ino == inode
    fill_disk_for(monkeypatch, "config.json", budget=0)
    other_options = {**description, "embed": {"workers": 0, "dtype": "float16"}}
    EmbeddingCache.open(tmp_path, "float16", other_options)  # only the run's options: the old record still describes the cache
    assert (tmp_path / "config.json").read_text() == written
    another_backbone = {**description, "backbone": {"model": "m", "feature_dim": 8}}
    with pytest.raises(ImgclusterError, match=r"cannot write .*config\.json: No space left on device"):
        EmbeddingCache.open(tmp_path, "float16", another_backbone)


def test_a_cache_root_from_the_environment_may_start_with_a_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """IMGCLUSTER_CACHE=~/cache from an env file (which no shell expands) made a folder named "~" in the current folder."""
    from imgcluster.cache import default_cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IMGCLUSTER_CACHE", "~/cache")
    root = default_cache_root(tmp_path / "photos", None)
    assert root.is_relative_to(tmp_path / "home" / "cache")


def test_features_the_cache_cannot_hold_are_skipped_with_the_reason_and_not_tried_again(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feature beyond float16's 65504 became infinity in the shard, which the next run refused as damaged:
    the image was embedded again on every run. It is skipped with the reason, and remembered, as a file that
    cannot be decoded is."""
    from PIL import Image

    import imgcluster.embedding as embedding

    Image.new("RGB", (64, 64), (255, 255, 255)).save(small_folder / "white.png")  # the one image the fake backbone overflows on
    real = embedding.forward
    passes: list[int] = []

    def overflowing(model, pixels, *args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(model, pixels, *args, **kwargs)
        flat = pixels.flatten(1).float()
        uniform = (flat.amax(dim=1) == flat.amin(dim=1)).numpy()[: len(out)]  # a one-colour image (padding rows are cut)
        passes.append(int(uniform.sum()))
        out[uniform] = 1e6
        return out

    monkeypatch.setattr(embedding, "forward", overflowing)
    cache = tmp_path / "cache"
    first = run(small_folder, cache)
    why = "not cached: its features reach 1e+06, beyond float16's largest value 65504, which the cache would hold as infinity"
    assert dict(first.skipped) == {"white.png": why} and first.embedded == 24 and "white.png" not in first.paths
    assert sum(passes) == 1 and np.isfinite(first.features).all()
    assert read_failures(first.cache_dir).keys() == {"white.png"}
    warnings: list[str] = []
    second = run(small_folder, cache, EmbedHooks(on_warning=warnings.append))
    assert (second.embedded, second.reused) == (0, 24) and sum(passes) == 1  # no forward pass: nothing left to embed
    assert not [w for w in warnings if "damaged" in w]  # the shard holds no infinity to refuse
    assert dict(second.skipped)["white.png"].startswith(why + " (unchanged since it failed on ")
    assert np.array_equal(first.features, second.features)
    from typer.testing import CliRunner

    from imgcluster.cli import app

    said = CliRunner().invoke(app, ["embed", str(small_folder), "--cache-dir", str(tmp_path / "cli-cache"), "--quiet"])
    assert said.exit_code == 0, said.output
    assert "skipped 1 file whose features could not be kept; details in " in said.stderr, said.stderr  # not "unreadable"


@pytest.mark.slow
def test_a_cache_this_user_cannot_write_is_read_and_train_says_so_before_training(small_folder: Path, tmp_path: Path) -> None:
    """Real permissions (as root: without the capabilities that override them). ``train`` without ``--out`` into a
    read-only cache trained, then failed saving the head; ``assign`` reads the cache and writes nothing into it."""
    import subprocess
    import sys

    from unprivileged import prefix

    words = prefix()
    cache = tmp_path / "cache"
    run(small_folder, cache)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    folders = [cache, *(p for p in cache.rglob("*") if p.is_dir())]
    for path in folders:
        path.chmod(0o555)
    common = ["--model", "efficientnet-lite0", "--cache-dir", str(cache), "-k", "2", "--workers", "0"]
    env = {**os.environ, "COLUMNS": "200"}
    try:
        train = subprocess.run(
            [*words, sys.executable, "-m", "imgcluster", "train", str(small_folder), *common],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assign = subprocess.run(
            [*words, sys.executable, "-m", "imgcluster", "assign", str(small_folder), *common, "--out", str(tmp_path / "out.csv")],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
    finally:
        for path in folders:
            path.chmod(0o755)
    assert train.returncode == 1 and "epoch" not in train.stderr and "Traceback" not in train.stderr, train.stderr
    last = train.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: cannot save the head in the cache: cannot write .*/heads/head\.safetensors: Permission denied; "
                        r"give it a file of its own with --out", last), last  # fmt: skip
    assert assign.returncode == 0 and "Traceback" not in assign.stderr, assign.stderr
    assert "the head is not kept" in assign.stderr and (tmp_path / "out.csv").is_file()
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before  # nothing written, nothing removed


def test_a_folder_whose_features_all_overflow_says_why_it_has_too_few_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image skipped (here: features beyond float16's range) ended in "need at least two images to cluster", with
    no reason and no skipped list written."""
    from imagefolders import CLASSES, copy_sample
    from typer.testing import CliRunner

    import imgcluster.embedding as embedding
    from imgcluster.cli import app

    folder = copy_sample(tmp_path / "photos", CLASSES[:1], per_class=3)
    real = embedding.forward
    monkeypatch.setattr(embedding, "forward", lambda *a, **kw: real(*a, **kw) * 0 + 1e6)
    args = ["assign", str(folder), "-k", "2", "--model", "efficientnet-lite0", "--workers", "0", "--cache-dir", str(tmp_path / "cache")]
    done = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "c.csv")])
    first = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))[0]
    assert done.exit_code == 1 and done.stderr.splitlines()[-1] == (
        f"error: need at least two images to cluster: 0 embedded, 3 skipped (e.g. {first}: not cached: its features reach "
        "1e+06, beyond float16's largest value 65504, which the cache would hold as infinity)"
    ), done.stderr
