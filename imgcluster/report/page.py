"""The report page: one self-contained HTML string that stays under a byte budget.

Thumbnails are embedded as data URIs, there is no script, and a Content-Security-Policy forbids
every network request. Every name that came from a file or a folder is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from pathlib import Path
from typing import Any

from imgcluster.csvfile import Row
from imgcluster.report.layout import ClusterView, Plan
from imgcluster.report.thumbnails import PROBLEMS, Thumb

MAX_BYTES = 28_000_000  # the page never grows past this (the promise is < 30 MB)
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
OTHER_COLOUR = "#d0d0d0"

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
    exactly; then images replace placeholders until the next one would not fit. A block that
    would take the markup past its budget is taken back (:meth:`mark`, :meth:`rollback`).
    """

    def __init__(self, thumbs: dict[Path, Thumb]) -> None:
        self.parts: list[str] = []
        self.size = 0  # bytes of markup in ``parts``
        self.thumbs = thumbs
        self.images: list[tuple[int, str, str]] = []  # (index in parts, the <figure> with its image, row path)
        self.problems: list[int] = []  # indices in parts of placeholders for files gone or unreadable
        self.shown = self.placeholders = self.omitted = 0  # distinct images: an outlier is also in its cluster
        self.outliers_shown = self.outliers_flagged = 0  # the outliers section's figures, and the rows the CSV flags

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text.encode("utf-8"))

    def mark(self) -> int:
        return len(self.parts)

    def rollback(self, mark: int) -> None:
        """Take back everything added since ``mark``."""
        self.size -= sum(len(part.encode("utf-8")) for part in self.parts[mark:])
        del self.parts[mark:]
        self.images = [image for image in self.images if image[0] < mark]
        self.problems = [index for index in self.problems if index < mark]

    def figure(self, row: Row, path: Path, show_cluster: bool = False) -> None:
        name = html.escape(row.path)
        conf = "–" if math.isnan(row.confidence) else f"{row.confidence:.2f}"
        why = f" · {row.reason}" if show_cluster and row.reason else ""  # the outliers section says why each is one
        label = f"cluster {row.cluster}{why} · " if show_cluster else ""
        tip = html.escape(f"{row.path}\ncluster {row.cluster}, confidence {conf}" + (f"\noutlier: {row.reason}" if why else ""))
        short = html.escape(row.path.rsplit("/", 1)[-1])  # the full path is in the tooltip
        caption = f'<figcaption title="{tip}"><b>{html.escape(label)}{conf}</b> {short}</figcaption>'
        thumb = self.thumbs.get(path, Thumb(None, problem="missing"))
        if thumb.data is None:
            self.problems.append(len(self.parts))
            problem = PROBLEMS.get(thumb.problem, "unreadable")
        else:
            uri = f"data:{thumb.mime};base64,{base64.b64encode(thumb.data).decode('ascii')}"
            block = f'<figure><div class="box"><img src="{uri}" alt="{name}" title="{tip}" decoding="async"></div>{caption}</figure>'
            self.images.append((len(self.parts), block, row.path))
            problem = "left out (size limit)"
        self.add(f'<figure><div class="box ph" title="{tip}">{problem}</div>{caption}</figure>')

    def finish(self, max_bytes: int) -> str:
        size = self.size
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
        self.placeholders = len(self.problems)
        return "".join(self.parts)


def _mix_bar(mix: list[tuple[str, int]], colours: dict[str, str]) -> str:
    """One segment per label that has a colour and one for all the others, so its size stays bounded."""
    total = sum(n for _, n in mix) or 1
    others = sum(n for label, n in mix if label not in colours)
    named = [(html.escape(label), n, colours[label]) for label, n in mix if label in colours]
    segments = "".join(
        f'<i style="width:{100 * n / total:.3f}%;background:{colour}" title="{label}: {n}"></i>'
        for label, n, colour in [*named, *([("other", others, OTHER_COLOUR)] if others else [])]
    )
    return f'<span class="bar">{segments}</span>'


