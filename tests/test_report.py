"""The HTML report: what it shows, how big it may grow, and how it fails."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from imagefolders import CLASSES, copy_sample
from PIL import Image
from typer.testing import CliRunner

from imgcluster.cache import default_cache_root
from imgcluster.cli import app
from imgcluster.config import sidecar_path
from imgcluster.listing import list_images
from imgcluster.report import MAX_BYTES, MAX_IMAGES, THUMB_PX, Row, plan_clusters, write_report
from imgcluster.report.thumbnails import ThumbCache

runner = CliRunner()
FAST = ["--model", "efficientnet-lite0", "--clusters", "3", "--workers", "0"]
ODD_NAME = "<b>&x.png"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@dataclass
class Clustered:
    folder: Path
    csv: Path
    cache: Path
    rows: list[dict[str, str]]
    stderr: str
    exit_code: int


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Clustered:
    """One real `assign --report` run that the tests below read and re-report.

    No row is flagged (confidence floor 0; clusters under 10 images get no distance test), so
    every image appears once; ``test_outlier_column`` flags rows itself.
    """
    root = tmp_path_factory.mktemp("report")
    folder = copy_sample(root / "photos", CLASSES[:3], per_class=8)
    shutil.copy2(sorted((folder / CLASSES[0]).iterdir())[0], folder / ODD_NAME)
    out = root / "out" / "clusters.csv"
    result = invoke("assign", folder, "--out", out, "--report", "--min-confidence", "0", "--cache-dir", shared_cache, *FAST)
    rows = list(csv.DictReader(out.open(encoding="utf-8"))) if out.is_file() else []
    return Clustered(folder, out, default_cache_root(folder, str(shared_cache)), rows, result.stderr, result.exit_code)


def copy_csv(clustered: Clustered, dest: Path, rows: list[dict[str, str]] | None = None) -> Path:
    """The CSV (optionally with other rows) and its sidecar, in another folder."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / clustered.csv.name
    rows = rows if rows is not None else clustered.rows
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), quoting=csv.QUOTE_NONNUMERIC)
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy2(sidecar_path(clustered.csv), sidecar_path(target))
    return target


def sections(page: str) -> set[str]:
    return set(re.findall(r'<section class="card cluster" id="(cluster-\d+)"', page))


def test_assign_report_shows_every_cluster_and_image(clustered: Clustered) -> None:
    assert clustered.exit_code == 0, clustered.stderr
    page_path = clustered.csv.with_suffix(".html")
    assert f"report written to {page_path} (3 clusters, 25 of 25 images shown" in clustered.stderr
    page = page_path.read_text(encoding="utf-8")
    assert sections(page) == {f"cluster-{r['cluster']}" for r in clustered.rows}
    assert page.count("<img ") == len(clustered.rows) == 25  # small clusters: every image, once
    for row in clustered.rows:
        assert f'alt="{html.escape(row["path"])}"' in page
    assert "&lt;b&gt;&amp;x.png" in page and ODD_NAME not in page  # the file name is text, never markup
    assert "closest to the cluster centre in the cached features" in page
    assert "default-src 'none'" in page and not re.search(r"(src|href)=\"(https?:|//)", page)  # no network
    assert page.count('src="data:image/') == 25


