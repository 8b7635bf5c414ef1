"""The report as a browser shows it: headless Chromium over the DevTools protocol (no extra packages).

Chromium is driven through ``--remote-debugging-pipe`` (JSON messages separated by NUL bytes on
file descriptors 3 and 4), so nothing listens on a port. The test checks, after the page has
loaded, that every cluster section and every thumbnail is there and decoded, that the console
got no error (a CSP violation or a broken data URI would be one), and saves a screenshot to
``$IMGCLUSTER_SCREENSHOT`` when set.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from imagefolders import CLASSES, copy_sample
from PIL import Image
from typer.testing import CliRunner

from imgcluster.cli import app

pytestmark = pytest.mark.browser
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class DevTools:
    """A headless Chromium and one page session, spoken to over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, log: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
            f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        # the child finds the pipe ends on fds 3 and 4, where --remote-debugging-pipe expects them;
        # copies above 9 first, so that neither dup2 can clobber the other's source
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def onto_3_and_4() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [binary, *flags], preexec_fn=onto_3_and_4, close_fds=False, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        for fd in high:
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True, timeout: float = 30) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self._read_until(lambda m: m.get("id") == self._next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._read_until(lambda m: m.get("method") == method, timeout)

    def _read_until(self, wanted: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError("no answer from Chromium (see its log)")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buffer += chunk

    def open_page(self, url: str, width: int) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path: Path, width: int, max_height: int) -> None:
        height = min(int(self.evaluate("document.documentElement.scrollHeight")), max_height)
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif event["method"] == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except (OSError, RuntimeError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self._log.close()


CHECKS = """JSON.stringify({
  sections: [...document.querySelectorAll('section.cluster')].map(s => s.id),
  images: document.images.length,
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
  placeholders: document.querySelectorAll('.ph').length,
  overviewLinks: document.querySelectorAll('#overview a[href^="#cluster-"]').length,
  title: document.title,
  odd: [...document.querySelectorAll('b')].filter(b => b.closest('figcaption') === null && b.textContent.includes('&x')).length,
})"""


def test_report_renders_in_chromium(tmp_path: Path, shared_cache: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium not found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)")
    folder = copy_sample(tmp_path / "photos", CLASSES[:3], per_class=8)
    shutil.copy2(next(iter(sorted((folder / CLASSES[0]).iterdir()))), folder / "<b>&x.png")
    out = tmp_path / "clusters.csv"
    runner = CliRunner()
    fast = ["--model", "efficientnet-lite0", "--cache-dir", str(shared_cache), "--clusters", "3", "--workers", "0"]
    assigned = runner.invoke(app, ["assign", str(folder), "--out", str(out), "--quiet", "--min-confidence", "0", *fast])
    assert assigned.exit_code == 0, assigned.stderr
    (folder / CLASSES[1] / sorted(p.name for p in (folder / CLASSES[1]).iterdir())[0]).unlink()  # one file gone: a placeholder
    made = runner.invoke(app, ["report", str(out), "--labels", str(folder)])
    assert made.exit_code == 0, made.stderr
    page = out.with_suffix(".html")
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    clusters = {f"cluster-{r['cluster']}" for r in rows}

    chrome = DevTools(binary, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        chrome.open_page(page.resolve().as_uri(), width=1280)
        seen = json.loads(chrome.evaluate(CHECKS))
        shot = Path(os.environ.get("IMGCLUSTER_SCREENSHOT") or tmp_path / "report.png")
        chrome.screenshot(shot, width=1280, max_height=2000)
        errors = chrome.console_errors()
    finally:
        chrome.close()

    assert set(seen["sections"]) == clusters and seen["overviewLinks"] == len(clusters)
    assert seen["images"] == len(rows) - 1 and seen["placeholders"] == 1  # every image but the deleted one
    assert seen["broken"] == [], f"thumbnails that did not decode: {seen['broken']}"
    assert seen["odd"] == 0  # the file name <b>&x.png stayed text
    assert seen["title"] == "imgcluster report: clusters.csv"
    assert errors == [], f"console errors: {errors}"
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 600
        assert im.convert("L").getextrema()[0] < 100  # something dark was drawn, not a blank page
