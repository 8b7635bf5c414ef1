"""ImageNet classes grouped into families (WordNet hypernyms), so that a cluster's name can lean on them.

On a drawing the classifier spreads its belief over several kinds of one thing (a sandal is 0.15
sandal, 0.1 clog, 0.1 running shoe and 0.2 oboe): each kind alone loses to one wrong class, the
family together wins. The table ``data/imagenet_families.tsv`` maps each of the 1000 classes to its
family, the most general WordNet 3.0 hypernym that covers 2 to 6 ImageNet classes (``footwear``:
sandal, running shoe, clog, Loafer, cowboy boot; ``bag``: mailbag, purse, backpack, plastic bag,
sleeping bag); 382 classes have none. Larger families soak up noise: at 12, ``restraint`` (locks,
buckles, muzzles, nails...) outweighed the bag family on ``sample_data``'s bags. It was written once by
``tools/make_imagenet_families.py`` from WordNet 3.0 (Princeton University's permissive license,
kept in the table's header); nothing here reads WordNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import numpy as np

TABLE = "imagenet_families.tsv"


@dataclass(frozen=True)
class Families:
    """``group[c]``: the group of class ``c`` (a family, or the class alone); ``names[g]``: the family's name, ``""`` alone."""

    group: np.ndarray  # [1000] int
    names: list[str]

    def mass(self, probabilities: np.ndarray) -> np.ndarray:
        """Each group's total probability, from one row of class probabilities."""
        return np.bincount(self.group, weights=probabilities, minlength=len(self.names))


def parse(text: str, classes: int = 1000) -> Families:
    """The table's rows (``index, wnid, family wnid, family name``, ``#`` comments) as :class:`Families`."""
    family_of: dict[int, tuple[str, str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        row, _wnid, family, name = line.split("\t")
        family_of[int(row)] = (family, name)
    if sorted(family_of) != list(range(classes)):
        raise ValueError(f"the families table must have one row per class 0..{classes - 1}")
    ids: dict[str, int] = {}
    names: list[str] = []
    group = np.empty(classes, dtype=np.int64)
    for index in range(classes):
        family, name = family_of[index]
        key = family or f"class {index}"
        if key not in ids:
            ids[key] = len(names)
            names.append(name if family else "")
        group[index] = ids[key]
    return Families(group, names)


@lru_cache(maxsize=1)
def imagenet_families() -> Families:
    """The bundled table, read once."""
    return parse((files("imgcluster") / "data" / TABLE).read_text(encoding="utf-8"))
