"""The lazy Ray import and the session a job runs in."""

from __future__ import annotations

import socket
import sys
import time
from types import SimpleNamespace

import pytest

from imgcluster.errors import ImgclusterError
from imgcluster.scale import engine


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImgclusterError) as info:
        engine.import_ray()
    assert str(info.value) == "the Ray engine needs the 'ray' extra: pip install 'imgcluster[ray]'"
    with pytest.raises(ImgclusterError, match="'ray' extra"), engine.ray_session(None):
        pass


@pytest.mark.slow
def test_a_local_instance_is_started_and_ended_a_callers_is_left_running(ray_env: None) -> None:
    ray = pytest.importorskip("ray", reason="needs the 'ray' extra")
    assert not ray.is_initialized()
    with engine.ray_session(None, num_cpus=1):
        assert ray.is_initialized()
        resources = ray.cluster_resources()
        assert resources["CPU"] == 1
        assert resources["object_store_memory"] == pytest.approx(engine.LOCAL_OBJECT_STORE_BYTES, rel=0.01)
        with engine.ray_session("auto"):  # nested: finds this process's Ray and leaves it alone
            assert ray.get(ray.put(7)) == 7
        assert ray.is_initialized()
    assert not ray.is_initialized()


@pytest.mark.timeout(120)
def test_an_address_where_nothing_listens_fails_in_seconds() -> None:
    """``ray.init`` at a dead host:port retried with its own log lines until `timeout 500` stopped it (8.3 minutes)."""
    pytest.importorskip("ray", reason="needs the 'ray' extra")
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        with pytest.raises(ImgclusterError) as info, engine.ray_session(address):
            pass
        why = f"nothing answers at 127.0.0.1:{port} (Connection refused)"
        assert str(info.value) == f"cannot connect to the Ray cluster at {address}: {why}"
        assert time.monotonic() - started < 30


def test_auto_without_a_cluster_names_the_option_not_rays_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's own message for it ends "by setting `--address` flag or `RAY_ADDRESS`", a flag imgcluster does not have."""

    def init(**kwargs: object) -> None:
        raise ConnectionError(f"{engine.NO_CLUSTER}. Please specify the one to connect to by setting `--address` flag or `RAY_ADDRESS` ...")

    monkeypatch.setattr(engine, "import_ray", lambda: SimpleNamespace(is_initialized=lambda: False, init=init))
    with pytest.raises(ImgclusterError) as info, engine.ray_session("auto"):
        pass
    assert info.value.render({"address": "--ray-address"}) == (
        "cannot connect to the Ray cluster at auto: no Ray cluster runs on this machine "
        "(`ray start` starts one; without --ray-address a local Ray is started)"
    )
