"""Files that change while a run works on them: deleted, replaced or grown between the scan and
decoding, or while being read. Each is embedded as it now is (with its new size and mtime in the
cache) or skipped with a reason; the run never crashes and the next run sees the truth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import record
from imagefolders import CLASSES, sample_image

import imgcluster.embedding
from imgcluster.config import EmbedConfig
from imgcluster.pipeline import EmbedHooks, embed_folder

CPU = torch.device("cpu")


def run(folder: Path, cache: Path, warnings: list[str] | None = None):
    config = EmbedConfig(str(folder), model="efficientnet-lite0", cache_dir=str(cache), workers=0, batch_size=4)
    return embed_folder(config, CPU, EmbedHooks(on_warning=(warnings if warnings is not None else []).append))


def test_files_changing_between_scan_and_decode(
    small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    rels = sorted(p.relative_to(small_folder).as_posix() for p in small_folder.rglob("*.png"))
    deleted_before, replaced, grown_during, deleted_during, touched = rels[1], rels[5], rels[9], rels[13], rels[17]
    replacement = sample_image(CLASSES[4], 3).resize((40, 40))
    real_load = imgcluster.embedding.load_image
    real_getitem = imgcluster.embedding.ImageDataset.__getitem__
    calls: list[str] = []

    def change_after_scan(self: imgcluster.embedding.ImageDataset, i: int):  # after the scan, before decoding starts
        path = self.files[i].path
        rel = self.files[i].rel
        calls.append(rel)
        st = path.stat()
        if rel == deleted_before:
            path.unlink()
        elif rel == replaced:  # another picture under the same name, a second later
            replacement.save(path)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        elif rel == touched:  # same bytes, new mtime (a sync tool, `touch`)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        return real_getitem(self, i)

    def change_while_reading(path: Path, draft_size: int | None = None, grey: bool = False):  # between opening and the stat after
        image = real_load(path, draft_size, grey)
        rel = Path(path).relative_to(small_folder).as_posix()
        if rel == grown_during:
            with open(path, "ab") as handle:
                handle.write(b"\0" * 100)
        elif rel == deleted_during:
            Path(path).unlink()
        return image

    monkeypatch.setattr(imgcluster.embedding.ImageDataset, "__getitem__", change_after_scan)
    monkeypatch.setattr(imgcluster.embedding, "load_image", change_while_reading)
    warnings: list[str] = []
    cache = tmp_path / "cache"
    result = run(small_folder, cache, warnings)
    skipped = dict(result.skipped)
    assert skipped == {
        deleted_before: "file disappeared before it could be read",
        grown_during: "changed while it was read; run again to embed it",
        deleted_during: "file disappeared while it was read",
    }
    assert replaced in result.paths and touched in result.paths and len(result.paths) == 21
    assert warnings == ["2 file(s) changed between the scan and decoding; they were embedded as they are now"]
    assert len(calls) == 24

    # The cache holds the replaced file under its *new* stat, with the new picture's features.
    monkeypatch.undo()
    again = run(small_folder, cache)
    assert again.embedded == 1 and again.reused == 21 and again.skipped == []  # only the grown file, now still
    assert set(again.paths) == set(rels) - {deleted_before, deleted_during}
    fresh_folder = tmp_path / "fresh"
    fresh_folder.mkdir()
    (fresh_folder / "x.png").write_bytes((small_folder / replaced).read_bytes())
    fresh = run(fresh_folder, tmp_path / "fresh-cache")
    row = again.paths.index(replaced)
    assert np.array_equal(again.features[row], fresh.features[0])
    record(
        request.config,
        "files_changing",
        {"deleted_before_read": 1, "replaced": 1, "touched": 1, "grown_while_read": 1, "deleted_while_read": 1, "crashes": 0},
    )
