"""`make bench-duplicates`: how similar an edited copy stays, to choose `--near-duplicates`.

Takes every 5th sample_data image (25 Fashion-MNIST images, 28 px), writes edited copies (JPEG
re-saves at quality 90 and 75, a 2x resize, a mirror), embeds them with efficientnet-lite0 and
prints the cosine similarity of each copy to its original, next to the similarity of each
original to the closest *other* image: a threshold between the two separates copies from
look-alikes. Writes the table to the `near-duplicates` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import write_section
from PIL import Image, ImageOps

from imgcluster.backbones import create_backbone
from imgcluster.embedding import embed_files
from imgcluster.listing import list_images

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def resave(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    return resave


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "JPEG re-save, quality 90": jpeg(90),
    "JPEG re-save, quality 75": jpeg(75),
    "resized 2x (bicubic)": lambda im: im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC),
    "mirrored": ImageOps.mirror,
}


def main() -> None:
    started = time.perf_counter()
    originals = sorted(SAMPLE.rglob("*.png"))[::5]
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, path in enumerate(originals):
            with Image.open(path) as im:
                im.load()
                im.convert("RGB").save(folder / f"{i:03d}-original.png")
                for j, edit in enumerate(EDITS.values()):
                    edit(im).convert("RGB").save(folder / f"{i:03d}-edit{j}.png")
        files = list_images(folder)
        backbone = create_backbone("efficientnet-lite0", device=cpu)
        z = np.zeros((len(files), backbone.feature_dim), np.float32)
        for batch in embed_files(files, backbone, cpu, workers=0):
            z[batch.indices] = batch.features
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    row = {f.rel: k for k, f in enumerate(files)}
    sims = z @ z.T
    n = len(originals)
    lines = [
        "## Near-duplicate similarity (`make bench-duplicates`)",
        "",
        f"efficientnet-lite0 features of {n} sample_data images (28 px Fashion-MNIST) and edited copies: cosine "
        "similarity of each copy to its original, and of each original to the closest other image "
        "(another original or another image's copy).",
        "",
        "| pair | min | median | max |",
        "|---|---|---|---|",
    ]
    for j, name in enumerate(EDITS):
        values = [sims[row[f"{i:03d}-original.png"], row[f"{i:03d}-edit{j}.png"]] for i in range(n)]
        lines.append(f"| copy {name} | {min(values):.3f} | {np.median(values):.3f} | {max(values):.3f} |")
    closest = []
    for i in range(n):
        others = [k for rel, k in row.items() if not rel.startswith(f"{i:03d}-")]
        closest.append(sims[row[f"{i:03d}-original.png"], others].max())
    lines.append(f"| closest different image | {min(closest):.3f} | {np.median(closest):.3f} | {max(closest):.3f} |")
    lines += ["", f"Took {time.perf_counter() - started:.0f} s."]
    body = "\n".join(lines)
    print(body)
    write_section("near-duplicates", body)


if __name__ == "__main__":
    main()
