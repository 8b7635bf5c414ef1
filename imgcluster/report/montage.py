"""PNG contact sheets of each cluster's most typical images, beside the report."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from imgcluster.atomic import atomic_open, atomic_write_text
from imgcluster.csvfile import Row
from imgcluster.listing import OUTPUT_MARKER
from imgcluster.report.layout import ClusterView
from imgcluster.report.thumbnails import THUMB_PX, Thumb

MONTAGE_COLUMNS = 8
_SHORT = {"missing": "missing", "unreadable": "unreadable", "refused": "outside"}  # placeholder text, by Thumb.problem


def write_montages(
    directory: Path, rows: list[Row], views: list[ClusterView], folder: Path, thumbs: dict[Path, Thumb], px: int = THUMB_PX
) -> list[Path]:
    """One PNG contact sheet of each cluster's most typical images; sheets of vanished clusters go."""
    font = ImageFont.load_default()
    pad, header = 6, 26
    written = []
    for v in views:
        columns = min(MONTAGE_COLUMNS, max(1, len(v.typical)))
        lines = max(1, math.ceil(len(v.typical) / columns))
        sheet = Image.new("RGB", (pad + columns * (px + pad), header + lines * (px + pad) + pad - 2), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((pad, 7), f"cluster {v.cluster}: {v.size} images, {len(v.typical)} most typical", fill=(40, 40, 40), font=font)
        for n, i in enumerate(v.typical):
            x, y = pad + (n % columns) * (px + pad), header + (n // columns) * (px + pad)
            thumb = thumbs.get(folder / rows[i].path)
            if thumb is None or thumb.data is None:
                draw.rectangle((x, y, x + px - 1, y + px - 1), fill=(235, 235, 235), outline=(200, 200, 200))
                problem = "missing" if thumb is None else thumb.problem
                draw.text((x + 8, y + px // 2 - 6), _SHORT.get(problem, "unreadable"), fill=(120, 120, 120), font=font)
                continue
            with Image.open(io.BytesIO(thumb.data)) as opened:
                rgb = opened.convert("RGB")
            scale = px / max(rgb.size)
            tile = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BICUBIC)
            sheet.paste(tile, (x + (px - tile.width) // 2, y + (px - tile.height) // 2))
        path = directory / f"cluster-{v.cluster}.png"
        with atomic_open(path, "wb") as handle:
            sheet.save(handle, "PNG", optimize=True)
        written.append(path)
    if written:  # a later scan of a folder that holds this one skips it: these are not photos
        atomic_write_text(directory / OUTPUT_MARKER, "montages written by imgcluster report; folders holding this file are not scanned\n")
    keep = {p.name for p in written}
    for old in directory.glob("cluster-*.png"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return written
