"""See the clusters: one self-contained HTML page (and optional PNG contact sheets) from a CSV.

One job per module: :mod:`.sidecar` (where the images and features are), :mod:`.layout` (which
images to show), :mod:`.thumbnails`, :mod:`.page` (the HTML), :mod:`.montage` (PNG sheets) and
:mod:`.writer` (:func:`write_report`, which puts them together).
"""

from imgcluster.csvfile import Row
from imgcluster.report.layout import MAX_IMAGES, plan_clusters
from imgcluster.report.page import MAX_BYTES
from imgcluster.report.thumbnails import THUMB_PX
from imgcluster.report.writer import ReportHooks, ReportResult, default_report_path, write_report

__all__ = [
    "MAX_BYTES",
    "MAX_IMAGES",
    "THUMB_PX",
    "ReportHooks",
    "ReportResult",
    "Row",
    "default_report_path",
    "plan_clusters",
    "write_report",
]
