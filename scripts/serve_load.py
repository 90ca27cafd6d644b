"""A bounded HTTP load on an artifact served by ``fffc.serve`` on a local multi-node Ray
cluster (``ray.cluster_utils.Cluster``, every node on 127.0.0.1), against the same
deployment serving the original model.

    python scripts/serve_load.py ARTIFACT ORIGINAL.onnx [--requests 2000] [--clients 8]

Three runs, each ``--requests`` requests from ``--clients`` concurrent clients, half the
bodies JSON and half ``.npz``: the artifact, the original model, then the artifact again
with one replica killed (``ray.kill``) once a third of the requests are answered. Every
answer must equal a local session's outputs bit for bit; a failed request is retried (a
fresh connection, up to ``--retries`` times) and must then succeed; after the kill, Serve
must bring the deployment back to its replica count with a new replica. Prints requests/s
and p50/p99 latency per run; exits 1 on any error or mismatch. The cluster stops when the
script ends. ``tests/test_serve.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

# every node and the driver on the loopback address (read when ray is imported): Ray
# otherwise resolves 127.0.0.1 to the machine's own address, which a sandbox may not route
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import fffc.serve

TOKENS = (1, 1, 1, 4, 16)  # the token counts the requests cycle through (decode-heavy)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """``nodes`` Ray nodes of ``cpus`` CPUs each on 127.0.0.1, the driver connected and Serve
    started with one HTTP proxy (on the head node: every node shares the address) on
    ``port``; stopped on exit."""

    def __init__(self, nodes: int = 2, cpus: int = 1, port: int | None = None) -> None:
        self.nodes, self.cpus, self.port = nodes, cpus, port or free_port()

    def __enter__(self) -> LocalCluster:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        node = {"num_cpus": self.cpus, "node_ip_address": "127.0.0.1",
                "object_store_memory": 80 * 1024**2}
        self.cluster = Cluster(initialize_head=True,
                               head_node_args={**node, "include_dashboard": False})
        try:
            for _ in range(self.nodes - 1):
                self.cluster.add_node(**node)
            ray.init(address=self.cluster.address, logging_level="WARNING",
                     log_to_driver=False)
            serve.start(proxy_location="HeadOnly",
                        http_options={"host": "127.0.0.1", "port": self.port})
        except BaseException:
            self.cluster.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()

    def url(self, route: str) -> tuple[str, int, str]:
        return "127.0.0.1", self.port, route


def feeds_for(session: ort.InferenceSession, tokens: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs: the last symbolic dimension of each input is ``tokens``, the others 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        symbolic = [k for k, d in enumerate(i.shape) if not isinstance(d, int)]
        shape = [d if isinstance(d, int) else (tokens if k == symbolic[-1] else 1)
                 for k, d in enumerate(i.shape)]
        dtype = fffc.serve.DTYPES[i.type]
        out[i.name] = rng.standard_normal(shape).astype(dtype)
    return out


def request_body(feeds: dict[str, np.ndarray], fmt: fffc.serve.BodyFormat) -> bytes:
    if fmt is fffc.serve.BodyFormat.NPZ:
        buf = io.BytesIO()
        np.savez(buf, **feeds)
        return buf.getvalue()
    return json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode()


def read_answer(body: bytes, fmt: fffc.serve.BodyFormat,
                dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    if fmt is fffc.serve.BodyFormat.NPZ:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    return {k: np.asarray(v, dtype=dtypes[k]) for k, v in json.loads(body)["outputs"].items()}


@dataclass
class Case:
    """One request: its body, format and the outputs a local session gave."""

    body: bytes
    fmt: fffc.serve.BodyFormat
    expected: dict[str, np.ndarray]


def cases(model: str | Path, count: int, distinct: int = 40) -> list[Case]:
    """``count`` requests cycling through ``distinct`` inputs, formats alternating; the
    expected outputs from a local one-thread session of ``model``."""
    sess = fffc.serve.session(model, threads=1)
    names = [o.name for o in sess.get_outputs()]
    formats = list(fffc.serve.BodyFormat)
    pool = []
    for k in range(distinct):
        feeds = feeds_for(sess, TOKENS[k % len(TOKENS)], seed=k)
        expected = dict(zip(names, sess.run(names, feeds), strict=True))
        fmt = formats[k % len(formats)]
        pool.append(Case(request_body(feeds, fmt), fmt, expected))
    return [pool[k % distinct] for k in range(count)]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, successful attempts
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # requests that failed every retry
    mismatches: int = 0
    retried: int = 0  # requests that needed more than one attempt
    failed_attempts: int = 0
    replicas: dict[str, str] = field(default_factory=dict)  # replica actor name -> node id
    killed: str | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def figures(self) -> dict[str, float]:
        lat = np.asarray(self.latencies) * 1e3
        return {"requests/s": self.requests / self.seconds,
                "p50 ms": float(np.percentile(lat, 50)),
                "p99 ms": float(np.percentile(lat, 99))}


def load(address: tuple[str, int, str], work: list[Case], clients: int, retries: int = 20,
         kill_after: int | None = None) -> Result:
    """``work`` sent by ``clients`` threads, each on its own keep-alive connection; with
    ``kill_after``, the replica that answered the ``kill_after``-th request is killed."""
    host, port, route = address
    result = Result()
    lock = threading.Lock()
    next_case = iter(range(len(work)))
    answered = 0

    def send(conn: http.client.HTTPConnection, case: Case) -> tuple[bytes, str, str]:
        conn.request("POST", route, body=case.body, headers={"Content-Type": case.fmt.value})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        return (body, resp.getheader(fffc.serve.REPLICA_HEADER, ""),
                resp.getheader(fffc.serve.NODE_HEADER, ""))

    def client() -> None:
        nonlocal answered
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                k = next(next_case, None)
            if k is None:
                break
            case = work[k]
            for attempt in range(retries + 1):
                t0 = time.perf_counter()
                try:
                    body, replica, node = send(conn, case)
                except (OSError, http.client.HTTPException, RuntimeError) as e:
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    with lock:
                        result.failed_attempts += 1
                        if attempt == retries:
                            result.errors.append(f"request {k}: {e}")
                    time.sleep(0.2)
                    continue
                dt = time.perf_counter() - t0
                got = read_answer(body, case.fmt, {n: v.dtype for n, v in case.expected.items()})
                same = got.keys() == case.expected.keys() and all(
                    np.array_equal(got[n], case.expected[n]) for n in got)
                with lock:
                    result.latencies.append(dt)
                    result.mismatches += not same
                    result.retried += attempt > 0
                    result.replicas.setdefault(replica, node)
                    answered += 1
                    kill = kill_after is not None and answered == kill_after
                if kill:
                    result.killed = replica
                    kill_replica(replica)
                break
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result


def kill_replica(name: str) -> None:
    """Kills a Serve replica's actor (no Ray-level restart: Serve's controller replaces it)."""
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def wait_running(app_name: str, replicas: int, timeout: float = 120.0) -> None:
    """Until the app's one deployment has ``replicas`` replicas running."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while True:
        status = serve.status().applications.get(app_name)
        if status is not None:
            (dep,) = status.deployments.values()
            if dict(dep.replica_states) == {"RUNNING": replicas}:
                return
            states = dict(dep.replica_states)
        else:
            states = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app_name}: replicas {states} after {timeout:.0f} s")
        time.sleep(0.5)


