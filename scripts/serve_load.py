"""A bounded HTTP load on an artifact served by ``fffc.serve`` on a local multi-node Ray
cluster (``ray.cluster_utils.Cluster``, every node on 127.0.0.1), against the same
deployment serving the original model.

    python scripts/serve_load.py [ARTIFACT ORIGINAL.onnx] [--requests 2000] [--clients 8]
                                 [--replicas 2] [--nodes 2] [--repeats 3]

Without models, it builds the benchmarks' ReLU FFN 768/3072 (90% of its activations zero,
``bench/bench_sparse_ffn.py``) and its artifact under ``build/serve``. Both deployments
(``--replicas`` replicas of ``--cpus-per-replica`` CPUs, as many intra-op threads) run at
once; each timed run is ``--requests`` requests from ``--clients`` concurrent clients, half
the bodies JSON and half ``.npz``, the two deployments' runs interleaved ``--repeats`` times
(the order alternating). Then one run on the artifact with one replica killed
(``ray.kill``) once a third of the requests are answered. Every answer must equal a local
session's outputs bit for bit (``FFFC_EXACT_SCREEN=0`` unless set: a session's 1-token
exact kernel otherwise depends on its call history); a failed request is retried (a fresh
connection, up to ``--retries`` times) and must then succeed; after the kill, Serve must
bring the deployment back to its replica count with a new replica. Prints the date, load
average and versions, then a Markdown table of requests/s and p50/p99 latency per
deployment (median over the runs, and their range); exits 1 on any error or mismatch. The
cluster stops when the script ends. ``tests/test_serve.py`` runs a short version.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
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


# ports the HTTP proxy may take: above Ray's worker ports (10002-19999 by default) and below
# the kernel's ephemeral range, from which every outgoing connection (Ray opens hundreds while
# its nodes start) and every "any free port" bind takes its local port
PROXY_PORTS = range(20000, 32768)


def free_port(rng: random.Random | None = None) -> int:
    """A port of ``PROXY_PORTS`` nothing listens on or holds now (a port the kernel hands
    out as a free one, by binding port 0, may be taken again by an outgoing connection
    before the proxy binds it)."""
    rng = rng or random.Random()
    low = _ephemeral_low()
    candidates = range(PROXY_PORTS.start, min(PROXY_PORTS.stop, low))
    for _ in range(100):
        port = rng.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {candidates}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return PROXY_PORTS.stop


class LocalCluster:
    """``nodes`` Ray nodes of ``cpus`` CPUs each on 127.0.0.1, the driver connected and Serve
    started with one HTTP proxy (on the head node: every node shares the address) on
    ``port``; stopped on exit."""

    PORT_TRIES = 3  # proxies started, each on another port, before giving up

    def __init__(self, nodes: int = 2, cpus: int = 1, port: int | None = None) -> None:
        self.nodes, self.cpus, self.port = nodes, cpus, port

    def __enter__(self) -> LocalCluster:
        import ray
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
            self._start_serve()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_serve(self) -> None:
        """Serve with one HTTP proxy, on the head node (every node has the same address: a
        proxy per node would race for one port), on ``port`` or a free one; a proxy that
        cannot bind its port (taken between the choice and the bind) is retried on another."""
        from ray import serve
        from ray.exceptions import RayTaskError

        for attempt in range(self.PORT_TRIES):
            port = self.port or free_port()
            try:
                serve.start(proxy_location="HeadOnly",
                            http_options={"host": "127.0.0.1", "port": port})
            except RayTaskError as e:
                serve.shutdown()  # the controller, so that the next start takes new options
                if self.port or attempt + 1 == self.PORT_TRIES:
                    raise RuntimeError(f"Serve's HTTP proxy did not start on 127.0.0.1:{port}: "
                                       f"{str(e).strip().splitlines()[-1]}") from None
                continue
            self.port = port
            return

    def __exit__(self, *exc) -> None:
        """Serve, then the driver's connection, then the nodes (the cluster refuses to remove
        the node a connected driver is attached to)."""
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
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
        dtype = fffc.serve.NUMPY_TYPES[i.type]
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


@dataclass
class Row:
    """One deployment's runs: requests/s and latency percentiles, their median and range."""

    name: str
    results: list[Result]

    def cell(self, key: str, digits: int) -> str:
        values = [r.figures()[key] for r in self.results if r.requests]
        if not values:
            return "–"
        med = float(np.median(values))
        if len(values) == 1:
            return f"{med:.{digits}f}"
        return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"



