"""Write ``imgcluster/data/imagenet_families.tsv``: each ImageNet-1k class's family, from WordNet 3.0.

Run once, by hand, where WordNet 3.0's database is installed (Debian: ``apt-get install
wordnet-base``, files under ``/usr/share/wordnet``); the package ships the table it writes and
never reads WordNet itself. An ImageNet class is a WordNet noun synset (its wnid is ``n`` and the
synset's offset in ``data.noun``). A class's family is the most general synset on its first-hypernym
path that still covers at most ``MAX_FAMILY`` ImageNet classes and at least two: sandal, running
shoe, clog, Loafer and cowboy boot share ``footwear``; mailbag, purse, backpack and plastic bag
share ``bag``. A class whose nearest such synset already covers more has no family (an empty
cell). Usage: ``python tools/make_imagenet_families.py [WORDNET_DIR]``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "imgcluster" / "data" / "imagenet_families.tsv"
MAX_FAMILY = 6  # above this a synset is too general to name a cluster ("restraint": locks, buckles, muzzles, nails...)
LICENSE = """\
# ImageNet-1k class index -> family (a WordNet 3.0 hypernym), written by tools/make_imagenet_families.py.
# Columns: class index, wnid, family wnid, family name (both empty for a class without a family).
# Derived from WordNet 3.0, whose license follows (https://wordnet.princeton.edu/license-and-commercial-use):
# WordNet Release 3.0. This software and database is being provided to you, the LICENSEE, by Princeton
# University under the following license. By obtaining, using and/or copying this software and database,
# you agree that you have read, understood, and will comply with these terms and conditions.: Permission
# to use, copy, modify and distribute this software and database and its documentation for any purpose
# and without fee or royalty is hereby granted, provided that you agree to comply with the following
# copyright notice and statements, including the disclaimer, and that the same appear on ALL copies of
# the software, database and documentation, including modifications that you make for internal use or
# for distribution. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS
# SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
# WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO
# REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE
# USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS,
# COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of Princeton University or Princeton may not be used
# in advertising or publicity pertaining to distribution of the software and/or database. Title to
# copyright in this software, database and any associated documentation shall at all times remain with
# Princeton University and LICENSEE agrees to preserve same.
"""


def read_nouns(wordnet: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Offset -> hypernym offsets (class and instance hypernyms, in file order), and offset -> first lemma."""
    hypernyms: dict[str, list[str]] = {}
    lemmas: dict[str, str] = {}
    for line in (wordnet / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):  # the license header
            continue
        fields = line.split(" ")
        words = int(fields[3], 16)
        lemmas[fields[0]] = fields[4].replace("_", " ")
        at = 4 + 2 * words
        pointers = fields[at + 1 : at + 1 + 4 * int(fields[at])]
        hypernyms[fields[0]] = [pointers[i + 1] for i in range(0, len(pointers), 4) if pointers[i] in ("@", "@i")]
    return hypernyms, lemmas


def first_path(offset: str, hypernyms: dict[str, list[str]]) -> list[str]:
    """The synset's hypernyms up to the root, following the first one at each step."""
    path = []
    while hypernyms.get(offset):
        offset = hypernyms[offset][0]
        path.append(offset)
    return path


def families(wnids: list[str], hypernyms: dict[str, list[str]]) -> list[str | None]:
    # counted along first paths only, so that a family holds every class below it and no class's family is its alone
    covers = Counter(a for wnid in wnids for a in first_path(wnid[1:], hypernyms))
    out: list[str | None] = []
    for wnid in wnids:
        family = None
        for ancestor in first_path(wnid[1:], hypernyms):
            if covers[ancestor] > MAX_FAMILY:
                break
            if covers[ancestor] >= 2:
                family = ancestor
        out.append(family)
    return out


def main() -> None:
    wordnet = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/usr/share/wordnet")
    from importlib.util import find_spec

    spec = find_spec("timm")
    assert spec is not None and spec.submodule_search_locations
    info = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
    hypernyms, lemmas = read_nouns(wordnet)
    rows = [LICENSE.rstrip("\n")]
    for index, (wnid, family) in enumerate(zip(wnids, families(wnids, hypernyms))):
        rows.append(f"{index}\t{wnid}\t{'n' + family if family else ''}\t{lemmas[family] if family else ''}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {sum(bool(r.split(chr(9))[2]) for r in rows[1:])} of {len(wnids)} classes have a family")


if __name__ == "__main__":
    main()
