"""fffc.serve on a local 2-node Ray cluster on 127.0.0.1 (``scripts/serve_load.py``'s short
version): 2 replicas, 200 requests from 8 clients, every answer a local session's outputs bit
for bit, no errors; a replica killed during the load is replaced by Serve and every retried
request succeeds; Serve's proxy, whose first port is taken, starts on another. The cluster
stops with the test."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.fixtures.scripts import script_module

# every node and the driver on the loopback address (read when ray is first imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
pytest.importorskip("ray.serve")
REQUESTS, CLIENTS, REPLICAS = 200, 8, 2


@pytest.fixture(scope="module")
def serve_load():
    with script_module("serve_load") as module:
        yield module


def test_load_with_a_replica_killed(serve_load, tmp_path, monkeypatch) -> None:
    from tests.fixtures.soak_catalog import KERNEL_ALWAYS, _compile, _ffn

    # the plain exact kernel in the replicas and the local session alike: the screened one
    # is chosen by a session's call history and equals it only up to reassociation
    monkeypatch.setenv("FFFC_EXACT_SCREEN", "0")
    original = _ffn(tmp_path, "relu")
    artifact = tmp_path / "relu.fffc"
    _compile(original, artifact, **KERNEL_ALWAYS)
    work = serve_load.cases(artifact, REQUESTS)
    # the first port the cluster picks for Serve's proxy is taken: it must start on another
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    ports = iter([held.getsockname()[1]])
    real_free_port = serve_load.free_port
    monkeypatch.setattr(serve_load, "free_port", lambda: next(ports, None) or real_free_port())
    with held, serve_load.LocalCluster(nodes=2, cpus=1) as cluster:
        assert cluster.port != held.getsockname()[1]
        serve_load.deploy(artifact, "fffc", REPLICAS, 1)
        result = serve_load.load(cluster.url("/fffc"), work, CLIENTS,
                                 kill_after=REQUESTS // 3)
        serve_load.wait_running("fffc", REPLICAS)
        after = serve_load.load(cluster.url("/fffc"), work[:16], CLIENTS)
    assert result.errors == [] and result.mismatches == 0, \
        serve_load.table([serve_load.Row("load", [result])])
    assert result.requests == REQUESTS
    assert len(set(result.replicas.values())) == 2  # both nodes answered
    assert result.killed is not None and result.killed not in after.replicas
    assert after.errors == [] and after.mismatches == 0 and after.requests == 16


def test_proxy_ports_avoid_the_ephemeral_range(serve_load) -> None:
    """Outgoing connections take their local ports from the kernel's ephemeral range: a
    port the proxy is to bind later must lie outside it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = serve_load.free_port()
        assert serve_load.PROXY_PORTS.start <= port < min(serve_load.PROXY_PORTS.stop, low)
