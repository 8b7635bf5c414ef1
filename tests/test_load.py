from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcluster.errors import ParameterError
from imgcluster.load import ImageDecodeError, decode_timeout, load_rgb, time_limit


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_la_and_palette_transparency(tmp_path: Path) -> None:
    Image.new("LA", (3, 3), (0, 0)).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)
    p = Image.new("P", (3, 3), 0)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert load_rgb(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


def test_grey_16bit_and_cmyk(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 100).save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png").getpixel((0, 0)) == (100, 100, 100)
    Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)).save(tmp_path / "d.png")
    assert load_rgb(tmp_path / "d.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "c.tiff")
    assert load_rgb(tmp_path / "c.tiff").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (0, 128, 0)).save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, _, b = load_rgb(tmp_path / "a.gif").getpixel((0, 0))
    assert r > 200 and b < 50


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "not an image"), (b"hello, not an image", "not an image"), (None, "cannot decode")],
)
def test_bad_files_raise_with_reason(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "bad.png"
    if content is None:
        Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_rgb(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="disappeared"):
        load_rgb(tmp_path / "gone.png")


def _alpha_stripes(colour: tuple[int, int, int]) -> Image.Image:
    """A pattern drawn only in the alpha channel over constant ``colour``, as MATE's Silk and Waves are."""
    alpha = np.zeros((40, 60), np.uint8)
    alpha[:, ::6] = 200
    alpha[::8, :] = 120
    rgba = np.dstack([np.full((40, 60, 3), colour, np.uint8), alpha])
    return Image.fromarray(rgba, "RGBA")


def test_alpha_only_pattern_stays_visible(tmp_path: Path) -> None:
    """White drawn through transparency would vanish on white: it is shown on black instead."""
    _alpha_stripes((255, 255, 255)).save(tmp_path / "white-on-clear.png")
    grey = np.asarray(load_rgb(tmp_path / "white-on-clear.png").convert("L"), dtype=np.float32)
    assert grey.std() > 40  # the stripes keep their contrast
    assert grey[1, 0] == pytest.approx(200, abs=1) and grey[1, 1] == 0
    _alpha_stripes((0, 0, 0)).save(tmp_path / "black-on-clear.png")  # dark content: white still shows it
    assert load_rgb(tmp_path / "black-on-clear.png").getpixel((1, 1)) == (255, 255, 255)
    opaque = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    opaque.save(tmp_path / "opaque.png")
    assert load_rgb(tmp_path / "opaque.png").getpixel((0, 0)) == (255, 255, 255)


def test_alpha_only_pattern_in_grey_alpha_and_draft(tmp_path: Path) -> None:
    """Grey+alpha files take the same path, at the reduced size report thumbnails ask for."""
    la = _alpha_stripes((255, 255, 255)).convert("LA")
    la.save(tmp_path / "la.png")
    grey = np.asarray(load_rgb(tmp_path / "la.png", draft_size=16).convert("L"), dtype=np.float32)
    assert grey.std() > 40


@pytest.mark.parametrize(("raw", "limit"), [("", 60.0), ("0", 0.0), ("2.5", 2.5), ("inf", 0.0), ("1e300", 0.0)])
def test_decode_timeout_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str, limit: float) -> None:
    """``inf`` reached the timer as an OverflowError in every file, and each image was recorded as undecodable."""
    monkeypatch.setenv("IMGCLUSTER_DECODE_TIMEOUT", raw)
    assert decode_timeout() == limit
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with time_limit(decode_timeout()):
        assert load_rgb(tmp_path / "a.png").size == (8, 8)


@pytest.mark.parametrize("raw", ["abc", "-1", "nan"])
def test_a_decode_timeout_that_is_not_a_number_of_seconds_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """It was ignored without a word (``abc``), or turned the limit off (``-1``, ``nan``)."""
    monkeypatch.setenv("IMGCLUSTER_DECODE_TIMEOUT", raw)
    with pytest.raises(ParameterError) as caught:
        decode_timeout()
    assert str(caught.value) == f"IMGCLUSTER_DECODE_TIMEOUT must be a number of seconds (0 for no limit), not {raw!r}"
