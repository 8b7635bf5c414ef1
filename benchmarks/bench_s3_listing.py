"""A flat s3:// prefix: what pyarrow's whole-level listing holds against S3's pages (boto3), on a local moto server.

    python benchmarks/bench_s3_listing.py [--objects 30000]

Starts ``moto_server`` (``moto[server]``) on 127.0.0.1 in its own process, puts ``--objects``
empty ``.jpg`` objects in one prefix (kept between runs in the server's life only), then measures
in a child process each: *pyarrow level* = one non-recursive ``FileSelector`` listing of the
prefix held as the list pyarrow returns (what listed a level before); *pages* =
``imgcluster.scale.s3_pages.entries`` counted a page at a time (what the driver's first look and
the listing tasks do now). Memory: the child's peak resident memory while it lists (VmHWM, reset
just before) over its resident memory just before. Writes ``benchmarks/results_s3_listing.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PREFIX = "photos/flat-listing-benchmark"
READING = (
    "Reading: pyarrow's level is held whole, in proportion to the objects (the FileInfo objects and the parsed "
    "responses); S3's pages hold one page (1,000 keys) at a time, so the listing process's growth is boto3's fixed "
    "cost (its service model, one page), the same 3.7-3.8 MB at 2,000 objects (a trial run of this script) as at "
    "40,000: bytes/object does not apply to it. The seconds are moto's on a loaded machine (each page is a request "
    "to it), comparable between the two; against a real S3 both make the same 1,000-key requests."
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(endpoint: str) -> dict[str, str]:
    return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}  # fmt: skip


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def part(name: str) -> dict[str, Any]:
    """One measurement, in this (child) process."""
    import pyarrow.fs as pafs

    from imgcluster.featurestore import resolve
    from imgcluster.scale import s3_pages

    fs, root = resolve(f"s3://{PREFIX}")
    client = s3_pages.client(fs)  # built before the measurement: both parts start with their client ready
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status("VmRSS")
    start = time.perf_counter()
    if name == "pyarrow":
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
        count = sum(1 for i in infos if i.type == pafs.FileType.File)
    else:
        count = sum(1 for key, *_ in s3_pages.entries(client, root, False, "cannot list") if not key.endswith("/"))
    seconds = time.perf_counter() - start
    return {"objects": count, "seconds": seconds, "before_mb": before / 2**20, "peak_mb": _status("VmHWM") / 2**20}


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=30_000)
    parser.add_argument("--part", choices=["pyarrow", "pages"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(part(args.part)))
        return
    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        env = _env(endpoint)
        from botocore.exceptions import EndpointConnectionError

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # fmt: skip
        for _ in range(100):
            try:
                s3.create_bucket(Bucket="photos")
                break
            except EndpointConnectionError:  # the server is still starting
                time.sleep(0.2)
        start = time.perf_counter()
        bucket, _, key = PREFIX.partition("/")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"{key}/{i:08d}.jpg", Body=b""), range(args.objects)))
        upload = time.perf_counter() - start
        runs: dict[str, dict[str, Any]] = {}
        for name in ("pyarrow", "pages", "pyarrow", "pages"):  # each twice, alternating
            load_before = _load()
            out = subprocess.run([sys.executable, __file__, "--part", name], capture_output=True, text=True, check=True, env=env)
            result = json.loads(out.stdout)
            result["load"] = f"{load_before:.1f} / {_load():.1f}"
            runs.setdefault(name, {}).setdefault("rounds", []).append(result)
    finally:
        server.terminate()
        server.wait()
    (HERE / "results_s3_listing.md").write_text(report(runs, args.objects, upload))
    print((HERE / "results_s3_listing.md").read_text())


def report(runs: dict[str, dict[str, Any]], objects: int, upload: float) -> str:
    lines = [
        "# A flat s3:// prefix: pyarrow's whole level against S3's pages (`python benchmarks/bench_s3_listing.py`)", "",
        f"Machine: {platform.processor() or platform.machine()}, 2-core CPU, no GPU ({os.cpu_count()} logical CPUs), shared "
        "with five other engineers: the load average (1 min) is given before / after each part; compare the ratios, not "
        "the seconds. Each part ran in its own process, twice, alternating; the S3 server is moto (`moto[server]`) on "
        f"127.0.0.1, so the seconds are moto's, not S3's ({objects:,} empty objects put in {upload:.0f} s).", "",
        f"One prefix of {objects:,} objects (`s3://{PREFIX}/NNNNNNNN.jpg`). *pyarrow level* = one non-recursive "
        "`FileSelector` listing held as pyarrow returns it (how a level was listed before this version); *pages* = "
        "`s3_pages.entries`, counted a page (1,000 keys) at a time (how the driver's first look and the listing tasks "
        "read a level now). Memory: the listing process's peak resident memory while it lists (VmHWM, reset just "
        "before) over its resident memory just before.", "",
        "| run | objects | seconds | before MB | peak MB | growth MB | bytes/object | load |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, label in (("pyarrow", "pyarrow level"), ("pages", "pages (boto3)")):
        for r in runs[name]["rounds"]:
            growth = r["peak_mb"] - r["before_mb"]
            lines.append(
                f"| {label} | {r['objects']:,} | {r['seconds']:.2f} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | {growth:.1f} | "
                f"{growth * 2**20 / max(1, r['objects']):,.0f} | {r['load']} |"
            )
    lines += ["", READING, "", f"_Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