def table(rows: list[Row]) -> str:
    """A Markdown table: per deployment, the median over its runs and (min–max)."""
    lines = ["| deployment | runs | requests | req/s | p50 ms | p99 ms | errors | mismatches "
             "| retried | replicas |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        replicas = sorted({len(r.replicas) for r in row.results})
        lines.append(
            f"| {row.name} | {len(row.results)} | {sum(r.requests for r in row.results)} "
            f"| {row.cell('requests/s', 1)} | {row.cell('p50 ms', 2)} "
            f"| {row.cell('p99 ms', 2)} | {sum(len(r.errors) for r in row.results)} "
            f"| {sum(r.mismatches for r in row.results)} "
            f"| {sum(r.retried for r in row.results)} | {', '.join(map(str, replicas))} |")
    return "\n".join(lines)


def build_default(folder: Path) -> tuple[Path, Path]:
    """The benchmarks' ReLU FFN 768/3072 with 90% of its activations zero on N(0, 1) inputs
    (``bench/bench_sparse_ffn.py``) and its artifact, built in ``folder``."""
    import onnx

    import fffc

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from bench_sparse_ffn import relu_ffn

    folder.mkdir(parents=True, exist_ok=True)
    original = folder / "relu_768x3072_s90.onnx"
    artifact = original.with_suffix(".fffc")
    if not (original.exists() and artifact.is_dir()):
        onnx.save(relu_ffn(768, 3072, 0.9, np.random.default_rng(0)), original)
        fffc.compile(original, artifact, fffc.CompileOptions(force=True))
    return artifact, original


def header(argv: list[str]) -> str:
    import platform

    import onnxruntime
    import ray

    return (f"date {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"{os.cpu_count()} CPUs; Python {platform.python_version()}, onnxruntime "
            f"{onnxruntime.__version__}, ray {ray.__version__}; FFFC_EXACT_SCREEN="
            f"{os.environ.get('FFFC_EXACT_SCREEN', '')}\n"
            f"command: python scripts/serve_load.py {' '.join(argv)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", nargs="?", help="default: the ReLU FFN 768/3072 (90%% zeros) "
                   "artifact, built under build/serve")
    p.add_argument("original", nargs="?", help="the model the artifact was compiled from")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-replica", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per deployment")
    p.add_argument("--retries", type=int, default=20)
    args = p.parse_args(argv)
    if (args.artifact is None) != (args.original is None):
        p.error("give both ARTIFACT and ORIGINAL, or neither")
    if args.artifact is None:
        args.artifact, args.original = build_default(
            Path(__file__).resolve().parent.parent / "build" / "serve")
    # read when a session is created, here and in the replicas (which inherit the nodes' env)
    os.environ.setdefault("FFFC_EXACT_SCREEN", "0")
    print(header(argv), flush=True)

    from ray import serve

    deployments = {"artifact": args.artifact, "original": args.original}
    work = {name: cases(model, args.requests) for name, model in deployments.items()}
    runs: dict[str, list[Result]] = {name: [] for name in deployments}
    # both deployments up at once (the idle one takes no CPU time), so their runs interleave
    cpus = args.cpus_per_replica * -(-args.replicas // args.nodes) * len(deployments)
    with LocalCluster(args.nodes, cpus) as cluster:
        for name, model in deployments.items():
            deploy(model, name, args.replicas, args.cpus_per_replica)
            load(cluster.url(f"/{name}"), work[name][: 8 * args.replicas], args.clients)
        for k in range(args.repeats):
            order = list(deployments) if k % 2 == 0 else list(reversed(deployments))
            for name in order:
                runs[name].append(load(cluster.url(f"/{name}"), work[name], args.clients,
                                       args.retries))
        serve.delete("original")
        kill = load(cluster.url("/artifact"), work["artifact"], args.clients, args.retries,
                    kill_after=args.requests // 3)
        wait_running("artifact", args.replicas)
        after = load(cluster.url("/artifact"), work["artifact"][: 8 * args.replicas],
                     args.clients)
    rows = [Row("artifact (fffc)", runs["artifact"]), Row("original (ONNX Runtime)",
                                                          runs["original"]),
            Row("artifact, a replica killed", [kill]), Row("artifact, after the restart",
                                                            [after])]
    print(table(rows))
    # each round ran the two back to back: their ratio cancels most of the machine's drift
    ratios = [a.figures()["requests/s"] / o.figures()["requests/s"]
              for a, o in zip(runs["artifact"], runs["original"], strict=True)
              if a.requests and o.requests]
    print(f"requests/s, artifact / original, per round: "
          f"{', '.join(f'{r:.2f}x' for r in ratios)} (median {np.median(ratios):.2f}x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; killed "
          f"{kill.killed}; failed attempts retried: {kill.failed_attempts}; replicas "
          f"answering after the restart: {sorted(after.replicas)}")
    bad = [(row.name, r) for row in rows for r in row.results if r.errors or r.mismatches]
    for name, r in bad:
        print(f"{name}: {r.errors[:5]} mismatches {r.mismatches}", file=sys.stderr)
    return 1 if bad or kill.killed is None or kill.killed in after.replicas else 0


if __name__ == "__main__":
    sys.exit(main())
