"""Near-duplicate groups: exact and near copies are grouped, distinct images are not."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagefolders import alpha_pattern, picture
from PIL import Image

from imgcluster.duplicates import EXACT, RESIZED, SIMILAR, duplicates_path, find_near_duplicates, group_pairs, write_duplicates
from imgcluster.errors import ParameterError


def _distinct(rng: np.random.Generator, n: int = 200, dim: int = 64) -> np.ndarray:
    return rng.normal(size=(n, dim)).astype(np.float32)  # random directions: pairwise cosine ~ N(0, 1/64)


def test_exact_and_near_copies_grouped_distinct_not() -> None:
    rng = np.random.default_rng(0)
    x = _distinct(rng)
    x[10] = x[3]  # exact copy
    x[50] = x[3] * 2.0  # same direction, other scale: cosine 1
    x[120] = x[7] + 0.05 * rng.normal(size=x.shape[1]).astype(np.float32) * np.linalg.norm(x[7]) / 8  # near copy
    x = x.astype(np.float16).astype(np.float32)  # as the cache stores them
    groups = find_near_duplicates(x, threshold=0.98)
    assert [g.members for g in groups] == [[3, 10, 50], [7, 120]]
    assert groups[0].similarity[0] == pytest.approx(1.0, abs=1e-5)
    assert min(groups[0].similarity) > 0.999
    assert 0.98 <= groups[1].similarity[1] < 1.0
    assert find_near_duplicates(x, threshold=1.0)[0].members == [3, 10, 50]  # float16 rounding tolerated


def test_transitive_links_form_one_group() -> None:
    assert group_pairs(6, np.array([[0, 1], [2, 1], [5, 4]])) == [[0, 1, 2], [4, 5]]
    assert group_pairs(3, np.zeros((0, 2), np.int64)) == []


def test_large_group_of_copies_stays_one_group() -> None:
    """More copies than neighbours searched: union-find still joins them all."""
    rng = np.random.default_rng(1)
    x = _distinct(rng, 100)
    x[20:45] = x[20]
    groups = find_near_duplicates(x, threshold=0.99, k=5)
    assert [g.members for g in groups] == [list(range(20, 45))]


def test_no_duplicates_and_bad_threshold() -> None:
    x = _distinct(np.random.default_rng(2))
    assert find_near_duplicates(x, 0.9) == []
    assert find_near_duplicates(x[:1], 0.9) == []
    with pytest.raises(ParameterError, match="threshold is a cosine similarity"):
        find_near_duplicates(x, 1.5)


def test_write_duplicates_csv(tmp_path: Path) -> None:
    x = _distinct(np.random.default_rng(3), 20)
    x[5] = x[2]
    groups = find_near_duplicates(x, 0.98)
    out = duplicates_path(tmp_path / "photos-clusters.csv")
    assert out.name == "photos-clusters-duplicates.csv"
    write_duplicates(out, [f'img {i}, "q".png' for i in range(20)], groups)
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["group"], r["path"], r["kind"]) for r in rows] == [("0", 'img 2, "q".png', ""), ("0", 'img 5, "q".png', SIMILAR)]
    assert float(rows[1]["similarity"]) == pytest.approx(1.0, abs=1e-5)


def _same_features(n: int, groups: list[list[int]]) -> np.ndarray:
    """Features under which every listed group looks like one image: the model is fooled, the pixels must not be."""
    x = _distinct(np.random.default_rng(4), n)
    for members in groups:
        x[members] = x[members[0]]
    return x


def test_pixels_label_each_member(tmp_path: Path) -> None:
    big = picture(0, (900, 600))
    names = ["a-small.jpg", "b-big.jpg", "c-copy.jpg", "d-other.jpg", "e-crop.png", "f.jpg"]
    files = [tmp_path / name for name in names]
    big.resize((300, 200), Image.Resampling.LANCZOS).save(files[0], quality=85)
    big.save(files[1], quality=90)
    shutil.copyfile(files[1], files[2])
    picture(1, (900, 600)).save(files[3], quality=90)
    big.crop((0, 0, 600, 600)).save(files[4])  # lossless: the largest file of all
    picture(2).save(files[5])
    assert max(files, key=lambda f: f.stat().st_size) == files[4]
    groups = find_near_duplicates(_same_features(6, [[0, 1, 2, 3, 4]]), 0.98, files=files)
    assert len(groups) == 1
    # the picture with the most copies leads, its largest file first (b before its byte copy c: scan order breaks the tie)
    assert groups[0].members == [1, 0, 2, 3, 4]
    assert groups[0].kinds == ["", RESIZED, EXACT, SIMILAR, SIMILAR]
    assert groups[0].similarity == pytest.approx([1.0] * 5, abs=1e-5)


def test_look_alikes_in_one_candidate_group_split_into_their_own_copies(tmp_path: Path) -> None:
    """Two different pictures the model confuses, each with a copy: two groups, nobody a copy of the other."""
    files = [tmp_path / name for name in ["a.png", "a-small.jpg", "b.png", "b-small.jpg", "c.png"]]
    for seed, (big, small) in enumerate([(files[0], files[1]), (files[2], files[3])]):
        picture(seed, (600, 400)).save(big)
        picture(seed, (600, 400)).resize((300, 200)).save(small, quality=90)
    picture(9, (600, 400)).save(files[4])
    x = _same_features(5, [[0, 1, 2, 3, 4]])
    x[4] = 0.8 * x[0] + 0.2 * x[4]  # still a candidate, closer to a than to b
    groups = find_near_duplicates(x, 0.9, files=files)
    assert [(g.members, g.kinds) for g in sorted(groups, key=lambda g: g.members[0])] == [
        ([0, 1, 4], ["", RESIZED, SIMILAR]),
        ([2, 3], ["", RESIZED]),
    ]


def test_alpha_only_patterns_are_not_called_copies(tmp_path: Path) -> None:
    """Six MATE wallpapers once came out as one group of 'duplicates' at similarity 1.0."""
    files = [tmp_path / f"pattern{i}.png" for i in range(4)]
    for seed, path in enumerate(files):
        alpha_pattern(seed).save(path)
    groups = find_near_duplicates(_same_features(4, [[0, 1, 2, 3]]), 0.98, files=files)
    assert len(groups) == 1 and groups[0].kinds[1:] == [SIMILAR] * 3


def test_unreadable_member_stays_similar(tmp_path: Path) -> None:
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    picture(0).save(files[0])
    files[1].write_bytes(b"not an image any more")
    groups = find_near_duplicates(_same_features(2, [[0, 1]]), 0.98, files=files)
    assert groups[0].kinds == ["", SIMILAR]
