"""Run a command as a user file permissions apply to, also where the tests run as root (who ignores them).

As root the command keeps its uid, so it can still run a Python installed under /root, but it starts
without the capabilities that override permissions (``setpriv`` drops CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH from its bounding set): a folder ``chmod 555`` stops it as it stops anyone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

DROP = ["--bounding-set", "-dac_override,-dac_read_search", "--inh-caps=-all", "--"]


def prefix() -> list[str]:
    """The words to put before a command so that permissions apply to it; skips the test where that cannot be done."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to apply")
    with tempfile.TemporaryDirectory() as folder:
        closed = Path(folder) / "closed"
        closed.mkdir(mode=0o555)
        probe = subprocess.run([setpriv, *DROP, "touch", str(closed / "x")], capture_output=True, text=True)
        if probe.returncode == 0 or "Permission denied" not in probe.stderr:
            pytest.skip(f"setpriv cannot drop the capabilities that override permissions here: {probe.stderr.strip()[-200:]}")
    return [setpriv, *DROP]
