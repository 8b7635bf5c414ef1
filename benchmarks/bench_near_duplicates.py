"""`make bench-duplicates`: near-duplicates on real wallpapers, with copies and look-alikes known.

Originals are the wallpapers and artwork of four Debian packages (installed here with apt-get when
missing): MATE's (photos up to 5640x3172, three recoloured variants of one design, and six
patterns drawn only in the alpha channel over constant white or black), GNOME's light/dark pairs,
Sway's and desktop-base's. Files that are byte-identical, or the same wallpaper at other sizes
(``_1920x1080``, ``logo-64``), keep only their largest member, so every original is a different
picture: any two of them called copies is an error.

Each original gets edited copies (a byte copy, a one-third-size resize, a lossy re-save, a WebP
re-encode, an EXIF-rotated re-save, an 80 % centre crop, a 90° rotation). All are embedded with
efficientnet-lite0 and grouped by :func:`imgcluster.duplicates.find_near_duplicates` with the
files, at several candidate thresholds. Reported per threshold: the recall of each edit (in its
original's group; and, for copies a user may delete, with the kind it should get), the number of
*distinct* images labelled ``exact`` or ``resized/re-encoded`` (must be 0), and how many distinct
look-alikes are listed as ``similar``. Also the fingerprint distances of copies and of distinct
pictures, which the limits in :mod:`imgcluster.fingerprint` are chosen from.
Writes the `near-duplicates` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import DATA, MODEL, write_section
from PIL import Image

from imgcluster.config import EmbedConfig
from imgcluster.duplicates import EXACT, RESIZED, SAFE_TO_DELETE, SIMILAR, find_near_duplicates, fingerprints
from imgcluster.fingerprint import (
    CELL_CHANGE,
    MAX_CHANGED_CELLS,
    MAX_COLOUR_DIFFERENCE,
    MAX_HASH_DISTANCE,
    changed_cells,
    colour_difference,
    file_digest,
    hash_distance,
)
from imgcluster.pipeline import embed_folder

PACKAGES = ["mate-backgrounds", "gnome-backgrounds", "sway-backgrounds", "desktop-base"]
ROOTS = [Path("/usr/share/backgrounds"), Path("/usr/share/desktop-base")]
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
THRESHOLDS = [0.80, 0.85, 0.90, 0.93, 0.95, 0.98]
OLD_THRESHOLD = 0.98  # the README's suggestion before pixel confirmation
SIZE_VARIANT = re.compile(r"(_\d+x\d+)|(-\d+(?=\.))|(_Portrait)")
# desktop-base's grub-16x9.png and grub-4x3.png are one design fitted to two screens, both at
# 640x480 (hash distance 2): neither a copy nor a different picture, so never counted as a mistake
DESIGN = re.compile(r"-\d+x\d+(?=\.)")


def ensure_wallpapers() -> None:
    if (ROOTS[0] / "mate").is_dir():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        sys.exit(f"install the Debian packages {' '.join(PACKAGES)} first")
    subprocess.run([apt, "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True, stdout=subprocess.DEVNULL)


def originals() -> list[Path]:
    """One file per distinct picture: the largest of byte-identical files and of a wallpaper's size variants."""
    files = sorted(p for root in ROOTS for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    families: dict[str, list[Path]] = {}
    for path in files:
        families.setdefault(str(path.parent / SIZE_VARIANT.sub("", path.name)), []).append(path)
    keep, digests = [], set()
    for members in families.values():
        largest = max(members, key=lambda p: p.stat().st_size)
        digest = file_digest(largest)
        if digest not in digests:
            digests.add(digest)
            keep.append(largest)
    return keep


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def _lossy(im: Image.Image, quality: int) -> tuple[bytes, str]:
    """JPEG, or WebP with its alpha channel: a JPEG of an alpha-only pattern is a blank page, not a copy."""
    buffer = io.BytesIO()
    if _has_alpha(im):
        im.convert("RGBA").save(buffer, "WEBP", quality=quality)
        return buffer.getvalue(), "webp"
    im.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), "jpg"


def _kept(im: Image.Image, **kwargs: object) -> tuple[bytes, str]:
    """Nearly lossless: JPEG q95, or PNG (fast compression) for pictures with transparency."""
    buffer = io.BytesIO()
    if _has_alpha(im):
        im.convert("RGBA").save(buffer, "PNG", compress_level=1, **kwargs)
        return buffer.getvalue(), "png"
    im.convert("RGB").save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue(), "jpg"


