"""A fake two-node Ray cluster (``ray.cluster_utils.Cluster``): embed_to_store connects to it by address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imagefolders import CLASSES, copy_sample

from imgcluster import featurestore as fst
from imgcluster.scale import embed_job

pytest.importorskip("ray", reason="the Ray engine's tests need the 'ray' extra: pip install 'imgcluster[ray]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes(ray_env: None) -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 128 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_two_nodes_embed_every_file_once_and_the_session_is_left_to_its_owner(two_nodes: Any, tmp_path: Path) -> None:
    import ray

    photos = copy_sample(tmp_path / "photos", CLASSES[:2], per_class=2)
    out = tmp_path / "features"
    summary = embed_job.embed_to_store(str(photos), str(out), model="efficientnet-lite0", address=two_nodes.address)
    assert (summary.embedded, summary.skipped) == (4, [])
    assert fst.count_rows(str(out)) == 4
    assert not ray.is_initialized()  # connected for the job, disconnected after it; the cluster runs on
    assert len(two_nodes.list_all_nodes()) == 2


def test_without_an_address_a_new_local_instance_starts_beside_a_running_cluster(two_nodes: Any) -> None:
    import ray

    from imgcluster.scale.engine import ray_session

    with ray_session(None, num_cpus=1):  # ray.init() alone would join the cluster `ray start` registered on this machine
        assert ray.cluster_resources()["CPU"] == 1 and len(ray.nodes()) == 1
    assert not ray.is_initialized() and len(two_nodes.list_all_nodes()) == 2