def deploy(model: str | Path, name: str, replicas: int, cpus: float) -> None:
    from ray import serve

    serve.run(fffc.serve.app(model, replicas=replicas, cpus_per_replica=cpus), name=name,
              route_prefix=f"/{name}")
    wait_running(name, replicas)


def table(rows: dict[str, Result]) -> str:
    lines = [f"{'run':<22}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'errors':>7}{'mismatch':>9}{'retried':>8}{'replicas':>9}"]
    for name, r in rows.items():
        f = r.figures() if r.requests else {"requests/s": 0.0, "p50 ms": 0.0, "p99 ms": 0.0}
        lines.append(f"{name:<22}{r.requests:>9}{f['requests/s']:>9.1f}{f['p50 ms']:>9.2f}"
                     f"{f['p99 ms']:>9.2f}{len(r.errors):>7}{r.mismatches:>9}{r.retried:>8}"
                     f"{len(r.replicas):>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact")
    p.add_argument("original", help="the model the artifact was compiled from")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-replica", type=int, default=1)
    p.add_argument("--retries", type=int, default=20)
    args = p.parse_args(argv)

    runs: dict[str, Result] = {}
    cpus = args.cpus_per_replica * -(-args.replicas // args.nodes)
    with LocalCluster(args.nodes, cpus) as cluster:
        for name, model in (("artifact", args.artifact), ("original", args.original)):
            work = cases(model, args.requests)
            deploy(model, name, args.replicas, args.cpus_per_replica)
            runs[name] = load(cluster.url(f"/{name}"), work, args.clients, args.retries)
            from ray import serve
            serve.delete(name)
        work = cases(args.artifact, args.requests)
        deploy(args.artifact, "killed", args.replicas, args.cpus_per_replica)
        kill = load(cluster.url("/killed"), work, args.clients, args.retries,
                    kill_after=args.requests // 3)
        wait_running("killed", args.replicas)
        after = load(cluster.url("/killed"), work[: 8 * args.replicas], args.clients)
        runs["artifact, 1 killed"] = kill
        runs["after the restart"] = after
    print(table(runs))
    print(f"killed {kill.killed}; failed attempts retried: {kill.failed_attempts}; "
          f"replicas answering after the restart: {sorted(after.replicas)}")
    bad = [n for n, r in runs.items() if r.errors or r.mismatches]
    for n in bad:
        print(f"{n}: {runs[n].errors[:5]} mismatches {runs[n].mismatches}", file=sys.stderr)
    return 1 if bad or kill.killed is None or kill.killed in after.replicas else 0


if __name__ == "__main__":
    sys.exit(main())