def _third(im: Image.Image) -> tuple[bytes, str]:
    small = im.convert("RGBA" if _has_alpha(im) else "RGB")
    small = small.resize((max(16, im.width // 3), max(16, im.height // 3)), Image.Resampling.LANCZOS)
    return _lossy(small, 90)


def _webp(im: Image.Image) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    im.convert("RGBA" if _has_alpha(im) else "RGB").save(buffer, "WEBP", quality=80)
    return buffer.getvalue(), "webp"


def _exif_rotated(im: Image.Image) -> tuple[bytes, str]:
    """Pixels stored turned 90° clockwise with orientation 8 telling viewers to turn them back: looks the same."""
    exif = Image.Exif()
    exif[0x0112] = 8
    return _kept(im.transpose(Image.Transpose.ROTATE_270), exif=exif)


def _crop(im: Image.Image) -> tuple[bytes, str]:
    w, h = im.size
    return _kept(im.crop((w // 10, h // 10, w - w // 10, h - h // 10)))


def _rotated(im: Image.Image) -> tuple[bytes, str]:
    return _kept(im.transpose(Image.Transpose.ROTATE_90))


# edit name -> (make the copy, the kind a correct answer gives it)
EDITS: dict[str, tuple[Callable[[Image.Image], tuple[bytes, str]] | None, str]] = {
    "byte copy": (None, EXACT),
    "one-third size, JPEG q90": (_third, RESIZED),
    "lossy re-save, q75": (lambda im: _lossy(im, 75), RESIZED),
    "WebP re-encode, q80": (_webp, RESIZED),
    "EXIF-rotated re-save": (_exif_rotated, RESIZED),
    "80 % centre crop": (_crop, SIMILAR),
    "rotated 90°": (_rotated, SIMILAR),
}


def build(folder: Path, sources: list[Path]) -> Path:
    """Originals and their copies, written once (``.complete`` marks a finished folder)."""
    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate(sources):
        shutil.copyfile(source, folder / f"{i:03d}-original{source.suffix.lower()}")
        with Image.open(source) as im:
            im.load()
            for j, (edit, _) in enumerate(EDITS.values()):
                if edit is None:
                    shutil.copyfile(source, folder / f"{i:03d}-edit{j}{source.suffix.lower()}")
                    continue
                data, ext = edit(im)
                (folder / f"{i:03d}-edit{j}.{ext}").write_bytes(data)
    (folder / ".complete").write_text("ok\n")
    return folder


def main() -> None:
    started = time.perf_counter()
    ensure_wallpapers()
    sources = originals()
    folder = build(DATA / "near-duplicates", sources)
    embedded = embed_folder(EmbedConfig(str(folder), model=MODEL), torch.device("cpu"))  # cached: reruns embed nothing
    z, names = embedded.features, embedded.paths
    paths = [folder / rel for rel in names]
    origin = np.array([int(rel[:3]) for rel in names])
    designs = [DESIGN.sub("", str(p)) for p in sources]
    design = np.array([designs.index(designs[o]) for o in origin])  # origin -> its design's first original
    edit_of = np.array([-1 if "original" in rel else int(rel.split("-edit")[1].split(".")[0]) for rel in names])
    prints = fingerprints(paths, list(range(len(names))))
    runs = {t: find_near_duplicates(z, t, files=paths, prints=prints) for t in THRESHOLDS}
    old = find_near_duplicates(z, OLD_THRESHOLD)  # features alone, as before
    lines = [
        "## Near-duplicates on real wallpapers (`make bench-duplicates`)",
        "",
        f"{len(sources)} distinct originals from the Debian packages {', '.join(PACKAGES)} (largest "
        f"{max(Image.open(p).width for p in sources)} px wide; 6 MATE patterns live only in the alpha channel), each with "
        f"{len(EDITS)} edited copies: {len(names)} images, efficientnet-lite0 features, pixel confirmation by "
        "`imgcluster.fingerprint`.",
        "",
        "Per edit: share of copies in their original's group (found) / found *and* labelled right: `exact` or "
        "`resized/re-encoded` (safe to delete) for true copies, `similar` for crops and rotations. "
        "*Distinct called copies*: members labelled `exact` or `resized/re-encoded` against a reference of "
        "another original (must be 0). *Distinct listed similar*: such members labelled `similar`.",
        "",
        "| candidate threshold | " + " | ".join(EDITS) + " | distinct called copies | distinct listed similar | groups |",
        "|---" * (len(EDITS) + 4) + "|",
    ]
    original_row = {int(origin[i]): i for i in np.flatnonzero(edit_of == -1)}
    mistakes: dict[float, list[str]] = {}
    for t, groups in runs.items():
        cells, listed = [], 0
        mistakes[t] = []
        place: dict[int, tuple[int, str]] = {}  # row -> (group, kind against the group's reference)
        for n, g in enumerate(groups):
            ref = g.members[0]
            for i, kind in zip(g.members, g.kinds):
                place[i] = (n, kind)
                if i != ref and design[i] != design[ref]:
                    listed += kind == SIMILAR
                    if kind in SAFE_TO_DELETE:
                        mistakes[t].append(f"{names[i]} called {kind} of {names[ref]}")
        for j, (_, expected) in enumerate(EDITS.values()):
            copies = np.flatnonzero(edit_of == j)
            found = right = 0
            for i in copies:
                o = original_row[int(origin[i])]
                if i in place and o in place and place[i][0] == place[o][0]:
                    found += 1
                    kind = place[i][1] or place[o][1]  # the copy's kind, or the original's when the copy leads
                    right += (kind in SAFE_TO_DELETE) if expected != SIMILAR else (kind == SIMILAR)
            cells.append(f"{found / len(copies):.0%} / {right / len(copies):.0%}")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + f" | {len(mistakes[t])} | {listed} | {len(groups)} |")
    old_mixed = sum(len(set(design[g.members].tolist())) > 1 for g in old)
    lines += [
        "",
        f"Features alone at the old suggestion {OLD_THRESHOLD} (no pixel check; every member a would-be "
        f"duplicate): {len(old)} groups, {old_mixed} of them mixing different originals.",
    ]
    for t, found in mistakes.items():
        if found:
            lines.append(f"At {t:.2f}, distinct images called copies: " + "; ".join(found[:10]) + ".")
    lines += fingerprint_table(prints, origin, edit_of, names, design)
    lines += ["", f"Took {time.perf_counter() - started:.0f} s."]
    body = "\n".join(lines)
    print(body)
    write_section("near-duplicates", body)


def fingerprint_table(prints: dict, origin: np.ndarray, edit_of: np.ndarray, names: list[str], design: np.ndarray) -> list[str]:
    """Hash distance and colour difference: copies against their original, and the closest distinct pictures."""
    rows = ["", "Fingerprints (hash distance of 63 bits; colour: mean absolute difference of 16x16 thumbnails, of 255):", ""]
    rows += ["| pair | hash max | colour max | changed cells max |", "|---|---|---|---|"]
    original_row = {int(origin[i]): i for i in np.flatnonzero(edit_of == -1)}
    for j, (name, (_, expected)) in enumerate(EDITS.items()):
        pairs = [(prints[original_row[int(origin[i])]], prints[i]) for i in np.flatnonzero(edit_of == j)]
        hashes = [hash_distance(a, b) for a, b in pairs]
        colours = [colour_difference(a, b) for a, b in pairs]
        cells = [changed_cells(a, b) for a, b in pairs]
        rows.append(f"| copy: {name} (should be {expected}) | {max(hashes)} | {max(colours):.1f} | {max(cells)} |")
    originals_rows = sorted(original_row.values())
    close = []
    for a in originals_rows:
        for b in originals_rows:
            if a < b and design[a] != design[b] and abs(prints[a].aspect / prints[b].aspect - 1) <= 0.02:
                pa, pb = prints[a], prints[b]
                close.append((hash_distance(pa, pb), colour_difference(pa, pb), names[a], names[b], changed_cells(pa, pb)))
    both = sum(h <= MAX_HASH_DISTANCE and c <= MAX_COLOUR_DIFFERENCE for h, c, *_ in close)
    nearest = sorted(close, key=lambda x: x[1])[:5]
    rows += [
        "",
        f"Distinct originals of the same shape: {len(close)} pairs; smallest hash distance {min(c[0] for c in close)}, "
        f"smallest colour difference {min(c[1] for c in close):.1f}; {sum(c[0] <= MAX_HASH_DISTANCE for c in close)} pairs "
        f"within the hash limit {MAX_HASH_DISTANCE}, {both} within both it and the colour limit {MAX_COLOUR_DIFFERENCE:g}. "
        f"Of those, {sum(h <= MAX_HASH_DISTANCE and c <= MAX_COLOUR_DIFFERENCE and n <= MAX_CHANGED_CELLS for h, c, _, _, n in close)} "
        f"also have at most {MAX_CHANGED_CELLS} changed cells (more than {CELL_CHANGE:g} of 255 in a 16x16 thumbnail). "
        "Closest in colour: " + "; ".join(f"{a} / {b}: hash {h}, colour {c:.1f}, {n} changed cells" for h, c, a, b, n in nearest) + ".",
    ]
    return rows


if __name__ == "__main__":
    main()
