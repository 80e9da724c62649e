"""Three bridge nodes on one PostgreSQL database behind a TCP balancer, six edges publishing steadily, and the
nodes restarted one by one (SIGTERM, start again) as a rolling upgrade does: 0 lost, 0 executed twice, every
result back at its edge. Each restart must come while the apps still publish, or the test proves nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import TOPIC, Cluster, intent, pg_cluster
from tests.support.net import wait_until

NODES = 3
EDGES = 6
PER_EDGE = 1000
PACE_S = 0.02  # between rounds of one intent per edge: 300 intents/s for about 20 s


@pytest.fixture
def cluster(tmp_path: Path, server_cert_files: dict[str, Path]) -> Iterator[Cluster]:
    with pg_cluster(tmp_path, server_cert_files, NODES) as c:
        yield c


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nodes_restarted_one_by_one_under_load_lose_nothing_and_run_nothing_twice(cluster: Cluster) -> None:
    cluster.add_edges(EDGES)
    wait_until(lambda: sum(cluster.balancer.live().values()) >= EDGES, 60, 0.2, what="every edge connected")
    apps = [cluster.app(e) for e in range(EDGES)]
    wanted = {e: [f"e{e}-{n:04d}" for n in range(PER_EDGE)] for e in range(EDGES)}

    def publish() -> None:
        for n in range(PER_EDGE):
            for e, app in enumerate(apps):
                app.publish(TOPIC, intent(wanted[e][n]), name=wanted[e][n])
            time.sleep(PACE_S)  # the apps' pace, not a wait for anything

    publishing = threading.Thread(target=publish, name="apps")
    publishing.start()
    try:
        for node in cluster.nodes:
            before = cluster.sink.total()
            wait_until(lambda n=before: cluster.sink.total() > n, 60, 0.05, what="the cluster executing")
            assert publishing.is_alive(), "the apps stopped publishing before every node restarted: raise PER_EDGE"
            assert node.stop() == 0, node.log()
            node.start()
    finally:
        publishing.join()
    every = {i for ids in wanted.values() for i in ids}
    try:
        wait_until(lambda: every <= cluster.sink.executions().keys(), 300, 0.5, what="every intent executed")
        wait_until(lambda: all(cluster.edge_states().get(i) == "delivered" for i in every), 300, 0.5,
                   what="every result back at its edge")  # fmt: skip
    except TimeoutError:
        print(cluster.diagnostics())
        raise
    assert max(cluster.sink.executions().values()) == 1
    assert cluster.sink.repeated_keys() == {}
