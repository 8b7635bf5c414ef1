"""Fuzzing the image loader: mutated real PNG/JPEG/GIF/WebP/TIFF/BMP files must be embedded or
skipped with a reason, never crash the run or hang it.

Thousands of seeded mutations go through :func:`imgcluster.load.load_rgb` and the embed
Dataset's ``__getitem__`` (fast: no model); a few dozen go through the whole ``embed_folder``.
Each case runs under a SIGALRM watchdog, so a hang fails the test with the case that hung.
"""

from __future__ import annotations

import io
import random
import signal
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import record
from imagefolders import CLASSES, sample_image
from PIL import Image, ImageFile

from imgcluster.embedding import ImageDataset, draft_size_for
from imgcluster.listing import ImageFile as ScannedFile
from imgcluster.load import ImageDecodeError, load_image, load_rgb

SEED = 20240601
CASES = 3000
FOLDER_CASES = 40
CASE_SECONDS = 20  # a decode slower than this counts as a hang
DATA_CONFIG = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875}
PILLOW_DEFAULT_MAX_PIXELS = 89_478_485


# ---- real images in every format the scanner accepts ------------------------------------------
def _photo(i: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return sample_image(CLASSES[i % len(CLASSES)], i % 5).resize(size)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _frames(n: int = 3) -> list[Image.Image]:
    return [_photo(i) for i in range(n)]


def base_files() -> dict[str, tuple[str, bytes]]:
    """name -> (extension, bytes): valid files in the forms real folders contain."""
    rgba = _photo(1).convert("RGBA")
    rgba.putalpha(128)
    exif = Image.Exif()
    exif[0x0112] = 6
    grey16 = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    frames = _frames()
    files = {
        "png-rgb": (".png", _encode(_photo(0), "PNG")),
        "png-rgba": (".png", _encode(rgba, "PNG")),
        "png-grey16": (".png", _encode(grey16, "PNG")),
        "png-palette": (".png", _encode(_photo(2).convert("P"), "PNG")),
        "png-animated": (".png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])),
        "jpeg": (".jpg", _encode(_photo(3), "JPEG", quality=90)),
        "jpeg-progressive": (".jpeg", _encode(_photo(4), "JPEG", progressive=True)),
        "jpeg-exif-rotated": (".jpg", _encode(_photo(5), "JPEG", exif=exif)),
        "jpeg-cmyk": (".jpg", _encode(_photo(6).convert("CMYK"), "JPEG")),
        "gif": (".gif", _encode(_photo(7).convert("P"), "GIF")),
        "gif-animated": (".gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)),
        "webp-lossy": (".webp", _encode(_photo(8), "WEBP", quality=80)),
        "webp-lossless": (".webp", _encode(rgba, "WEBP", lossless=True)),
        "webp-animated": (".webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)),
        "tiff": (".tiff", _encode(_photo(9), "TIFF")),
        "tiff-lzw": (".tif", _encode(_photo(10), "TIFF", compression="tiff_lzw")),
        "tiff-cmyk": (".tiff", _encode(_photo(11).convert("CMYK"), "TIFF")),
        "tiff-multipage": (".tiff", _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
        "bmp": (".bmp", _encode(_photo(12), "BMP")),
        "png-1x1": (".png", _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
        "jpeg-1x1": (".jpg", _encode(Image.new("RGB", (1, 1), (10, 200, 10)), "JPEG")),
        "png-20000x20": (".png", _encode(_photo(13, (20000, 20)), "PNG")),
        "png-20x20000": (".png", _encode(_photo(14, (20, 20000)), "PNG")),
        "jpeg-20000x20": (".jpg", _encode(_photo(15, (20000, 20)), "JPEG")),
    }
    return files


# ---- mutations ---------------------------------------------------------------------------------
def _png_with_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR dimensions with a valid CRC, so only the size is a lie."""
    assert data[12:16] == b"IHDR"
    body = bytearray(data[16:29])
    body[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(body)) & 0xFFFFFFFF)
    return data[:16] + bytes(body) + crc + data[33:]


def _huge_dims(data: bytes, rng: random.Random) -> bytes:
    """Declare enormous (or merely large) dimensions in the header of PNG, GIF, BMP or JPEG."""
    width, height = rng.choice([(100_000, 100_000), (12_000, 12_000), (9_000, 9_000), (1, 2**31 - 1), (65_535, 65_535)])
    if data[1:4] == b"PNG":
        return _png_with_size(data, width, height)
    if data[:3] == b"GIF":
        out = bytearray(data)
        out[6:10] = struct.pack("<HH", min(width, 65_535), min(height, 65_535))
        return bytes(out)
    if data[:2] == b"BM":
        out = bytearray(data)
        out[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
        return bytes(out)
    sof = data.find(b"\xff\xc0") if b"\xff\xc0" in data else data.find(b"\xff\xc2")
    if data[:2] == b"\xff\xd8" and sof > 0:
        out = bytearray(data)
        out[sof + 5 : sof + 9] = struct.pack(">HH", min(height, 65_535), min(width, 65_535))
        return bytes(out)
    return data[:8] + struct.pack(">II", width, height) + data[16:]  # no header we know: still a lie


def _tiff_ifd_loop(data: bytes) -> bytes:
    """Point the first IFD's next-IFD offset back at itself: a classic infinite-loop file."""
    if data[:2] not in (b"II", b"MM"):
        return data
    endian = "<" if data[:2] == b"II" else ">"
    first = struct.unpack(endian + "I", data[4:8])[0]
    if first + 2 > len(data):
        return data
    count = struct.unpack(endian + "H", data[first : first + 2])[0]
    at = first + 2 + 12 * count
    if at + 4 > len(data):
        return data
    return data[:at] + struct.pack(endian + "I", first) + data[at + 4 :]


def _flip_bits(data: bytes, rng: random.Random, n: int, window: int | None = None) -> bytes:
    out = bytearray(data)
    limit = min(len(out), window) if window else len(out)
    for _ in range(n):
        pos = rng.randrange(limit)
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


Mutation = Callable[[bytes, random.Random], bytes]
MUTATIONS: dict[str, Mutation] = {
    "truncate": lambda d, r: d[: r.randrange(len(d))],
    "truncate-tail": lambda d, r: d[: max(0, len(d) - r.randint(1, 64))],
    "bitflip": lambda d, r: _flip_bits(d, r, r.randint(1, 16)),
    "header-bitflip": lambda d, r: _flip_bits(d, r, r.randint(1, 4), window=64),
    "overwrite": lambda d, r: (lambda at, n: d[:at] + r.randbytes(n) + d[at + n :])(r.randrange(len(d)), r.randint(1, 32)),
    "insert": lambda d, r: (lambda at: d[:at] + r.randbytes(r.randint(1, 64)) + d[at:])(r.randrange(len(d))),
    "duplicate": lambda d, r: (lambda a, b: d[:b] + d[a:b] + d[b:])(*sorted(r.sample(range(len(d)), 2))),
    "huge-dims": _huge_dims,
    "ifd-loop": lambda d, r: _tiff_ifd_loop(d),
    "garbage": lambda d, r: r.randbytes(r.randint(1, 4096)),
    "zero-bytes": lambda d, r: b"",
    "wrong-extension": lambda d, r: d,  # the bytes are fine; the file name lies (see below)
    "intact": lambda d, r: d,
}
EXTENSIONS = [".png", ".jpg", ".jpeg", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".PNG", ".JPG"]


def cases(n: int, seed: int) -> Iterator[tuple[str, str, bytes]]:
    """(description, extension, bytes): every base intact once, then ``n`` seeded mutations."""
    bases = base_files()
    rng = random.Random(seed)
    for name, (ext, data) in bases.items():
        yield f"{name}/intact", ext, data
    names = sorted(bases)
    kinds = sorted(MUTATIONS)
    for i in range(n):
        name = rng.choice(names)
        kind = rng.choice(kinds)
        ext, data = bases[name]
        mutated = MUTATIONS[kind](data, rng)
        if kind == "wrong-extension":
            ext = rng.choice([e for e in EXTENSIONS if e.lower() != ext])
        yield f"{name}/{kind}#{i}", ext, mutated


@contextmanager
def watchdog(seconds: int, what: str) -> Iterator[None]:
    """Fail with ``what`` if the body runs longer than ``seconds`` (main thread only)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"hang: {what} took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _transform() -> Callable:
    from timm.data import create_transform

    return create_transform(**DATA_CONFIG, is_training=False)


# ---- tests -------------------------------------------------------------------------------------
def test_pillow_bomb_limit_is_kept() -> None:
    """timm, torch or our own imports must not lift Pillow's decompression-bomb limit."""
    import timm  # noqa: F401

    import imgcluster.cli
    import imgcluster.pipeline  # noqa: F401

    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_real_decompression_bomb_is_reported(tmp_path: Path) -> None:
    """A 10,000 x 10,000 one-bit PNG is a few kB on disk and 100 M pixels (over the limit)."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_rgb(bomb)
    dataset = ImageDataset([_scanned(bomb)], _transform(), draft_size_for(DATA_CONFIG))
    _, tensor, reason, _ = dataset[0]
    assert tensor is None and reason is not None and "decompression bomb" in reason


def test_extreme_aspect_ratios_do_not_blow_up_memory(tmp_path: Path) -> None:
    """A 1 x 100,000 strip would be resized to 256 x 25.6 M pixels without the aspect limit."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 100_000), (10, 20, 30)).save(strip)
    dataset = ImageDataset([_scanned(strip)], _transform(), draft_size_for(DATA_CONFIG))
    start = time.perf_counter()
    with watchdog(CASE_SECONDS, "1x100000 strip"):
        _, tensor, reason, _ = dataset[0]
    assert reason is None and tensor is not None and tuple(tensor.shape) == (3, 224, 224)
    assert time.perf_counter() - start < CASE_SECONDS


def _scanned(path: Path) -> ScannedFile:
    st = path.stat()
    return ScannedFile(path.name, path, st.st_size, st.st_mtime_ns)


@pytest.mark.slow
def test_fuzz_loader_and_dataset(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Every mutated file: load_rgb returns RGB or raises ImageDecodeError; __getitem__ returns a
    (3, 224, 224) finite tensor or a reason; the two agree; nothing hangs."""
    transform = _transform()
    draft = draft_size_for(DATA_CONFIG)
    outcomes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    failures: list[str] = []
    slowest = (0.0, "")
    start = time.perf_counter()
    for n, (what, ext, data) in enumerate(cases(CASES, SEED)):
        path = tmp_path / f"case{n % 50}{ext}"
        for old in tmp_path.glob(f"case{n % 50}.*"):
            old.unlink()
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            with watchdog(CASE_SECONDS, what):
                try:
                    image = load_rgb(path, draft)
                    loaded = image.mode == "RGB" and min(image.size) >= 1
                    if not loaded:
                        failures.append(f"{what}: load_rgb returned mode {image.mode} size {image.size}")
                except ImageDecodeError as exc:
                    loaded = False
                    if not str(exc):
                        failures.append(f"{what}: ImageDecodeError without a reason")
                _, tensor, reason, _ = ImageDataset([_scanned(path)], transform, draft)[0]
        except Exception as exc:  # noqa: BLE001 - any other exception is exactly what this test looks for
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, what))
        if tensor is not None:
            if tuple(tensor.shape) != (3, 224, 224) or not torch.isfinite(tensor).all():
                failures.append(f"{what}: tensor {tuple(tensor.shape)} finite={bool(torch.isfinite(tensor).all())}")
            if not loaded:
                failures.append(f"{what}: load_rgb refused it but the dataset embedded it")
            outcomes["embedded"] += 1
        else:
            if not reason:
                failures.append(f"{what}: neither a tensor nor a reason")
            if loaded:
                outcomes["decoded, transform refused"] += 1
            outcomes["skipped"] += 1
        by_kind[what.split("/")[1].split("#")[0]] += 1
    seconds = time.perf_counter() - start
    total = sum(by_kind.values())
    record(
        request.config,
        "fuzz_loader",
        {
            "cases": total,
            "embedded": outcomes["embedded"],
            "skipped_with_reason": outcomes["skipped"],
            "failures": len(failures),
            "seconds": round(seconds, 1),
            "slowest_case_seconds": round(slowest[0], 2),
            "slowest_case": slowest[1],
            "by_mutation": dict(sorted(by_kind.items())),
        },
    )
    assert not failures, f"{len(failures)} of {total} cases failed:\n" + "\n".join(failures[:30])
    assert total >= CASES and outcomes["embedded"] > 0 and outcomes["skipped"] > 0


def test_fuzz_through_embed_folder(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A folder of mutated files: every scanned file ends up embedded or in skipped, never both."""
    from imgcluster.config import EmbedConfig
    from imgcluster.pipeline import embed_folder

    folder = tmp_path / "fuzzed"
    folder.mkdir()
    all_cases = list(cases(FOLDER_CASES, SEED + 1))
    for n, (_, ext, data) in enumerate(all_cases):
        (folder / f"{n:03d}{ext}").write_bytes(data)
    config = EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(tmp_path / "cache"), workers=0, batch_size=8)
    start = time.perf_counter()
    with watchdog(300, "embed_folder on the fuzzed folder"):
        result = embed_folder(config, torch.device("cpu"))
    names = {p.name for p in folder.iterdir() if p.is_file()}
    skipped = dict(result.skipped)
    assert set(result.paths).isdisjoint(skipped)
    assert set(result.paths) | set(skipped) == names
    assert all(reason for reason in skipped.values())
    assert result.features.shape == (len(result.paths), 1280) and np.isfinite(result.features).all()
    for n, (what, _, _) in enumerate(all_cases):  # the intact ones must all be embedded
        if what.endswith("/intact"):
            assert any(p.startswith(f"{n:03d}.") for p in result.paths), (what, skipped)
    record(
        request.config,
        "fuzz_embed_folder",
        {
            "files": len(names),
            "embedded": len(result.paths),
            "skipped_with_reason": len(skipped),
            "failures": 0,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


def _slow_load(path: Path, draft_size: int | None = None, grey: bool = False) -> Image.Image:
    if "slow" in path.name:
        time.sleep(30)
    return load_image(path, draft_size, grey)


def test_per_file_time_limit_skips_a_hanging_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose decoding hangs is skipped with a reason after the limit, in process and in a worker."""
    import imgcluster.embedding
    from imgcluster.load import time_limit

    fast, slow = tmp_path / "fast.png", tmp_path / "slow.png"
    for path in (fast, slow):
        sample_image(CLASSES[0], 0).save(path)
    monkeypatch.setattr(imgcluster.embedding, "load_image", _slow_load)
    monkeypatch.setenv("IMGCLUSTER_DECODE_TIMEOUT", "0.5")
    dataset = ImageDataset([_scanned(fast), _scanned(slow)], _transform(), draft_size_for(DATA_CONFIG))
    assert dataset.timeout == 0.5
    start = time.perf_counter()
    with watchdog(CASE_SECONDS, "slow decode"):  # an outer alarm further away survives the inner limit
        assert dataset[0][2] is None and dataset[0][1] is not None
        _, tensor, reason, _ = dataset[1]
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    assert tensor is None and reason is not None and "longer than 0.5 s" in reason
    assert time.perf_counter() - start < 10
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1)  # the limit holds in a worker process
    reasons = [item[2] for item in loader]
    assert reasons[0] is None and reasons[1] is not None and "longer than 0.5 s" in reasons[1]
    with time_limit(0), time_limit(-1):  # 0 or less: no limit, nothing armed
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