def _clip(text: str, limit: int = 300) -> str:
    """A name from a sidecar or an evaluation JSON, shortened: those files may come from anyone."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_html(
    rows: list[Row],
    plan: Plan,
    folder: Path,
    thumbs: dict[Path, Thumb],
    info: dict[str, Any],
    max_bytes: int,
) -> tuple[str, _Page]:
    """The whole page as one string, at most ``max_bytes``; every name that came from a file is escaped.

    Only clusters the plan gives images to (its thumbnail cap bounds them) get a section and a bar, largest
    first, while the markup without thumbnails fits; the others are counted in one line (200,000
    one-image clusters made a 98.6 MB page). Thumbnails then fill what is left, in page order.
    """
    esc = html.escape
    views, outliers = plan.views, plan.outliers
    page = _Page(thumbs)
    colours = _label_colours(views)
    title = f"imgcluster report: {_clip(info['csv_name'])}"
    page.add(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
    )
    page.add(f"<header><h1>{esc(title)}</h1>")
    page.add(
        f'<p class="meta"><b>{len(rows)}</b> images in <b>{len(views)}</b> clusters · folder <b>{esc(_clip(str(folder), 4096))}</b>'
        + "".join(f" · {esc(k)} <b>{esc(_clip(str(v)))}</b>" for k, v in info["facts"])
        + "</p>"
    )
    if info.get("scores"):
        page.add('<p class="meta">' + " · ".join(f"{esc(k)} <b>{v:.3f}</b>" for k, v in info["scores"]) + "</p>")
    page.add(f'<p class="meta">{esc(info["policy"])}</p></header>')
    overview = page.mark()
    page.add("")  # the overview, filled in once the sections that fit are known
    tail = f"<footer>Made by imgcluster {esc(info['version'])} from {esc(_clip(info['csv_name']))} on {esc(info['created'])}.</footer>"
    tail += "</body></html>\n"
    legend = ""
    if colours:
        legend = '<div class="legend">' + "".join(f'<span style="--c:{c}">{esc(label)}</span>' for label, c in colours.items())
        legend += f'<span style="--c:{OTHER_COLOUR}">other</span></div>' if _has_other(views, colours) else "</div>"
    budget = max_bytes - len(tail.encode("utf-8")) - len(legend.encode("utf-8")) - _OVERVIEW_RESERVE

    largest = max(v.size for v in views)
    bars: list[str] = []
    bars_size = 0
    left_out = [v for v in views if not (v.typical or v.least)]  # the image cap ran out before them
    for v in views:
        if not (v.typical or v.least):
            continue
        width = 100 * v.size / largest
        bar = _mix_bar(v.mix, colours) if v.mix else '<span class="bar"></span>'
        row_html = (
            f'<a class="row" href="#cluster-{v.cluster}"><span>cluster {v.cluster}</span>'
            f'<span class="track" style="width:{width:.2f}%">{bar}</span><span class="num">{v.size}</span></a>'
        )
        row_size = len(row_html.encode("utf-8"))
        mark = page.mark()
        _section(page, v, rows, folder, colours)
        if page.size + bars_size + row_size > budget:
            page.rollback(mark)
            left_out.append(v)
            continue
        bars.append(row_html)
        bars_size += row_size

    flagged = sum(r.outlier for r in rows)
    if outliers:
        mark = page.mark()
        shown = f"{len(outliers)} of {flagged} shown, " if len(outliers) < flagged else ""
        page.add(
            f'<section class="card outliers" id="outliers"><div class="head"><h2>Outliers</h2>'
            f'<span class="stats">{flagged} flagged · {shown}least confident first</span></div><div class="grid" style="margin-top:10px">'
        )
        for i in outliers:
            page.figure(rows[i], folder / rows[i].path, show_cluster=True)
        page.add("</div></section>")
        if page.size + bars_size > budget:
            page.rollback(mark)
            outliers = []
    page.outliers_shown, page.outliers_flagged = len(outliers), flagged
    page.add(tail)

    head = f'<section class="card overview" id="overview"><h2>Cluster sizes</h2><div class="bars{" many" if len(bars) > 12 else ""}">'
    parts = [head, *bars, "</div>"]
    if left_out:
        images = sum(v.size for v in left_out)
        parts.append(
            f'<p class="note">{len(left_out)} more clusters ({images} images) have no section, to keep the page small; '
            "the CSV lists them all.</p>"
        )
    parts.append(legend)
    if outliers:
        shown = f" ({len(outliers)} of them shown)" if len(outliers) < flagged else ""
        parts.append(f'<p class="note"><a href="#outliers">{flagged} outliers</a> flagged in the CSV{shown}.</p>')
    elif flagged:
        parts.append(f'<p class="note">{flagged} outliers flagged in the CSV; none shown, to keep the page small.</p>')
    parts.append("</section>")
    page.parts[overview] = "".join(parts)
    page.size += len(page.parts[overview].encode("utf-8"))
    return page.finish(max_bytes), page


# Room kept for the overview's heading and its notes (clusters without a section, outliers).
_OVERVIEW_RESERVE = 600


def _section(page: _Page, v: ClusterView, rows: list[Row], folder: Path, colours: dict[str, str]) -> None:
    esc = html.escape
    conf = "–" if math.isnan(v.mean_confidence) else f"{v.mean_confidence:.3f}"
    name = f": {esc(_clip(v.name))}" if v.name else ""  # from the CSV's cluster_name column
    page.add(
        f'<section class="card cluster" id="cluster-{v.cluster}" data-cluster="{v.cluster}" data-size="{v.size}">'
        f'<div class="head"><h2>Cluster {v.cluster}{name}</h2><span class="stats">{v.size} images · mean confidence {conf}</span></div>'
    )
    if v.mix:
        total = sum(n for _, n in v.mix)
        text = " · ".join(f"{esc(label)} {n} ({100 * n / total:.0f}%)" for label, n in v.mix[:6])
        more = f" · {len(v.mix) - 6} more" if len(v.mix) > 6 else ""
        page.add(f'<div class="mix">{_mix_bar(v.mix, colours)}<p>{text}{more}</p></div>')
    elif v.majority:
        page.add(f'<div class="mix"><p>mostly {esc(_clip(v.majority[0]))} (purity {v.majority[1]:.2f})</p></div>')
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


def _label_colours(views: list[ClusterView]) -> dict[str, str]:
    totals: Counter[str] = Counter()
    for v in views:
        for label, n in v.mix or []:
            totals[label] += n
    return {label: PALETTE[i] for i, (label, _) in enumerate(totals.most_common(len(PALETTE)))}


def _has_other(views: list[ClusterView], colours: dict[str, str]) -> bool:
    return any(label not in colours for v in views for label, _ in v.mix or [])
