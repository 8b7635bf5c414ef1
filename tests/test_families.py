"""ImageNet classes grouped into WordNet families (the table the cluster names lean on)."""

from __future__ import annotations

import numpy as np
import pytest

from imgcluster.families import imagenet_families, parse
from imgcluster.naming import _lemmas


def family_of(lemma: str) -> str:
    families = imagenet_families()
    return families.names[int(families.group[_lemmas().index(lemma)])]


def members(lemma: str) -> set[str]:
    families = imagenet_families()
    group = families.group[_lemmas().index(lemma)]
    return {_lemmas()[int(c)] for c in np.flatnonzero(families.group == group)}


def test_the_bundled_table_groups_kinds_of_one_thing() -> None:
    assert members("sandal") == {"sandal", "running shoe", "clog", "Loafer", "cowboy boot"}
    assert family_of("sandal") == family_of("cowboy boot") == "footwear"
    assert {"mailbag", "purse", "backpack", "plastic bag"} <= members("mailbag") and family_of("purse") == "bag"
    assert family_of("jersey") == "" and members("jersey") == {"jersey"}  # no family: alone
    assert members("sweatshirt") == {"sweatshirt", "cardigan"} and members("jean") == {"jean"}  # pullovers; trousers' nearest
    assert family_of("muzzle") == "" and family_of("combination lock") == "lock"  # no catch-all "restraint"


def test_every_family_is_small_and_every_class_has_one_group() -> None:
    families = imagenet_families()
    assert families.group.shape == (1000,)
    sizes = np.bincount(families.group)
    named = np.array([bool(n) for n in families.names])
    assert sizes.min() >= 1 and (sizes[named] >= 2).all() and (sizes[named] <= 6).all() and (sizes[~named] == 1).all()


def test_mass_sums_probabilities_by_family() -> None:
    table = "# a comment\n0\tn1\tn9\tthings\n1\tn2\t\t\n2\tn3\tn9\tthings\n"
    families = parse(table, classes=3)
    assert families.names == ["things", ""] and families.group.tolist() == [0, 1, 0]
    assert np.allclose(families.mass(np.array([0.2, 0.5, 0.3])), [0.5, 0.5])


@pytest.mark.parametrize("table", ["0\tn1\t\t\n", "0\tn1\t\t\n2\tn3\t\t\n", "0\tn1\n1\tn2\t\t\n"])
def test_a_table_without_one_row_per_class_is_refused(table: str) -> None:
    with pytest.raises(ValueError):
        parse(table, classes=2)
