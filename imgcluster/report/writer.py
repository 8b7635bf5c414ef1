"""Write the report: read the CSV and its sidecar, choose the images, make thumbnails, write the page.

Nothing here prints; progress and warnings go through :class:`ReportHooks`.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgcluster.atomic import atomic_write_text
from imgcluster.csvfile import as_folder_paths, check_assignments_file, read_assignments
from imgcluster.errors import ParameterError
from imgcluster.head_config import check_whole
from imgcluster.report.layout import DEFAULT_PER_CLUSTER, MAX_IMAGES, ClusterView, Plan, label_mix, plan_clusters
from imgcluster.report.montage import write_montages
from imgcluster.report.page import MAX_BYTES, render_html
from imgcluster.report.paths import lexical_refusal, refusal
from imgcluster.report.sidecar import cache_dir_of, cached_features, read_sidecar, resolve_folder
from imgcluster.report.thumbnails import THUMB_PX, Thumb, ThumbCache, make_thumbnails
from imgcluster.signals import Interrupted, stops_as_interrupt


@dataclass
class ReportHooks:
    """Callbacks the CLI uses for its progress bar and warnings; the library stays silent."""

    on_start: Callable[[int], None] = lambda thumbnails: None
    on_advance: Callable[[int], None] = lambda n: None
    on_warning: Callable[[str], None] = lambda message: None


@dataclass
class ReportResult:
    """What :func:`imgcluster.write_report` wrote: the page (``html``), how many images it shows
    and how many it could not (``placeholders``, ``omitted``, ``refused``), and any montages."""

    html: Path
    clusters: int
    rows: int  # images in the CSV
    shown: int  # thumbnails embedded in the page
    placeholders: int  # images shown as a placeholder: file gone, unreadable or outside the folder
    omitted: int  # thumbnails left out to keep the page under ``max_bytes``
    typical_by: str  # "features" or "confidence"
    bytes: int
    montages: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    refused: int = 0  # rows naming a file outside the image folder: never opened
    outliers: int = 0  # rows the CSV flags as outliers
    outliers_shown: int = 0  # of them, in the page's outliers section (it is capped like a cluster)


def default_report_path(csv_path: Path) -> Path:
    return csv_path.with_suffix(".html")


def write_report(
    assignments: Path,
    out: Path | None = None,
    labels: Path | None = None,
    folder: Path | None = None,
    montage: bool = False,
    per_cluster: int = DEFAULT_PER_CLUSTER,
    features: tuple[list[str], np.ndarray] | None = None,
    hooks: ReportHooks | None = None,
    max_images: int = MAX_IMAGES,
    max_bytes: int = MAX_BYTES,
    follow_symlinks: bool = False,
) -> ReportResult:
    """Write one self-contained HTML page showing the clusters of ``assignments`` (a CSV from ``assign``).

    Size policy, so that even 100,000 images give a page that opens quickly and stays under 30 MB:
    each cluster shows at most ``per_cluster`` (default 48) most typical images and ``per_cluster // 3``
    (16) least confident ones, each a <= 112 px WebP (JPEG without WebP support) of about 4 KB;
    outliers are capped at ``per_cluster``. When that would exceed ``max_images`` (2,400)
    thumbnails in all, the per-cluster counts shrink evenly; and any thumbnail that would take the
    file past ``max_bytes`` (28 MB) becomes a placeholder. Images whose files are gone or unreadable
    are placeholders too. The CSV itself always lists every image.

    Only files inside the image folder are opened: a row that is an absolute path, climbs out with
    ``..`` or (unless ``follow_symlinks``) is a link leading outside is refused and counted. The
    thumbnail cache goes in the folder's existing feature cache, never in a folder the report
    would have to create because a sidecar named it.

    ``features`` (paths, matrix) skips the read of the embedding cache when the caller has them
    (``assign`` with a report). ``labels`` is a labelled folder for each cluster's label mix; without
    it a ``<csv>.eval.json`` (the JSON of ``imgcluster evaluate``) adds majority labels and scores.
    ``montage`` also writes ``<csv stem>-montage/cluster-<k>.png`` beside the page.
    """
    check_whole("per_cluster", per_cluster, 1)  # "8" or 2.5 from Python failed in a comparison or a slice
    check_assignments_file(assignments)
    out = out or default_report_path(assignments)
    if out.is_dir():
        raise ParameterError(f"{{out}} {out} is a folder; give a file name")
    written: list[Path] = []  # the page, once it is in place
    try:
        with stops_as_interrupt():
            return _write_report(
                assignments, out, labels, folder, montage, per_cluster, features, hooks or ReportHooks(), max_images, max_bytes,
                follow_symlinks, written,
            )  # fmt: skip
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: stop now, and say what is on disk
        kept = f"drawing montages: the report {out} is written, some montages are missing"
        raise Interrupted.wrap(exc, f"interrupted while {kept if written else f'making the report: {out} was not written'}") from None


def _write_report(
    assignments: Path,
    out: Path,
    labels: Path | None,
    folder: Path | None,
    montage: bool,
    per_cluster: int,
    features: tuple[list[str], np.ndarray] | None,
    hooks: ReportHooks,
    max_images: int,
    max_bytes: int,
    follow_symlinks: bool,
    written: list[Path],
) -> ReportResult:
    from imgcluster import __version__
    from imgcluster.cache import default_cache_root

    start = time.perf_counter()
    rows = read_assignments(assignments)
    sidecar = read_sidecar(assignments)
    image_folder = resolve_folder(assignments, sidecar, folder)
    rows = as_folder_paths(rows, image_folder)
    if not image_folder.is_dir():
        hooks.on_warning(f"image folder {image_folder} not found; every image is shown as a placeholder")

    if features is not None:
        feats: dict[str, np.ndarray] | None = dict(zip(features[0], features[1]))
        reason = ""
    else:
        feats, reason = cached_features(image_folder, sidecar)
    if feats is not None and not any(r.path in feats for r in rows):
        feats, reason = None, "the cached features do not cover the CSV's images"
    if feats is None:
        hooks.on_warning(f"typical images chosen by confidence: {reason}")

    plan = plan_clusters(rows, feats, per_cluster, max_images)
    views = plan.views
    info = _page_info(assignments, sidecar, feats is not None, plan, per_cluster, max_images, __version__)
    if labels is not None:
        mix = label_mix(rows, labels)
        for v in views:
            v.mix = mix[v.cluster].most_common()
        from imgcluster.scoring import evaluate

        info["scores"] = score_items(evaluate(assignments, labels).to_dict())
    else:
        _apply_eval_json(assignments, views, info, hooks)

    cache_root = default_cache_root(image_folder, cache_dir_of(sidecar))
    thumb_cache = ThumbCache(cache_root / "thumbs" / str(THUMB_PX) if cache_root.is_dir() else None)
    wanted = [i for v in views for i in (*v.typical, *v.least)] + plan.outliers
    refused = {r.path: why for r in rows if (why := lexical_refusal(r.path))}  # counted over every row
    refused |= {p: why for p in {rows[i].path for i in wanted} - set(refused) if (why := refusal(image_folder, p, follow_symlinks))}
    paths = list(dict.fromkeys(image_folder / rows[i].path for i in wanted if rows[i].path not in refused))
    hooks.on_start(len(paths))
    thumbs = make_thumbnails(paths, thumb_cache, hooks.on_advance)
    thumbs |= {image_folder / rel: Thumb(None, problem="refused") for rel in refused}
    if refused:
        example = min(refused)
        hooks.on_warning(
            f"{len(refused)} row(s) name a file outside the image folder {image_folder} (e.g. {example!r}: {refused[example]}); "
            "not opened, shown as placeholders"
        )
    if thumb_cache.write_problem:
        hooks.on_warning(thumb_cache.write_problem)

    text, page = render_html(rows, plan, image_folder, thumbs, info, max_bytes)
    atomic_write_text(out, text)
    written.append(out)
    problems = Counter(t.problem for t in thumbs.values() if t.data is None)
    if problems["missing"] or problems["unreadable"]:
        hooks.on_warning(f"{problems['missing']} image file(s) missing and {problems['unreadable']} unreadable; shown as placeholders")
    if page.omitted:
        hooks.on_warning(
            f"{page.omitted} thumbnail(s) left out to keep the page under {max_bytes / 1e6:g} MB; try a smaller {{per_cluster}}"
        )
    montages = write_montages(out.parent / f"{assignments.stem}-montage", rows, views, image_folder, thumbs) if montage else []
    return ReportResult(
        html=out,
        clusters=len(views),
        rows=len(rows),
        shown=page.shown,
        placeholders=page.placeholders,
        omitted=page.omitted,
        refused=len(refused),
        outliers=page.outliers_flagged,
        outliers_shown=page.outliers_shown,
        typical_by="features" if feats is not None else "confidence",
        bytes=len(text.encode("utf-8")),
        montages=montages,
        seconds=time.perf_counter() - start,
    )


def _page_info(
    csv_path: Path, sidecar: dict[str, Any] | None, by_features: bool, plan: Plan, per_cluster: int, max_images: int, version: str
) -> dict[str, Any]:
    sidecar = sidecar or {}
    facts: list[tuple[str, Any]] = []
    if (sidecar.get("backbone") or {}).get("model"):
        facts.append(("model", sidecar["backbone"]["model"]))
    head = sidecar.get("head") or {}
    if head.get("objective"):
        facts.append(("objective", f"{head['objective']} (K={head.get('clusters', len(plan.views))})"))
    typical = "closest to the cluster centre in the cached features" if by_features else "highest confidence (no cached features)"
    policy = f"Most typical = {typical}. Up to {plan.typical} typical and {plan.least} least confident images per cluster"
    if plan.typical < per_cluster:
        policy += f" (fewer than the {per_cluster} asked for, to keep the page under {max_images:,} thumbnails)"
    return {
        "csv_name": csv_path.name,
        "facts": facts,
        "policy": policy + ".",
        "version": version,
        "created": time.strftime("%Y-%m-%d %H:%M"),
    }


def score_items(scores: dict[str, Any]) -> list[tuple[str, float]]:
    """The scores the page shows, from ``imgcluster evaluate``'s JSON: with the coverage and the ACC
    of every labelled image when the CSV leaves some out (ACC 1.0 of 1 image in 18 read as perfect)."""
    names = [name for name in ("acc", "nmi", "ari", "purity") if name in scores]
    items = [(name.upper() if name != "purity" else name, float(scores[name])) for name in names]
    if float(scores.get("coverage", 1.0)) < 1.0:
        items += [("coverage", float(scores["coverage"])), ("ACC, missing = wrong", float(scores["acc_of_labelled"]))]
    return items


def _apply_eval_json(csv_path: Path, views: list[ClusterView], info: dict[str, Any], hooks: ReportHooks) -> None:
    """Majority labels and scores from ``<csv>.eval.json`` (the JSON ``imgcluster evaluate`` writes), if present."""
    path = csv_path.with_name(csv_path.name + ".eval.json")
    if not os.path.isfile(path):  # False, not "File name too long", beside a CSV whose name nearly fills NAME_MAX
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        per = {int(p["cluster"]): (str(p["majority_label"]), float(p["purity"])) for p in data.get("per_cluster", [])}
        info["scores"] = score_items(data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        hooks.on_warning(f"ignored {path}: {exc}")
        return
    for v in views:
        v.majority = per.get(v.cluster)
