"""See the clusters: one self-contained HTML page (and optional PNG contact sheets) from a CSV.

The page needs nothing but a browser: thumbnails are embedded as data URIs, there is no script,
and a Content-Security-Policy forbids every network request. Nothing here prints; progress and
warnings go through :class:`ReportHooks`.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import html
import io
import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from imgcluster.atomic import atomic_open, atomic_write_text
from imgcluster.errors import ImgclusterError, ParameterError
from imgcluster.listing import OUTPUT_MARKER
from imgcluster.load import ImageDecodeError, load_rgb

DEFAULT_PER_CLUSTER = 48  # most typical images per cluster; a third as many least confident ones join them
THUMB_PX = 112  # longest side of a thumbnail
MAX_IMAGES = 2400  # thumbnails in one page, over all clusters
MAX_BYTES = 28_000_000  # the page never grows past this (the promise is < 30 MB)
MONTAGE_COLUMNS = 8
THUMB_VERSION = "1"  # bump to invalidate cached thumbnails
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
OTHER_COLOUR = "#d0d0d0"


@dataclass
class ReportHooks:
    """Callbacks the CLI uses for its progress bar and warnings; the library stays silent."""

    on_start: Callable[[int], None] = lambda thumbnails: None
    on_advance: Callable[[int], None] = lambda n: None
    on_warning: Callable[[str], None] = lambda message: None


@dataclass
class ReportResult:
    html: Path
    clusters: int
    rows: int  # images in the CSV
    shown: int  # thumbnails embedded in the page
    placeholders: int  # images shown as a placeholder: file gone or unreadable
    omitted: int  # thumbnails left out to keep the page under ``max_bytes``
    typical_by: str  # "features" or "confidence"
    bytes: int
    montages: list[Path] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Row:
    path: str  # relative to the image folder, exactly as in the CSV
    cluster: int
    confidence: float  # NaN when the CSV has no confidence column
    outlier: bool


@dataclass
class ClusterView:
    cluster: int
    size: int
    mean_confidence: float
    typical: list[int]  # row indices, most typical first
    least: list[int]  # row indices, least confident first, none of them in ``typical``
    mix: list[tuple[str, int]] | None = None  # (label, count), largest first, from --labels
    majority: tuple[str, float] | None = None  # (label, purity) from an evaluation JSON


@dataclass
class Plan:
    views: list[ClusterView]  # largest cluster first
    outliers: list[int]  # row indices of flagged rows shown, least confident first
    typical: int  # per-cluster caps in force, after shrinking to fit ``max_images``
    least: int


@dataclass
class Thumb:
    data: bytes | None  # encoded image, or None for a placeholder
    mime: str = ""
    problem: str = ""  # "missing" or "unreadable" when ``data`` is None


# ---- reading the inputs --------------------------------------------------------------------------
def read_rows(path: Path) -> list[Row]:
    """Read the assignment CSV with the csv module, so every file name comes back exactly."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in ("path", "cluster") if c not in columns]
            if missing:
                raise ImgclusterError(f"{path} is not an assignment CSV: missing column(s) {', '.join(missing)}")
            rows = []
            for number, record in enumerate(reader, start=2):
                try:
                    cluster = int(float(record["cluster"]))
                    confidence = float(record["confidence"]) if record.get("confidence") not in (None, "") else math.nan
                except (TypeError, ValueError):
                    raise ImgclusterError(f"{path}, line {number}: cluster and confidence must be numbers") from None
                rows.append(Row(record["path"], cluster, confidence, _truthy(record.get("outlier"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImgclusterError(f"cannot read assignments {path}: {exc}") from None
    if not rows:
        raise ImgclusterError(f"{path} has no rows")
    return rows


def _truthy(value: str | None) -> bool:
    """``outlier`` column: 1/True/yes (any case, any number but 0) marks an outlier."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("true", "yes", "y"):
        return True
    try:
        return float(text) != 0.0
    except ValueError:
        return False


def read_sidecar(csv_path: Path) -> dict[str, Any] | None:
    """The ``<csv>.json`` written by ``assign``: where the images and their cached features are."""
    from imgcluster.config import sidecar_path

    path = sidecar_path(csv_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImgclusterError(f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else None


def resolve_folder(csv_path: Path, sidecar: dict[str, Any] | None, folder: Path | None) -> Path:
    """The image folder: ``folder`` if given, else the one the sidecar recorded.

    ``assign`` records the folder as typed (``embed.folder``, relative to where it ran) and
    resolved (``assign.folder``); the resolved one is tried first, then the typed one from here
    and from the CSV's folder, so a report works from anywhere while the images stay put.
    """
    if folder is not None:
        if not folder.is_dir():
            raise ParameterError(f"image folder not found: {folder}", "folder")
        return folder
    sidecar = sidecar or {}
    recorded = [str(v) for v in ((sidecar.get("assign") or {}).get("folder"), (sidecar.get("embed") or {}).get("folder")) if v]
    if not recorded:
        raise ImgclusterError(
            f"{csv_path} has no sidecar {csv_path.name}.json saying where its images are; give the folder with {{folder}}"
        )
    candidates = [Path(r) for r in recorded] + [csv_path.parent / r for r in recorded if not Path(r).is_absolute()]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]  # gone: every image becomes a placeholder, and the caller warns


def cached_features(folder: Path, sidecar: dict[str, Any] | None) -> tuple[dict[str, np.ndarray] | None, str]:
    """Features of the assigned images, read from the embedding cache the sidecar points at.

    Read-only on purpose: it loads no model, embeds nothing, takes no lock and never rewrites the
    cache, so a report is quick and safe beside a running ``embed``. Returns (None, reason) when
    the features cannot be had.
    """
    from imgcluster.cache import ShardError, cache_key, default_cache_root, read_shard

    embed = (sidecar or {}).get("embed") or {}
    backbone = (sidecar or {}).get("backbone") or {}
    if not backbone.get("model"):
        return None, "no sidecar JSON names the backbone" if sidecar is None else "the sidecar JSON does not name the backbone"
    dtype = embed.get("dtype") or "float16"
    root = default_cache_root(folder, embed.get("cache_dir"))
    directory = root / "embeddings" / f"{backbone['model']}-{cache_key(backbone, dtype)}"
    shards = sorted((directory / "shards").glob("*.safetensors"))
    if not shards:
        return None, f"no cached features in {directory}"
    found: dict[str, np.ndarray] = {}
    for shard in shards:  # a later shard overrides an earlier one, as in the cache itself
        with contextlib.suppress(ShardError, OSError):  # a shard compacted away or damaged meanwhile: skip it
            block, rows = read_shard(shard, cache=directory.name, dtype=dtype, dim=backbone.get("feature_dim"))
            for i, (rel, _size, _mtime) in enumerate(rows):
                found[rel] = block[i]
    if not found:
        return None, f"the cached features in {directory} are unreadable"
    return found, ""


def label_mix(rows: list[Row], labelled_folder: Path) -> dict[int, Counter[str]]:
    """Per cluster, how many images carry each label (the top sub-folder name in ``labelled_folder``)."""
    from imgcluster.scoring import folder_labels

    if not labelled_folder.is_dir():
        raise ParameterError(f"labelled folder not found: {labelled_folder}", "labels")
    truth = folder_labels(labelled_folder)
    if not truth:
        raise ImgclusterError(f"no labelled images in {labelled_folder}: put each class in its own sub-folder")
    if not any(r.path in truth for r in rows):
        raise ImgclusterError(f"no path in the CSV matches an image in {labelled_folder}; were they made from the same folder?")
    mix: dict[int, Counter[str]] = {}
    for r in rows:
        mix.setdefault(r.cluster, Counter())[truth.get(r.path, "(no label)")] += 1
    return mix


# ---- choosing what to show -----------------------------------------------------------------------
def _allocate(sizes: list[int], outliers: int, per_cluster: int, max_images: int) -> tuple[int, int]:
    """Per-cluster (typical, least confident) counts, shrunk evenly until the page fits ``max_images``."""
    typical = per_cluster
    while True:
        least = typical // 3
        planned = sum(min(n, typical + least) for n in sizes) + min(outliers, typical)
        if planned <= max_images or typical == 1:
            return typical, least
        typical = max(1, int(typical * 0.8))


def plan_clusters(rows: list[Row], feats: dict[str, np.ndarray] | None, per_cluster: int, max_images: int) -> Plan:
    """Clusters largest first with their typical and least confident images, and the outliers.

    Typical means closest (cosine) to the cluster centre, the mean of its members' normalised
    features; without features (or for members the cache lacks) highest confidence stands in.
    """
    members: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        members.setdefault(r.cluster, []).append(i)
    order = sorted(members, key=lambda k: (-len(members[k]), k))
    outliers = sorted((i for i, r in enumerate(rows) if r.outlier), key=lambda i: _conf(rows[i]))
    typical_n, least_n = _allocate([len(members[k]) for k in order], len(outliers), per_cluster, max_images)
    budget = max_images
    views = []
    for k in order:
        idx = members[k]
        ranked = _typical_order(idx, rows, feats)
        t = min(typical_n, budget)
        typical = ranked[:t]
        chosen = set(typical)
        rest = sorted((i for i in idx if i not in chosen), key=lambda i: (_conf(rows[i]), rows[i].path))
        least = rest[: min(least_n, budget - len(typical))]
        budget -= len(typical) + len(least)
        confidences = [rows[i].confidence for i in idx if not math.isnan(rows[i].confidence)]
        views.append(ClusterView(k, len(idx), float(np.mean(confidences)) if confidences else math.nan, typical, least))
    return Plan(views, outliers[: min(typical_n, max(budget, 0))], typical_n, least_n)


def _conf(row: Row) -> float:
    return -1.0 if math.isnan(row.confidence) else row.confidence


def _typical_order(idx: list[int], rows: list[Row], feats: dict[str, np.ndarray] | None) -> list[int]:
    have = [i for i in idx if feats is not None and rows[i].path in feats]
    lack = sorted((i for i in idx if feats is None or rows[i].path not in feats), key=lambda i: (-_conf(rows[i]), rows[i].path))
    if not have or feats is None:
        return lack
    x = np.stack([feats[rows[i].path] for i in have]).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    centre = x.mean(0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    similarity = x @ centre
    ranked = sorted(range(len(have)), key=lambda j: (-float(similarity[j]), rows[have[j]].path))
    return [have[j] for j in ranked] + lack


# ---- thumbnails ----------------------------------------------------------------------------------
class ThumbCache:
    """Thumbnails made once and kept as files keyed by (path, size, mtime, thumbnail size).

    The files are a disposable cache: written by rename (never torn) but not fsynced, which would
    cost more than remaking one. Without a writable ``directory`` they are made in memory only.
    """

    def __init__(self, directory: Path | None, px: int = THUMB_PX) -> None:
        self.px = px
        self.webp = features.check("webp")
        self.suffix, self.mime = (".webp", "image/webp") if self.webp else (".jpg", "image/jpeg")
        self.directory = directory
        self.write_problem = ""
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.directory, self.write_problem = None, f"cannot create thumbnail cache {directory}: {exc}"

    def get(self, path: Path) -> Thumb:
        try:
            st = path.stat()
        except FileNotFoundError:
            return Thumb(None, problem="missing")
        except OSError:
            return Thumb(None, problem="unreadable")
        key = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{self.px}\0{self.suffix}\0{THUMB_VERSION}"
        cached = None if self.directory is None else self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + self.suffix)
        if cached is not None:
            with contextlib.suppress(OSError):
                data = cached.read_bytes()
                if data:
                    return Thumb(data, self.mime)
        try:
            data = self._make(path)
        except ImageDecodeError as exc:
            return Thumb(None, problem="missing" if "disappeared" in str(exc) else "unreadable")
        if cached is not None:
            self._store(cached, data)
        return Thumb(data, self.mime)

    def _make(self, path: Path) -> bytes:
        im = load_rgb(path, draft_size=self.px * 2)
        im.thumbnail((self.px, self.px), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if self.webp:
            im.save(buffer, "WEBP", quality=70, method=4)
        else:
            im.save(buffer, "JPEG", quality=75, optimize=True)
        return buffer.getvalue()

    def _store(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            self.write_problem = self.write_problem or f"thumbnail cache {path.parent} not writable ({exc}); thumbnails not kept"
            return
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self.write_problem = self.write_problem or f"thumbnail cache {path.parent} not writable ({exc}); thumbnails not kept"


def make_thumbnails(paths: list[Path], cache: ThumbCache, hooks: ReportHooks) -> dict[Path, Thumb]:
    """Make (or load) thumbnails with a few threads: Pillow decodes and resizes without the GIL."""
    hooks.on_start(len(paths))
    out: dict[Path, Thumb] = {}
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for path, thumb in zip(paths, pool.map(cache.get, paths)):
            out[path] = thumb
            hooks.on_advance(1)
    return out


# ---- the page ------------------------------------------------------------------------------------
CSS = """
:root{--bg:#fafafa;--fg:#1d1d1f;--muted:#6b6b70;--card:#fff;--line:#e3e3e6;--accent:#4e79a7;--warn:#fff4e5}
@media (prefers-color-scheme:dark){:root{--bg:#161618;--fg:#ececef;--muted:#a0a0a8;--card:#212124;--line:#34343a;--warn:#2e2619}}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px 48px;background:var(--bg);color:var(--fg);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
a{color:var(--accent)}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0}h3{font-size:13px;margin:14px 0 6px;color:var(--muted);font-weight:600}
.meta{color:var(--muted);margin:0 0 4px}.meta b{color:var(--fg);font-weight:600}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:18px 0}
.bars{margin-top:10px}.bars.many{column-width:380px;column-gap:40px}
a.row{display:grid;grid-template-columns:7em 1fr 4em;gap:10px;align-items:center;padding:2px 0;break-inside:avoid;
  color:inherit;text-decoration:none}
a.row:hover .track{outline:1px solid var(--accent)}
.track{height:14px;border-radius:3px;background:transparent;display:block}
.bar{display:flex;height:100%;border-radius:3px;overflow:hidden;min-width:2px;background:var(--accent)}
.bar i{display:block;height:100%}
.num{text-align:right;font-variant-numeric:tabular-nums;color:var(--muted)}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:10px 0 0;color:var(--muted);font-size:12px}
.legend span::before{content:"";display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;background:var(--c)}
.head{display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 16px}
.stats{color:var(--muted)}
.mix{margin-top:8px}.mix .bar{height:10px;max-width:520px}.mix p{margin:4px 0 0;color:var(--muted);font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:8px}
.strip{display:flex;gap:8px;overflow-x:auto;padding:8px;background:var(--warn);border-radius:8px}
.strip figure{flex:0 0 118px}
figure{margin:0;min-width:0}
.box{width:100%;aspect-ratio:1;display:flex;align-items:center;justify-content:center;
  border-radius:6px;background:#fff;border:1px solid var(--line);overflow:hidden}
.box img{width:100%;height:100%;object-fit:contain}
.ph{color:var(--muted);font-size:12px;background:repeating-linear-gradient(45deg,transparent 0 6px,rgba(127,127,127,.12) 6px 12px)}
figcaption{font-size:11px;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
figcaption b{color:var(--fg);font-weight:600;font-variant-numeric:tabular-nums}
.note{color:var(--muted);font-size:12px}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""


class _Page:
    """Collects the HTML; thumbnails go in last, in page order, while the file stays under ``max_bytes``.

    Every thumbnail is first written as a placeholder, so the size of all the markup is known
    exactly; then images replace placeholders until the next one would not fit.
    """

    def __init__(self, thumbs: dict[Path, Thumb]) -> None:
        self.parts: list[str] = []
        self.thumbs = thumbs
        self.images: list[tuple[int, str, str]] = []  # (index in parts, the <figure> with its image, row path)
        self.shown = self.placeholders = self.omitted = 0  # distinct images: an outlier is also in its cluster

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, row: Row, path: Path, show_cluster: bool = False) -> None:
        name = html.escape(row.path)
        conf = "–" if math.isnan(row.confidence) else f"{row.confidence:.2f}"
        label = f"cluster {row.cluster} · " if show_cluster else ""
        tip = html.escape(f"{row.path}\ncluster {row.cluster}, confidence {conf}")
        short = html.escape(row.path.rsplit("/", 1)[-1])  # the full path is in the tooltip
        caption = f'<figcaption title="{tip}"><b>{html.escape(label)}{conf}</b> {short}</figcaption>'
        thumb = self.thumbs.get(path, Thumb(None, problem="missing"))
        if thumb.data is None:
            self.placeholders += 1
            problem = "file missing" if thumb.problem == "missing" else "unreadable"
        else:
            uri = f"data:{thumb.mime};base64,{base64.b64encode(thumb.data).decode('ascii')}"
            block = f'<figure><div class="box"><img src="{uri}" alt="{name}" title="{tip}" decoding="async"></div>{caption}</figure>'
            self.images.append((len(self.parts), block, row.path))
            problem = "left out (size limit)"
        self.add(f'<figure><div class="box ph" title="{tip}">{problem}</div>{caption}</figure>')

    def finish(self, max_bytes: int) -> str:
        size = sum(len(part.encode("utf-8")) for part in self.parts)
        shown: set[str] = set()
        for index, block, path in self.images:
            grows = len(block.encode("utf-8")) - len(self.parts[index].encode("utf-8"))
            if size + grows > max_bytes:
                break
            self.parts[index] = block
            size += grows
            shown.add(path)
        self.shown = len(shown)
        self.omitted = len({path for _, _, path in self.images} - shown)
        return "".join(self.parts)


def _mix_bar(mix: list[tuple[str, int]], colours: dict[str, str]) -> str:
    total = sum(n for _, n in mix) or 1
    segments = "".join(
        f'<i style="width:{100 * n / total:.3f}%;background:{colours.get(label, OTHER_COLOUR)}" title="{html.escape(label)}: {n}"></i>'
        for label, n in mix
    )
    return f'<span class="bar">{segments}</span>'


def render_html(
    rows: list[Row],
    plan: Plan,
    folder: Path,
    thumbs: dict[Path, Thumb],
    info: dict[str, Any],
    max_bytes: int,
) -> tuple[str, _Page]:
    """The whole page as one string; every name that came from a file is escaped."""
    esc = html.escape
    views, outliers = plan.views, plan.outliers
    page = _Page(thumbs)
    colours = _label_colours(views)
    title = f"imgcluster report: {info['csv_name']}"
    page.add(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
    )
    page.add(f"<header><h1>{esc(title)}</h1>")
    page.add(
        f'<p class="meta"><b>{len(rows)}</b> images in <b>{len(views)}</b> clusters · folder <b>{esc(str(folder))}</b>'
        + "".join(f" · {esc(k)} <b>{esc(str(v))}</b>" for k, v in info["facts"])
        + "</p>"
    )
    if info.get("scores"):
        page.add('<p class="meta">' + " · ".join(f"{esc(k)} <b>{v:.3f}</b>" for k, v in info["scores"]) + "</p>")
    page.add(f'<p class="meta">{esc(info["policy"])}</p></header>')

    largest = max(v.size for v in views)
    page.add(f'<section class="card overview" id="overview"><h2>Cluster sizes</h2><div class="bars{" many" if len(views) > 12 else ""}">')
    for v in views:
        width = 100 * v.size / largest
        bar = _mix_bar(v.mix, colours) if v.mix else '<span class="bar"></span>'
        page.add(
            f'<a class="row" href="#cluster-{v.cluster}"><span>cluster {v.cluster}</span>'
            f'<span class="track" style="width:{width:.2f}%">{bar}</span><span class="num">{v.size}</span></a>'
        )
    page.add("</div>")
    if colours:
        page.add('<div class="legend">' + "".join(f'<span style="--c:{c}">{esc(label)}</span>' for label, c in colours.items()))
        page.add(f'<span style="--c:{OTHER_COLOUR}">other</span></div>' if _has_other(views, colours) else "</div>")
    if outliers:
        page.add(f'<p class="note"><a href="#outliers">{sum(r.outlier for r in rows)} outliers</a> flagged in the CSV.</p>')
    page.add("</section>")

    for v in views:
        conf = "–" if math.isnan(v.mean_confidence) else f"{v.mean_confidence:.3f}"
        page.add(
            f'<section class="card cluster" id="cluster-{v.cluster}" data-cluster="{v.cluster}" data-size="{v.size}">'
            f'<div class="head"><h2>Cluster {v.cluster}</h2><span class="stats">{v.size} images · mean confidence {conf}</span></div>'
        )
        if v.mix:
            total = sum(n for _, n in v.mix)
            text = " · ".join(f"{esc(label)} {n} ({100 * n / total:.0f}%)" for label, n in v.mix[:6])
            more = f" · {len(v.mix) - 6} more" if len(v.mix) > 6 else ""
            page.add(f'<div class="mix">{_mix_bar(v.mix, colours)}<p>{text}{more}</p></div>')
        elif v.majority:
            page.add(f'<div class="mix"><p>mostly {esc(v.majority[0])} (purity {v.majority[1]:.2f})</p></div>')
        page.add(f'<h3>Most typical ({len(v.typical)} of {v.size})</h3><div class="grid">')
        for i in v.typical:
            page.figure(rows[i], folder / rows[i].path)
        page.add("</div>")
        if v.least:
            page.add(f'<h3>Least confident ({len(v.least)})</h3><div class="strip">')
            for i in v.least:
                page.figure(rows[i], folder / rows[i].path)
            page.add("</div>")
        hidden = v.size - len(v.typical) - len(v.least)
        if hidden > 0:
            page.add(f'<p class="note">{hidden} more images not shown; the CSV lists them all.</p>')
        page.add("</section>")

    if outliers:
        flagged = sum(r.outlier for r in rows)
        page.add(
            f'<section class="card outliers" id="outliers"><div class="head"><h2>Outliers</h2>'
            f'<span class="stats">{flagged} flagged · least confident first</span></div><div class="grid" style="margin-top:10px">'
        )
        for i in outliers:
            page.figure(rows[i], folder / rows[i].path, show_cluster=True)
        page.add("</div></section>")
    page.add(f"<footer>Made by imgcluster {esc(info['version'])} from {esc(info['csv_name'])} on {esc(info['created'])}.</footer>")
    page.add("</body></html>\n")
    return page.finish(max_bytes), page


def _label_colours(views: list[ClusterView]) -> dict[str, str]:
    totals: Counter[str] = Counter()
    for v in views:
        for label, n in v.mix or []:
            totals[label] += n
    return {label: PALETTE[i] for i, (label, _) in enumerate(totals.most_common(len(PALETTE)))}


def _has_other(views: list[ClusterView], colours: dict[str, str]) -> bool:
    return any(label not in colours for v in views for label, _ in v.mix or [])


# ---- montages ------------------------------------------------------------------------------------
def write_montages(
    directory: Path, rows: list[Row], views: list[ClusterView], folder: Path, thumbs: dict[Path, Thumb], px: int = THUMB_PX
) -> list[Path]:
    """One PNG contact sheet of each cluster's most typical images; sheets of vanished clusters go."""
    font = ImageFont.load_default()
    pad, header = 6, 26
    written = []
    for v in views:
        columns = min(MONTAGE_COLUMNS, max(1, len(v.typical)))
        lines = max(1, math.ceil(len(v.typical) / columns))
        sheet = Image.new("RGB", (pad + columns * (px + pad), header + lines * (px + pad) + pad - 2), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((pad, 7), f"cluster {v.cluster}: {v.size} images, {len(v.typical)} most typical", fill=(40, 40, 40), font=font)
        for n, i in enumerate(v.typical):
            x, y = pad + (n % columns) * (px + pad), header + (n // columns) * (px + pad)
            thumb = thumbs.get(folder / rows[i].path)
            if thumb is None or thumb.data is None:
                draw.rectangle((x, y, x + px - 1, y + px - 1), fill=(235, 235, 235), outline=(200, 200, 200))
                draw.text((x + 8, y + px // 2 - 6), "missing" if thumb is None or thumb.problem == "missing" else "unreadable",
                          fill=(120, 120, 120), font=font)  # fmt: skip
                continue
            with Image.open(io.BytesIO(thumb.data)) as opened:
                rgb = opened.convert("RGB")
            scale = px / max(rgb.size)
            tile = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BICUBIC)
            sheet.paste(tile, (x + (px - tile.width) // 2, y + (px - tile.height) // 2))
        path = directory / f"cluster-{v.cluster}.png"
        with atomic_open(path, "wb") as handle:
            sheet.save(handle, "PNG", optimize=True)
        written.append(path)
    if written:  # a later scan of a folder that holds this one skips it: these are not photos
        atomic_write_text(directory / OUTPUT_MARKER, "written by imgcluster report (montage); folders holding this file are not scanned\n")
    keep = {p.name for p in written}
    for old in directory.glob("cluster-*.png"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return written


# ---- the entry point -----------------------------------------------------------------------------
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
) -> ReportResult:
    """Write one self-contained HTML page showing the clusters of ``assignments`` (a CSV from ``assign``).

    Size policy, so that even 100,000 images give a page that opens quickly and stays under 30 MB:
    each cluster shows at most ``per_cluster`` (default 48) most typical images and ``per_cluster // 3``
    (16) least confident ones, each a <= 112 px WebP (JPEG without WebP support) of about 4 KB;
    outliers are capped at ``per_cluster``. When that would exceed ``max_images`` (2,400)
    thumbnails in all, the per-cluster counts shrink evenly; and any thumbnail that would take the
    file past ``max_bytes`` (28 MB) becomes a placeholder. Images whose files are gone or unreadable
    are placeholders too. The CSV itself always lists every image.

    ``features`` (paths, matrix) skips the read of the embedding cache when the caller has them
    (``assign --report``). ``labels`` is a labelled folder for each cluster's label mix; without it a
    ``<csv>.eval.json`` (``imgcluster evaluate --json``) adds majority labels and scores.
    ``montage`` also writes ``<csv stem>-montage/cluster-<k>.png`` beside the page.
    """
    from imgcluster import __version__
    from imgcluster.cache import default_cache_root

    start = time.perf_counter()
    hooks = hooks or ReportHooks()
    if per_cluster < 1:
        raise ParameterError("{per_cluster} must be at least 1")
    if not assignments.is_file():
        raise ParameterError(f"assignments file not found: {assignments}", "assignments")
    out = out or default_report_path(assignments)
    if out.is_dir():
        raise ParameterError(f"{{out}} {out} is a folder; give a file name")
    rows = read_rows(assignments)
    sidecar = read_sidecar(assignments)
    image_folder = resolve_folder(assignments, sidecar, folder)
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

        e = evaluate(assignments, labels)
        info["scores"] = [("ACC", e.acc), ("NMI", e.nmi), ("ARI", e.ari), ("purity", e.purity)]
    else:
        _apply_eval_json(assignments, views, info, hooks)

    cache_root = default_cache_root(image_folder, ((sidecar or {}).get("embed") or {}).get("cache_dir"))
    thumb_cache = ThumbCache(cache_root / "thumbs" / str(THUMB_PX) if image_folder.is_dir() else None)
    wanted = [i for v in views for i in (*v.typical, *v.least)] + plan.outliers
    paths = list(dict.fromkeys(image_folder / rows[i].path for i in wanted))
    thumbs = make_thumbnails(paths, thumb_cache, hooks)
    if thumb_cache.write_problem:
        hooks.on_warning(thumb_cache.write_problem)

    text, page = render_html(rows, plan, image_folder, thumbs, info, max_bytes)
    atomic_write_text(out, text)
    problems = Counter(t.problem for t in thumbs.values() if t.data is None)
    if problems:
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


def _apply_eval_json(csv_path: Path, views: list[ClusterView], info: dict[str, Any], hooks: ReportHooks) -> None:
    """Majority labels and scores from ``<csv>.eval.json`` (the output of ``evaluate --json``), if present."""
    path = csv_path.with_name(csv_path.name + ".eval.json")
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        per = {int(p["cluster"]): (str(p["majority_label"]), float(p["purity"])) for p in data.get("per_cluster", [])}
        info["scores"] = [
            (name.upper() if name != "purity" else name, float(data[name])) for name in ("acc", "nmi", "ari", "purity") if name in data
        ]
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        hooks.on_warning(f"ignored {path}: {exc}")
        return
    for v in views:
        v.majority = per.get(v.cluster)
