"""One local Ray per test module: starting Ray costs 15-30 s on a loaded 2-core machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Set before Ray starts, for every process it starts: no token file in ~/.ray for a throwaway
# instance, and no memory monitor killing workers because the shared machine is nearly full.
TEST_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_memory_monitor_refresh_ms": "0"}
OBJECT_STORE_BYTES = 256 * 2**20


@pytest.fixture(scope="module")
def ray_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in TEST_RAY_ENV}
    os.environ.update(TEST_RAY_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def local_ray(ray_env: None) -> Iterator[Any]:
    """A local two-CPU Ray for the whole module; ``ray_session`` finds it and leaves it running."""
    ray = pytest.importorskip("ray", reason="the Ray engine's tests need the 'ray' extra: pip install 'imgcluster[ray]'")
    # address "local": a new instance, never a cluster another test (or user) started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
