"""Decode one image file into an RGB picture, or say exactly why it cannot be."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from imgcluster.errors import ParameterError

# Seconds one file may take to decode and preprocess before it is skipped ($IMGCLUSTER_DECODE_TIMEOUT;
# 0 turns the limit off). The slowest of 3,024 fuzzed files took 5 s on a loaded 2-core machine.
DECODE_TIMEOUT = 60.0

# Keep Pillow strict: a truncated file is an error, never half an image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(Exception):
    """The file is not a usable image; the message is the reason shown in ``skipped.csv``."""


class DecodeTimeout(BaseException):
    """Raised when one file's time is up: a BaseException, so no image-error handler swallows it."""


def _time_is_up(signum: int, frame: object) -> None:
    raise DecodeTimeout


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block with :class:`DecodeTimeout` after ``seconds`` of wall time.

    Uses ``SIGALRM``, so it only works in a process's main thread on POSIX (decode workers and the
    in-process loader both are); elsewhere, or with ``seconds <= 0``, the block runs unlimited.
    Pillow decodes in chunks from Python, so the signal lands within one chunk of the limit. An
    alarm someone else set (a watchdog) is kept: if it is due first this limit stands aside,
    otherwise it is re-armed afterwards with the time it had left.
    """
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < outer_left <= seconds:
        yield
        return
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _time_is_up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3), outer_interval)


NO_LIMIT_ABOVE = 1e8  # seconds (three years): a longer limit, ``inf`` among them, is no limit


def decode_timeout() -> float:
    """The per-file limit in seconds: ``$IMGCLUSTER_DECODE_TIMEOUT`` or :data:`DECODE_TIMEOUT`; 0 for none.

    ``inf`` reached the timer as an OverflowError inside every file's decoding, so each image was
    recorded as undecodable and later runs did not try it again; a value that is not a number
    was ignored without a word. Both are refused or understood now, as the other variables are.
    """
    raw = os.environ.get("IMGCLUSTER_DECODE_TIMEOUT")
    if not raw:
        return DECODE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise ParameterError(f"IMGCLUSTER_DECODE_TIMEOUT must be a number of seconds (0 for no limit), not {raw!r}")
    return value if value < NO_LIMIT_ABOVE else 0.0


def load_rgb(path: Path | IO[bytes], draft_size: int | None = None) -> Image.Image:
    """Open ``path`` as 8-bit RGB with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding downscale at the source (Pillow's draft mode) when the model
    needs far fewer pixels than the file has. Transparency is composited on white, or on black
    when white would hide the picture (:func:`transparency_background`); 16-bit and float images
    are rescaled to 8 bits, CMYK and palette images are converted.
    """
    return load_image(path, draft_size)


def load_image(path: Path | IO[bytes], draft_size: int | None = None, grey: bool = False) -> Image.Image:
    """:func:`load_rgb`'s picture, but with ``grey`` a grey one comes as 8-bit grey (mode ``L``),
    the RGB picture being that grey in all three channels.

    For callers whose next steps work on each channel alike (resizing, cropping): converting after
    them is the same pixels for a third of the work (a 28 px Fashion-MNIST image resized to 256 px:
    0.25 against 0.60 ms).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd files (corrupt EXIF, ...) would litter stderr
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                return to_rgb(ImageOps.exif_transpose(im) or im, grey)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except FileNotFoundError:
        raise ImageDecodeError("file disappeared before it could be read") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, MemoryError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}" if str(exc) else f"cannot decode: {type(exc).__name__}") from None


def to_rgb(im: Image.Image, grey: bool = False) -> Image.Image:
    """8-bit RGB; with ``grey``, a picture that would become grey RGB stays 8-bit grey (``L``)."""
    mode = im.mode
    if mode == "RGB" or (grey and mode == "L"):
        return im.copy()
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*transparency_background(rgba), 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        eight = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
        return eight if grey else eight.convert("RGB")
    return im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


WHITE, BLACK = (255, 255, 255), (0, 0, 0)
HIDDEN_SHARE = 0.5  # white hides the picture when it keeps under half the contrast black shows
_PROBE_PX = 256  # the contrast is compared on a copy this small: the choice needs no detail


def transparency_background(rgba: Image.Image) -> tuple[int, int, int]:
    """White, unless white would hide the picture: then black.

    Some wallpapers draw their whole pattern in the alpha channel over constant white pixels
    (MATE's Silk, Waves, Stripes-Light): on white they come out blank, so the embedding and the
    report thumbnails see one white rectangle and every such image looks like a copy of the
    others. The background is the one under which the picture keeps its contrast: the luminance
    spread on white is compared with that on black, on a small copy.
    """
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:
        return WHITE  # opaque: the background never shows
    probe = rgba.copy()
    probe.thumbnail((_PROBE_PX, _PROBE_PX), Image.Resampling.BOX)
    spread: dict[tuple[int, int, int], float] = {}
    for colour in (WHITE, BLACK):
        flat = Image.alpha_composite(Image.new("RGBA", probe.size, (*colour, 255)), probe).convert("L")
        spread[colour] = float(np.asarray(flat, dtype=np.float32).std())
    return BLACK if spread[WHITE] < HIDDEN_SHARE * spread[BLACK] else WHITE
