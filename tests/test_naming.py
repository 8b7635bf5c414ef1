"""Cluster names from the bundled EfficientNet-Lite0's ImageNet classifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagefolders import CLASSES, SAMPLE
from PIL import Image, ImageOps
from typer.testing import CliRunner

import imgcluster
from imgcluster.backbones import _bundled_weights_path
from imgcluster.cli import app
from imgcluster.naming import LEAN, _lemmas, cluster_names, name_clusters, name_of
from imgcluster.negatives import CACHE_NAME, sample_rows, view_features

MODEL = {"model": "efficientnet-lite0", "workers": 0}
FAST = ["--model", "efficientnet-lite0", "--clusters", "3", "--workers", "0"]


def photo_folder(root: Path) -> Path:
    """Two classes of real photos ImageNet knows (scikit-learn's bundled sample images), four crops and their mirrors each."""
    from sklearn.datasets import load_sample_images

    for name, pixels in zip(("temple", "flower"), load_sample_images().images):  # china.jpg, flower.jpg
        image = Image.fromarray(pixels)
        (root / name).mkdir(parents=True)
        w, h = image.size
        for i, (fx, fy) in enumerate([(0, 0), (0.15, 0.1), (0.1, 0.2), (0.2, 0.05)]):
            crop = image.crop((int(fx * w), int(fy * h), int(fx * w + 0.8 * w), int(fy * h + 0.8 * h)))
            crop.save(root / name / f"{i}.jpg")
            ImageOps.mirror(crop).save(root / name / f"{i}-mirror.jpg")
    return root


def test_names_agree_with_the_labels_of_photos(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")
    embeddings = imgcluster.embed(folder, cache_dir=tmp_path / "cache", **MODEL)
    labels = np.array([0 if p.startswith("temple/") else 1 for p in embeddings.paths])
    assert cluster_names(embeddings.features, labels) == {0: "palace", 1: "daisy"}


def test_the_runner_up_joins_only_when_close() -> None:
    lemmas = _lemmas()
    sandal, shoe = lemmas.index("sandal"), lemmas.index("running shoe")
    p = np.zeros(1000)
    p[sandal], p[shoe] = 0.4, 0.25
    assert name_of(p) == "sandal, running shoe"
    p[shoe] = 0.19  # under half of the top class
    assert name_of(p) == "sandal"
    assert len(lemmas) == 1000 and lemmas[770] == "running shoe"  # first lemma of "running shoe"


def product_folder(root: Path, per_class: int = 8) -> Path:
    """sample_data's drawings inverted, dark on white as product photos are: named from the cached features."""
    for name in CLASSES[:3]:
        (root / name).mkdir(parents=True)
        for src in sorted((SAMPLE / name).glob("*.png"))[:per_class]:
            ImageOps.invert(Image.open(src).convert("L")).save(root / name / src.name)
    return root


def test_cluster_folder_names_each_cluster(shared_cache: Path, tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")  # photos ImageNet knows: every name is shown
    result = imgcluster.cluster_folder(folder, n_clusters=2, cache_dir=shared_cache, out=tmp_path / "out.csv", **MODEL)
    names = result.columns["cluster_name"]
    expected = cluster_names(result.embeddings.features, result.cluster)
    assert [expected[int(k)] for k in result.cluster] == list(names) and all(names)
    read = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(read.columns) == ["path", "cluster", "confidence", "cluster_name", "outlier", "outlier_reason"]
    assert read["cluster_name"].tolist() == list(names)
    sidecar = json.loads((tmp_path / "out.csv.json").read_text())
    assert result.cluster_names == expected
    assert sidecar["result"]["cluster_names"] == {str(k): v for k, v in expected.items()}
    assert sidecar["result"]["withheld_names"] == {} and result.withheld_names == {}  # every name shown: no guess withheld
    assert sidecar["assign"]["names"] is True
    plain = imgcluster.cluster_folder(folder, n_clusters=2, cache_dir=shared_cache, names=False, **MODEL)
    assert "cluster_name" not in plain.columns and plain.cluster_names == {}


def test_drawings_dark_on_white_are_named_from_the_features_and_withheld_when_unlike(shared_cache: Path, tmp_path: Path) -> None:
    """sample_data inverted, as product photos show such things: the features name the clusters (``Loafer``, ``mailbag``,
    ``oboe``), but 28 px silhouettes look little like any ImageNet photo (likeness 0.14-0.15): every name is withheld,
    the right ones with the wrong, and the CSV's cells are empty (``make bench-names`` measured inverted drawings only)."""
    folder = product_folder(tmp_path / "products")
    events: list[str] = []
    result = imgcluster.cluster_folder(folder, n_clusters=3, cache_dir=shared_cache, progress=lambda e: events.append(str(e)), **MODEL)
    assert not any("drawn light on black" in e for e in events)
    assert result.cluster_names == cluster_names(result.embeddings.features, result.cluster) == {0: "", 1: "", 2: ""}
    assert any("3 clusters of 3 left unnamed" in e for e in events)


def test_cli_no_names(small_folder: Path, shared_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.csv"
    args = ["assign", small_folder, "--no-names", "--out", out, "--cache-dir", shared_cache, *FAST]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    assert out.read_text().splitlines()[0] == '"path","cluster","confidence","outlier","outlier_reason"'
    sidecar = json.loads((tmp_path / "plain.csv.json").read_text())
    assert "cluster_names" not in sidecar["result"] and sidecar["assign"]["names"] is False  # the sidecar says it was asked for


def test_another_backbone_is_named_by_one_extra_lite0_pass(tmp_path: Path) -> None:
    """Lite0 loaded from a weights file may carry another classifier: its features are not used for names."""
    small_folder = product_folder(tmp_path / "products")
    weights = tmp_path / "lite0.pth"
    shutil.copy(_bundled_weights_path(), weights)
    events: list[str] = []
    cache = tmp_path / "cache"
    result = imgcluster.cluster_folder(
        small_folder, n_clusters=3, cache_dir=cache, weights=weights, progress=lambda e: events.append(str(e)), **MODEL
    )
    assert any("one extra pass with efficientnet-lite0" in e for e in events)
    bundled = imgcluster.embed(small_folder, cache_dir=cache, **MODEL)
    assert bundled.embedded == 0  # the extra pass cached the bundled model's features
    expected = cluster_names(bundled.features[[bundled.paths.index(p) for p in result.paths]], result.cluster)
    assert list(result.columns["cluster_name"]) == [expected[int(k)] for k in result.cluster]


@pytest.mark.parametrize("column", [True, False])
def test_csv_name_column_is_read_back(tmp_path: Path, column: bool) -> None:
    from imgcluster.csvfile import read_assignments

    path = tmp_path / "a.csv"
    path.write_text('"path","cluster","cluster_name"\n"a.png",0,"\'=sandal"\n' if column else '"path","cluster"\n"a.png",0\n')
    assert read_assignments(path)[0].name == ("=sandal" if column else "")


def test_class_names_are_timms_without_importing_timm() -> None:
    import subprocess
    import sys

    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert _lemmas() == [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]
    code = "import sys; from imgcluster.naming import _lemmas; _lemmas(); print('timm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_folder_drawn_light_on_black_is_named_from_its_images_inverted(small_folder: Path, shared_cache: Path) -> None:
    events: list[str] = []
    heard = events.append
    result = imgcluster.cluster_folder(small_folder, n_clusters=3, cache_dir=shared_cache, progress=lambda e: heard(str(e)), **MODEL)
    assert any("drawn light on black: the clusters are named from 24 images shown inverted" in e for e in events)
    rows = sample_rows(result.cluster)
    files = [result.embeddings.folder / result.paths[i] for i in rows]
    expected = name_clusters(view_features(files, None), result.cluster[rows])
    assert result.cluster_names == expected.names
    assert expected.guesses != name_clusters(result.embeddings.features, result.cluster).guesses  # not the plain view's
    assert (result.embeddings.cache_dir / CACHE_NAME).is_file()  # a rerun builds no model for the names


def test_names_agree_with_the_labels_on_sample_data(shared_cache: Path, tmp_path: Path) -> None:
    """The issue's check, on the classes of sample_data that ImageNet knows (``make bench-names``).

    Shown inverted, as product photos are, the T-shirts are ``jersey`` and the ankle boots footwear
    (``Loafer``). The classifier calls the sandals ``oboe`` and the trousers ``can opener`` (ImageNet has
    no trouser) as confidently by its softmax, but their images look far less like those classes
    (likeness 0.15 and 0.14 against 0.17 and 0.19): their names are withheld, as is the bags' weak
    ``mailbag`` (0.12), and the run says what the classifier would have called them, as does the sidecar.
    """
    from imgcluster.families import imagenet_families
    from imgcluster.naming import LIKENESS

    events: list[str] = []
    out = tmp_path / "c.csv"
    result = imgcluster.cluster_folder(
        SAMPLE, n_clusters=5, cache_dir=shared_cache, out=out, progress=lambda e: events.append(str(e)), **MODEL
    )
    labels = np.array([p.split("/", 1)[0] for p in result.paths])
    named = {}
    for k, name in result.cluster_names.items():
        members, counts = np.unique(labels[result.cluster == k], return_counts=True)
        named[str(members[counts.argmax()])] = name
    assert sorted(named) == CLASSES  # one cluster per class
    assert named["t-shirt"] == "jersey"  # shown its 16 most typical members; 32 spread over it added "abaya"
    first = named["ankle-boot"].split(": ")[-1].split(", ")[0]
    families = imagenet_families()
    assert families.names[int(families.group[_lemmas().index(first)])] == "footwear"
    assert named["sandal"] == named["trouser"] == named["bag"] == ""  # withheld: unlike the classes the softmax picks
    unnamed = [e for e in events if "left unnamed" in e]
    assert len(unnamed) == 1 and "3 clusters of 5 left unnamed" in unnamed[0] and f"likeness under {LIKENESS}" in unnamed[0]
    assert "(can opener" in unnamed[0] and "(oboe" in unnamed[0]  # what the classifier would have called them
    frame = result.to_frame()  # the CSV's rows: an empty cell on each row of the unnamed clusters
    unnamed_ids = {k for k, name in result.cluster_names.items() if not name}
    assert len(unnamed_ids) == 3 and set(frame.loc[frame["cluster_name"] == "", "cluster"]) == unnamed_ids
    withheld = json.loads((tmp_path / "c.csv.json").read_text())["result"]["withheld_names"]  # the guesses, kept for a user to see
    assert set(withheld) == {str(k) for k in unnamed_ids} and {int(k): g for k, g in withheld.items()} == result.withheld_names
    assert all(f"{k} ({guess})" in unnamed[0] for k, guess in withheld.items())
    assert {guess.split(",")[0] for guess in withheld.values()} >= {"can opener", "oboe"}


def test_a_name_is_withheld_when_the_images_look_little_like_its_class() -> None:
    """Two clusters the softmax reads alike: one's features point at the class, the other's mostly elsewhere."""
    from imgcluster.naming import LIKENESS, _classifier, likeness

    weight, _ = _classifier()
    jersey = _lemmas().index("jersey")
    toward = weight[jersey] / np.linalg.norm(weight[jersey])
    _, _, rows = np.linalg.svd(weight, full_matrices=True)
    away = rows[-1]  # a direction no class's logit sees: the probabilities stay the same
    assert np.abs(weight @ away).max() < 1e-4
    features = np.stack([20 * toward] * 2 + [20 * toward + 300 * away] * 2).astype(np.float32)
    naming = name_clusters(features, np.array([0, 0, 1, 1]))
    assert naming.guesses == {0: "jersey", 1: "jersey"}  # the same softmax
    assert likeness(features[:1], jersey) > 0.99 and likeness(features[2:], jersey) < LIKENESS / 2
    assert naming.names == {0: "jersey", 1: ""} and naming.withheld == {1: "jersey"}
    assert cluster_names(features, np.array([0, 0, 1, 1])) == naming.names
    unseen = name_clusters(np.vstack([features, np.zeros((1, features.shape[1]), np.float32)]), np.array([0, 0, 1, 1, 2]))
    assert unseen.names == {0: "jersey", 1: "", 2: ""} and unseen.withheld == {1: "jersey"}  # a cluster of unread images: no guess


def test_a_family_led_name_makes_a_plain_export_folder() -> None:
    from imgcluster.exporting import folder_name

    assert folder_name(3, "footwear: sandal, clog", 2) == "03-footwear-sandal-clog"


def test_a_family_the_whole_folder_has_yields_to_the_one_this_cluster_has_most() -> None:
    """Every drawn shoe looks a little like a hatchet: the boots' cluster is named by the family it has beyond that."""
    lemmas = _lemmas()
    boots, folder = np.zeros(1000), np.zeros(1000)
    boots[lemmas.index("hatchet")], boots[lemmas.index("cowboy boot")], boots[lemmas.index("clog")] = 0.2, 0.09, 0.08
    folder[lemmas.index("hatchet")], folder[lemmas.index("cowboy boot")], folder[lemmas.index("clog")] = 0.2, 0.05, 0.04
    assert name_of(boots) == "hatchet"  # by mass: 0.2 against footwear's 0.17
    assert name_of(boots, folder_mean=folder) == "cowboy boot, hatchet"  # 0.17 * (0.17 / 0.09) ** LEAN = 0.23 against 0.2
    assert name_of(boots, folder_mean=boots) == "hatchet"  # the whole folder: by mass alone
    assert LEAN == 0.5


def test_a_lite0_folder_drawn_light_on_black_builds_lite0_once(small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The naming pass shows the classifier inverted drawings with the model the embedding built and folded."""
    import timm

    from imgcluster import embedding

    built: list[str] = []
    folded: list[str] = []
    real_create, real_prepare = timm.create_model, embedding.prepare_model
    monkeypatch.setattr(timm, "create_model", lambda name, *a, **k: built.append(name) or real_create(name, *a, **k))
    monkeypatch.setattr(embedding, "prepare_model", lambda backbone, device: folded.append(backbone.name) or real_prepare(backbone, device))
    events: list[str] = []
    result = imgcluster.cluster_folder(
        small_folder, n_clusters=3, cache_dir=tmp_path / "cache", progress=lambda e: events.append(str(e)), **MODEL
    )
    assert any("drawn light on black" in e for e in events) and len(result.cluster_names) == 3
    assert built == ["tf_efficientnet_lite0"] and folded == ["efficientnet-lite0"]
    rebuilt = imgcluster.cluster_folder(small_folder, n_clusters=3, cache_dir=tmp_path / "other", **MODEL)  # a call of its own
    assert built == ["tf_efficientnet_lite0"] * 2 and rebuilt.cluster_names == result.cluster_names


def test_the_names_pass_classifies_only_the_members_nearest_each_centre(
    shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 typical members a cluster, each seen once: on sample_data's 25 a class, 80 of 125 images are classified."""
    from dataclasses import replace

    from imgcluster import negatives
    from imgcluster.folder import _names_of_negatives

    embeddings = imgcluster.embed(SAMPLE, cache_dir=shared_cache, **MODEL)
    clusters = np.unique([p.split("/", 1)[0] for p in embeddings.paths], return_inverse=True)[1]
    unit = embeddings.features / np.linalg.norm(embeddings.features, axis=1, keepdims=True)
    nearest = []
    for k in range(len(CLASSES)):
        members = np.flatnonzero(clusters == k)
        nearest += members[np.argsort(-(unit[members] @ unit[members].mean(axis=0)))[: negatives.PER_CLUSTER]].tolist()
    classified: list[int] = []
    shown: list[Path] = []
    real_lite0, real_features = negatives._lite0, negatives._lite0_features

    def counting_lite0():  # type: ignore[no-untyped-def]
        model, transform, dim, size = real_lite0()
        return (lambda pixels: classified.append(pixels.shape[0]) or model(pixels)), transform, dim, size

    monkeypatch.setattr(negatives, "_lite0", counting_lite0)
    monkeypatch.setattr(negatives, "_lite0_features", lambda files, views, **k: shown.extend(files) or real_features(files, views, **k))
    named = _names_of_negatives(replace(embeddings, cache_dir=tmp_path), clusters, None)  # a cold names cache
    assert named is not None and len(set(named.guesses.values())) == len(CLASSES)
    assert negatives.VIEWS == ("plain",) and negatives.PER_CLUSTER == 16
    assert sum(classified) == 16 * len(CLASSES) < len(embeddings.paths)
    assert sorted(shown) == sorted(embeddings.folder / embeddings.paths[i] for i in nearest)
