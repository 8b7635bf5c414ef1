"""How long mistakes take to be reported: `imgcluster` argument and folder errors against `import torch`.

Each command runs in a fresh interpreter (as a user runs it), several times; the table gives the
median and the fastest wall time and the exit code. The target: an argument or folder error in
under 1 s on 2 idle cores, i.e. before torch (seconds to import) is loaded. Writes
benchmarks/results_startup.md, with the machine's load average, which changes every number here.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results_startup.md"
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def timed(argv: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
    return seconds, done.returncode, last


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "empty").mkdir()
        two = root / "two"
        two.mkdir()
        sample = sorted((ROOT / "sample_data").rglob("*.png"))[:2]
        for i, src in enumerate(sample):
            (two / f"{i}.png").write_bytes(src.read_bytes())
        cli = [sys.executable, "-m", "imgcluster"]
        cases = [
            ("`python -c 'import torch'` (reference)", [sys.executable, "-c", "import torch"]),
            ("`imgcluster --version`", [*cli, "--version"]),
            ("`imgcluster assign no_such_folder`", [*cli, "assign", str(root / "no_such_folder")]),
            ("`imgcluster assign EMPTY_FOLDER`", [*cli, "assign", str(root / "empty")]),
            ("`imgcluster assign TWO_IMAGES --model dinov2` (unknown model)", [*cli, "assign", str(two), "--model", "dinov2"]),
            ("`imgcluster assign TWO_IMAGES` (K=10 > 2 images)", [*cli, "assign", str(two)]),
            ("`imgcluster assign TWO_IMAGES --clusters many`", [*cli, "assign", str(two), "--clusters", "many"]),
        ]
        load_before = os.getloadavg()
        rows = []
        for name, argv in cases:
            runs = [timed(argv) for _ in range(REPEATS)]
            times = [r[0] for r in runs]
            code, message = runs[-1][1], runs[-1][2].replace(str(root) + "/", "").replace("|", "\\|")
            rows.append(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {code} | {message} |")
            print(rows[-1], flush=True)
        load_after = os.getloadavg()
    lines = [
        "# Startup and fail-fast times (`make bench-startup`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.platform()}; Python {platform.python_version()}; "
        f"{os.cpu_count()} CPU cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        "(other jobs share these cores: the times scale with the load, the ratio to `import torch` much less).",
        f"Wall time of a fresh process, {REPEATS} runs each, in seconds.",
        "",
        "| command | median s | fastest s | exit code | last line |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