def test_report_command_with_labels_and_montage(clustered: Clustered, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    stale = tmp_path / "clusters-montage" / "cluster-99.png"
    stale.parent.mkdir()
    stale.write_bytes(b"left by an earlier run with more clusters")
    result = invoke("report", clustered.csv, "--out", out, "--labels", clustered.folder, "--montage")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and f"report written to {out}" in result.stderr
    assert f"3 montages in {tmp_path / 'clusters-montage'}" in result.stderr
    page = out.read_text(encoding="utf-8")
    assert "ACC <b>" in page and "purity <b>" in page
    mixes = re.findall(r'<div class="mix">.*?<p>(.*?)</p>', page)
    assert len(mixes) == 3 and all(re.search(r"\(\d+%\)", m) for m in mixes)
    assert all(any(c in m for m in mixes) for c in CLASSES[:3])
    assert not stale.exists()
    assert list_images(tmp_path) == []  # the montage folder is marked as output, not photos
    for k in {r["cluster"] for r in clustered.rows}:
        with Image.open(tmp_path / "clusters-montage" / f"cluster-{k}.png") as im:
            assert im.format == "PNG" and im.width >= THUMB_PX and im.height >= THUMB_PX


def test_typical_means_nearest_the_centre_else_most_confident() -> None:
    rows = [Row("a.png", 0, 0.40, False), Row("b.png", 0, 0.90, False), Row("c.png", 0, 0.95, False), Row("d.png", 0, 0.99, False)]
    feats = {"a.png": np.array([1.0, 0.0]), "b.png": np.array([1.0, 0.1]), "c.png": np.array([1.0, -0.1]), "d.png": np.array([-1.0, 0])}
    views = plan_clusters(rows, feats, per_cluster=3, max_images=100).views
    assert [rows[i].path for i in views[0].typical] == ["a.png", "b.png", "c.png"]  # a sits on the centre despite its low confidence
    assert [rows[i].path for i in views[0].least] == ["d.png"]
    views = plan_clusters(rows, None, per_cluster=3, max_images=100).views
    assert [rows[i].path for i in views[0].typical] == ["d.png", "c.png", "b.png"]
    assert [rows[i].path for i in views[0].least] == ["a.png"]


def test_every_name_in_the_page_is_escaped() -> None:
    from imgcluster.report.page import render_html

    rows = [Row("<img src=x onerror=alert(1)>.png", 0, 0.5, True), Row("b.png", 1, 0.5, False)]
    plan = plan_clusters(rows, None, per_cluster=3, max_images=100)
    plan.views[0].mix = [("<script>label</script>", 1)]
    plan.views[1].majority = ('"><b>major</b>', 1.0)
    info = {"csv_name": "<i>c</i>.csv", "facts": [("model", "<u>m</u>")], "policy": "p", "version": "1", "created": "now"}
    text, _ = render_html(rows, plan, Path("<em>folder</em>"), {}, info, max_bytes=1_000_000)
    for raw in ("<script>", "<img src=x", "<b>major", "<i>c</i>", "<u>m", "<em>folder"):
        assert raw not in text
    assert "&lt;script&gt;label&lt;/script&gt;" in text and "&quot;&gt;&lt;b&gt;major" in text


def test_size_policy_caps_images_for_a_large_folder() -> None:
    rng = np.random.default_rng(0)
    clusters = rng.choice(40, size=10_000, p=np.arange(1, 41) / np.arange(1, 41).sum())
    rows = [Row(f"img{i:05d}.jpg", int(k), float(rng.random()), i % 97 == 0) for i, k in enumerate(clusters)]
    plan = plan_clusters(rows, None, per_cluster=48, max_images=MAX_IMAGES)
    views, outliers = plan.views, plan.outliers
    shown = sum(len(v.typical) + len(v.least) for v in views) + len(outliers)
    assert shown <= MAX_IMAGES and len(views) == 40 and plan.typical < 48 and plan.least == plan.typical // 3
    assert [v.size for v in views] == sorted((v.size for v in views), reverse=True)  # largest first
    for v in views:
        assert len(v.typical) == min(plan.typical, v.size) and len(v.least) == min(plan.least, v.size - len(v.typical))
        assert not set(v.typical) & set(v.least)
        confidences = [rows[i].confidence for i in v.least]
        assert confidences == sorted(confidences)
    assert 0 < len(outliers) <= plan.typical
    few = plan_clusters(rows, None, per_cluster=48, max_images=10).views  # more clusters than the cap: later clusters get none
    assert sum(len(v.typical) + len(v.least) for v in few) <= 10


@pytest.mark.slow
def test_the_size_cap_holds_for_any_number_of_clusters(tmp_path: Path) -> None:
    """200,000 one-image clusters made a 98.6 MB page: every cluster had a section, with or without images."""
    n = 200_000
    csv_path = tmp_path / "many.csv"
    csv_path.write_text('"path","cluster","confidence"\n' + "".join(f'"img{i:06d}.png",{i},0.9\n' for i in range(n)))
    (tmp_path / "photos").mkdir()
    made = write_report(csv_path, folder=tmp_path / "photos")
    page = made.html.read_text(encoding="utf-8")
    assert made.bytes == made.html.stat().st_size <= MAX_BYTES and made.clusters == n
    assert len(sections(page)) == MAX_IMAGES and page.count('<a class="row"') == MAX_IMAGES
    assert f"{n - MAX_IMAGES} more clusters ({n - MAX_IMAGES} images) have no section" in page


def test_long_names_cannot_break_the_size_cap(clustered: Clustered, tmp_path: Path) -> None:
    """Markup counts too: sections that would not fit are left out, and the page keeps its limit."""
    rows = [{**r, "path": f"{'&' * 20_000}{i}.png", "cluster": str(i)} for i, r in enumerate(clustered.rows)]
    target = copy_csv(clustered, tmp_path, rows)
    made = write_report(target, max_bytes=1_000_000)
    page = made.html.read_text(encoding="utf-8")
    assert made.bytes <= 1_000_000 and 0 < len(sections(page)) < 25 and "more clusters (" in page


def test_per_cluster_option_and_byte_budget(clustered: Clustered, tmp_path: Path) -> None:
    small = tmp_path / "small.html"
    result = invoke("report", clustered.csv, "--out", small, "--per-cluster", "3")
    assert result.exit_code == 0, result.stderr
    page = small.read_text(encoding="utf-8")
    sizes = [int(n) for n in re.findall(r'data-size="(\d+)"', page)]
    assert page.count("<img ") == sum(min(n, 3 + 1) for n in sizes)  # 3 typical + 1 least confident each
    assert page.count("Least confident (1)") == 3 and "more images not shown" in page
    full = write_report(clustered.csv, out=tmp_path / "full.html").bytes
    budget = tmp_path / "budget.html"
    made = write_report(clustered.csv, out=budget, max_bytes=full - 5_000)
    assert made.omitted > 0 and made.shown > 0 and made.shown + made.omitted == 25
    assert budget.stat().st_size <= full - 5_000
    page = budget.read_text(encoding="utf-8")
    assert page.count("left out (size limit)") == made.omitted and page.rindex("<img ") < page.index("left out (size limit)")


def test_missing_images_are_placeholders(clustered: Clustered, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(clustered.folder, moved)
    gone = [clustered.rows[0]["path"], clustered.rows[5]["path"]]
    for rel in gone:
        (moved / rel).unlink()
    result = invoke("report", clustered.csv, "--folder", moved, "--out", tmp_path / "r.html")
    assert result.exit_code == 0, result.stderr
    assert "2 image file(s) missing and 0 unreadable" in result.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<img ") == 23 and page.count(">file missing</div>") == 2
    sidecar = json.loads(sidecar_path(clustered.csv).read_text())
    sidecar["assign"]["folder"] = sidecar["embed"]["folder"] = str(tmp_path / "nowhere")
    target = copy_csv(clustered, tmp_path / "lost")
    sidecar_path(target).write_text(json.dumps(sidecar))
    lost = invoke("report", target)
    assert lost.exit_code == 0 and "not found; every image is shown as a placeholder" in lost.stderr
    assert "<img " not in target.with_suffix(".html").read_text(encoding="utf-8")


def test_outlier_column(clustered: Clustered, tmp_path: Path) -> None:
    flags = {0: "1", 3: "True", 7: "1.0"}
    rows = [{**r, "outlier": flags.get(i, "0" if i % 2 else "False")} for i, r in enumerate(clustered.rows)]
    target = copy_csv(clustered, tmp_path, rows)
    result = invoke("report", target)
    assert result.exit_code == 0, result.stderr
    page = target.with_suffix(".html").read_text(encoding="utf-8")
    outliers = page.split('id="outliers"', 1)[1]
    assert outliers.count("<img ") == 3 and "3 flagged" in outliers
    assert page.count("<img ") == 28 and "25 of 25 images shown" in result.stderr  # images are counted once
    assert {html.escape(clustered.rows[i]["path"]) for i in flags} <= set(re.findall(r'alt="([^"]*)"', outliers))


def test_a_cluster_named_differently_on_some_rows_is_headed_by_its_most_common_name() -> None:
    rows = [Row(f"{i}.png", 0, 0.5, False, name) for i, name in enumerate(["", "boot", "boot", "shoe"])]
    assert [v.name for v in plan_clusters(rows, None, 8, 100).views] == ["boot"]  # was the first row's: none


def test_the_outliers_section_says_why_each_image_is_one(clustered: Clustered, tmp_path: Path) -> None:
    """The CSV's outlier_reason (far-from-centre, isolated, both) is in each outlier's caption and tooltip."""
    reasons = {0: "isolated", 1: "far-from-centre+isolated", 2: "<b>x"}  # a hostile CSV's reason is escaped
    rows = [{**r, "outlier": "1" if i in reasons else "0", "outlier_reason": reasons.get(i, "")} for i, r in enumerate(clustered.rows)]
    target = copy_csv(clustered, tmp_path, rows)
    result = invoke("report", target)
    assert result.exit_code == 0, result.stderr
    page = target.with_suffix(".html").read_text(encoding="utf-8")
    outliers = page.split('id="outliers"', 1)[1]
    for i, reason in reasons.items():
        row = clustered.rows[i]
        assert f"<b>cluster {row['cluster']} · {html.escape(reason)} · " in outliers
        assert html.escape(f"{row['path']}\ncluster {row['cluster']}, confidence") in outliers
        assert html.escape(f"\noutlier: {reason}") in outliers
    assert "<b>x" not in page.replace("<b>cluster", "")
    clusters = page.split('id="outliers"', 1)[0]
    assert "isolated" not in clusters  # a cluster's own section shows no reasons


def test_the_report_says_how_many_outliers_it_shows(clustered: Clustered, tmp_path: Path) -> None:
    """Outliers are capped like a cluster's images: the page and the CLI say "N of M shown" (74 flagged, 48 shown on real photos)."""
    rows = [{**r, "outlier": "1" if i < 7 else "0"} for i, r in enumerate(clustered.rows)]
    target = copy_csv(clustered, tmp_path, rows)
    result = invoke("report", target, "--per-cluster", "4")
    assert result.exit_code == 0, result.stderr
    assert "4 of 7 outliers shown" in result.stderr
    page = target.with_suffix(".html").read_text(encoding="utf-8")
    outliers = page.split('id="outliers"', 1)[1]
    assert "7 flagged · 4 of 7 shown, least confident first" in outliers and outliers.count("<figure>") == 4
    assert "7 outliers</a> flagged in the CSV (4 of them shown)." in page
    made = write_report(target, out=tmp_path / "all.html")  # room for all: no "of" anywhere
    page = made.html.read_text(encoding="utf-8")
    assert (made.outliers, made.outliers_shown) == (7, 7) and "7 flagged · least confident first" in page and " of 7" not in page
    none = write_report(target, out=tmp_path / "none.html", max_images=1)  # the cap is spent before the outliers
    assert (none.outliers, none.outliers_shown) == (7, 0)
    assert "7 outliers flagged in the CSV; none shown, to keep the page small." in none.html.read_text(encoding="utf-8")


def test_evaluation_json_adds_majority_labels(clustered: Clustered, tmp_path: Path) -> None:
    target = copy_csv(clustered, tmp_path)
    scores = invoke("evaluate", target, clustered.folder, "--json", "--quiet")
    assert scores.exit_code == 0, scores.stderr
    target.with_name(target.name + ".eval.json").write_text(scores.stdout)
    result = invoke("report", target, "--quiet")
    assert result.exit_code == 0 and result.stderr == ""
    page = target.with_suffix(".html").read_text(encoding="utf-8")
    assert len(re.findall(r"mostly [\w-]+ \(purity \d\.\d\d\)", page)) == 3
    assert f"ACC <b>{json.loads(scores.stdout)['acc']:.3f}</b>" in page


def test_thumbnails_are_made_once(clustered: Clustered, tmp_path: Path) -> None:
    thumbs = clustered.cache / "thumbs" / str(THUMB_PX)
    files = {p: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    assert len(files) >= 25
    made = write_report(clustered.csv, out=tmp_path / "again.html")
    assert made.shown == 25 and made.typical_by == "features"
    assert {p: p.stat().st_mtime_ns for p in thumbs.iterdir()} == files  # nothing re-made
    umask = os.umask(0o022)
    os.umask(umask)
    # mkstemp's 0600 kept them from any other user of a shared cache; they get a new file's mode, as every file written
    assert {p.stat().st_mode & 0o777 for p in thumbs.iterdir()} == {0o666 & ~umask}


def test_rows_outside_the_folder_are_refused(clustered: Clustered, tmp_path: Path) -> None:
    """A received CSV must not make the report read files elsewhere: `..`, absolute paths and links out are refused."""
    folder = tmp_path / "photos"
    shutil.copytree(clustered.folder, folder)
    secret = tmp_path / "secret" / "secret.png"
    secret.parent.mkdir()
    shutil.copy2(folder / clustered.rows[0]["path"], secret)
    (folder / "link.png").symlink_to(secret)
    extra = [{**clustered.rows[0], "path": p, "cluster": "0"} for p in ("../secret/secret.png", str(secret), "link.png")]
    target = copy_csv(clustered, tmp_path / "received", clustered.rows + extra)
    result = invoke("report", target, "--folder", folder)
    assert result.exit_code == 0, result.stderr
    assert "3 row(s) name a file outside the image folder" in result.stderr and "not opened, shown as placeholders" in result.stderr
    page = target.with_suffix(".html").read_text(encoding="utf-8")
    assert page.count("<img ") == 25 and page.count(">outside the folder</div>") == 3
    followed = invoke("report", target, "--folder", folder, "--follow-symlinks")  # as the scan: links only with the flag
    assert followed.exit_code == 0 and "2 row(s) name a file outside" in followed.stderr
    assert target.with_suffix(".html").read_text(encoding="utf-8").count("<img ") == 26


def test_a_cache_named_only_by_a_sidecar_is_never_created(clustered: Clustered, tmp_path: Path) -> None:
    sidecar = json.loads(sidecar_path(clustered.csv).read_text())
    sidecar["embed"]["cache_dir"] = str(tmp_path / "elsewhere")
    target = copy_csv(clustered, tmp_path / "received")
    sidecar_path(target).write_text(json.dumps(sidecar))
    result = invoke("report", target)
    assert result.exit_code == 0, result.stderr
    assert target.with_suffix(".html").read_text(encoding="utf-8").count("<img ") == 25  # made in memory
    assert not (tmp_path / "elsewhere").exists()


def small_csv(tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A folder of 4 real images (no feature cache) and a CSV naming them and ``extra`` rows."""
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    names = [f.rel for f in list_images(folder)] + list(extra)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('"path","cluster","confidence"\n' + "".join(f'"{n}",{i % 2},0.9\n' for i, n in enumerate(names)))
    return folder, csv_path


def test_a_named_pipe_in_the_csv_does_not_hang_the_report(tmp_path: Path) -> None:
    """Opening a FIFO blocks until someone writes to it: thumbnails, like embedding, open regular files only."""
    folder, csv_path = small_csv(tmp_path, ("pipe.png",))
    os.mkfifo(folder / "pipe.png")
    run = subprocess.run(
        [sys.executable, "-m", "imgcluster", "report", str(csv_path), "--folder", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "0 image file(s) missing and 1 unreadable" in run.stderr
    assert csv_path.with_suffix(".html").read_text(encoding="utf-8").count("<img ") == 4


def test_thumbnails_have_the_decode_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, csv_path = small_csv(tmp_path)

    def endless(self: ThumbCache, path: Path) -> bytes:
        time.sleep(30)
        return b"too late"

    monkeypatch.setattr(ThumbCache, "_make", endless)
    monkeypatch.setenv("IMGCLUSTER_DECODE_TIMEOUT", "0.2")
    made = write_report(csv_path, folder=folder)
    assert made.shown == 0 and made.placeholders == 4


STOPPED_IN_THUMBNAILS = """
import pathlib, sys, time
from imgcluster.report.thumbnails import ThumbCache

marker = pathlib.Path(sys.argv[1])

def stuck(self, path):
    marker.touch()
    time.sleep(60)

ThumbCache._make = stuck
sys.argv = ["imgcluster", *sys.argv[2:]]
from imgcluster.cli import main
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_report_ends_at_once_with_its_own_message(tmp_path: Path, signum: int) -> None:
    """The first signal ends it (it used to wait for every queued thumbnail), and the line is about the report."""
    folder, csv_path = small_csv(tmp_path)
    marker = tmp_path / "decoding"
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_IN_THUMBNAILS, str(marker), "report", str(csv_path), "--folder", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == -signum  # ends by the signal, as every command does
    out = csv_path.with_suffix(".html")
    assert stderr.strip().splitlines()[-1] == f"error: interrupted while making the report: {out} was not written"
    assert "cache" not in stderr and not out.exists()


def test_report_finds_the_features_of_a_gpu_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA run keys its cache with bfloat16 compute; the report looked under float32 and fell back to confidence."""
    import imgcluster.pipeline

    monkeypatch.setattr(imgcluster.pipeline, "compute_precision", lambda device: "bfloat16")  # what CUDA gives
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=5)
    out = tmp_path / "gpu.csv"
    result = invoke("assign", folder, "--out", out, "--cache-dir", tmp_path / "cache", "--epochs", "1", *FAST)
    assert result.exit_code == 0, result.stderr
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["compute"] == "bfloat16"
    assert write_report(out, out=tmp_path / "r.html").typical_by == "features"
    del sidecar["compute"]  # a sidecar written before the field existed
    sidecar_path(out).write_text(json.dumps(sidecar))
    assert write_report(out, out=tmp_path / "r.html").typical_by == "features"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("report", "{tmp}/missing.csv"), 2, "assignments file not found"),
        (("report", "{tmp}/nosidecar.csv"), 1, "saying where its images are; give the folder with --folder"),
        (("report", "{tmp}/bad.csv", "--folder", "{tmp}"), 1, "missing column(s) cluster"),
        (("report", "{csv}", "--folder", "{tmp}/nowhere"), 2, "image folder not found"),
        (("report", "{csv}", "--labels", "{tmp}/nowhere"), 2, "labelled folder not found"),
        (("assign", "{tmp}", "--out", "-", "--report"), 2, "--report needs --out FILE"),
    ],
)
def test_mistakes_are_one_line_errors(clustered: Clustered, tmp_path: Path, args: tuple, code: int, message: str) -> None:
    shutil.copy2(clustered.csv, tmp_path / "nosidecar.csv")
    (tmp_path / "bad.csv").write_text('"path","label"\n"a.png","x"\n')
    result = invoke(*(a.format(tmp=tmp_path, csv=clustered.csv) for a in args))
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1 and len(result.stderr.strip().splitlines()) == 1


def test_help_has_examples() -> None:
    result = invoke("report", "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout and "imgcluster report" in result.stdout
    assert "--report" in invoke("assign", "--help").stdout


def test_cluster_names_are_in_the_headings(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    names = ["sandal, running shoe", "sandal, running shoe", "<i>bag</i>", "<i>bag</i>"]
    csv_path = tmp_path / "named.csv"
    lines = [f'"{p}",{i // 2},"{n}"\n' for i, (p, n) in enumerate(zip(paths, names))]
    csv_path.write_text('"path","cluster","cluster_name"\n' + "".join(lines))
    page = write_report(csv_path, folder=folder).html.read_text(encoding="utf-8")
    assert "<h2>Cluster 0: sandal, running shoe</h2>" in page and "<h2>Cluster 1: &lt;i&gt;bag&lt;/i&gt;</h2>" in page


def test_the_scores_of_a_csv_that_leaves_labelled_images_out_say_so(tmp_path: Path) -> None:
    """The report showed ACC 1.000 for a CSV of 1 of 4 labelled images, from --labels or from the saved JSON."""
    from imgcluster import write_report

    folder = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    first = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))[0]
    csv_path = tmp_path / "few.csv"
    csv_path.write_text(f'"path","cluster"\n"{first}",0\n')
    page = write_report(csv_path, tmp_path / "a.html", labels=folder, folder=folder).html.read_text()
    assert "ACC <b>1.000</b>" in page and "coverage <b>0.250</b>" in page and "ACC, missing = wrong <b>0.250</b>" in page
    scores = invoke("evaluate", csv_path, folder, "--json", "--quiet").stdout
    csv_path.with_name("few.csv.eval.json").write_text(scores)
    page = write_report(csv_path, tmp_path / "b.html", folder=folder).html.read_text()
    assert "coverage <b>0.250</b>" in page and "ACC, missing = wrong <b>0.250</b>" in page


@pytest.mark.parametrize("per_cluster", [0, "8", 2.5, True])
def test_per_cluster_that_is_not_a_whole_number_is_refused_by_name(tmp_path: Path, per_cluster: object) -> None:
    """From Python, "8" failed in a comparison (TypeError) and 2.5 got as far as slicing the clusters."""
    from imgcluster.errors import ParameterError

    with pytest.raises(ParameterError, match=re.escape(f"per_cluster must be a whole number of at least 1, got {per_cluster!r}")) as info:
        write_report(tmp_path / "clusters.csv", per_cluster=per_cluster)  # type: ignore[arg-type]
    assert info.value.parameters == ("per_cluster",)
