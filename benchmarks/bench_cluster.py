"""Redis Cluster load benchmark (``python benchmarks/bench_cluster.py [--rows N] [--reps R] [--quick]``).

The publish's Redis work for one version (``batchscore.jobs.publish.load_version``, fenced by the
lock's token, then ``RedisVersions.verify``), from one Spark ``local[2]`` session, into

* **A**: one standalone ``redis-server`` (``outputs.redis.cluster: false``), and
* **B**: a 3-master Redis Cluster on loopback started here (``outputs.redis.cluster: true``),

over the same staged run (``bench_publish.write_run``: ``--rows`` int64 keys, one float32 score,
8 Parquet files). One warm-up load per side, then ``--reps`` rounds, the two sides interleaved
(their order alternating), every server flushed before each load. Around each load+verify:

* wall seconds;
* server CPU: ``INFO cpu`` ``used_cpu_sys + used_cpu_user`` deltas of each ``redis-server``
  (the whole process, per master);
* client CPU: ``utime + stime + cutime + cstime`` deltas from ``/proc/<pid>/stat`` over this
  process and all its descendants (the driver, the Spark JVM, its Python workers), the servers
  excluded; the machine's busy CPU from ``/proc/stat`` is printed beside it (it also counts
  anything else that ran on the box).

After each load, outside the timed window: the total ``HLEN`` over the version's buckets equals the
rows, and 100 random entities read back from their data keys decode to the staged scores.

Bar (issue): the Cluster load rate >= 2x the single-server load rate on this 2-core machine
(the median of the per-round ratios), or the measured reason it cannot be: the 2-core ceiling
from the CPU seconds each side used, naming the client or the server side as the bottleneck.
Exit 1 when the bar is missed (everything is printed either way).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import redis
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from bench_publish import load_and_verify, write_run  # noqa: E402

from batchscore import redis_layout as layout  # noqa: E402
from batchscore.config import ModelConfig, load_model_config  # noqa: E402
from batchscore.jobs._session import build_session  # noqa: E402
from batchscore.redis_conn import connect  # noqa: E402
from batchscore.sinks import delta  # noqa: E402
from batchscore.sinks.redis import RedisVersions  # noqa: E402
from batchscore.testing.local_redis import LocalRedis, cli_binary, cluster_ok, free_port, pings, server_binary  # noqa: E402

MASTERS = 3
CORES = 2
BAR = 2.0
SPOT_CHECKS = 100
NS = "b:m"  # namespace(key_prefix "b", model "m")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the Cluster ---------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    while True:
        p = free_port()
        if p + 10000 <= 65535 and _port_free(p + 10000):
            return p


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Cluster:
    ports: list[int]
    pids: list[int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"


@contextmanager
def local_cluster(root: Path, masters: int = MASTERS) -> Iterator[Cluster]:
    """``masters`` Redis Cluster masters on loopback (no replicas, no persistence), terminated on exit."""
    exe, cli = server_binary(), cli_binary()
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        while len(ports) < masters:
            p = _cluster_port()
            d = root / f"node-{p}"
            d.mkdir(parents=True)
            proc = subprocess.Popen(
                [exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file",
                 "nodes.conf", "--cluster-node-timeout", "5000", "--save", "", "--appendonly", "no", "--dir", str(d)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait(lambda p=p, proc=proc: pings(p) or proc.poll() is not None, 60, f"redis-server on {p}")
            if proc.poll() is None:
                ports.append(p)  # else the port was taken meanwhile: try another
        subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for p in ports:
            _wait(lambda p=p: cluster_ok(p), 30, f"cluster state ok on {p}")
        yield Cluster(ports, [pr.pid for pr in procs if pr.poll() is None])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- CPU accounting ------------------------------------------------------------------------------


def server_cpu(port: int) -> float:
    """CPU seconds (system + user) the redis-server on ``port`` has used so far (``INFO cpu``)."""
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime + stime + cutime + cstime in seconds) of every live process."""
    out: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()  # fields after "pid (comm)": state is rest[0]
        ppid = int(rest[1])
        ticks = sum(int(x) for x in rest[11:15])  # utime, stime, cutime, cstime
        out[int(entry)] = (ppid, ticks / CLK_TCK)
    return out


def client_cpu(exclude: set[int]) -> float:
    """CPU seconds of this process and its descendants (reaped children included), ``exclude``
    and their descendants left out: the driver, the Spark JVM and its Python workers."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in exclude or pid not in table:
            continue
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK


# -- one side ------------------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    url: str
    cluster: bool
    ports: list[int]
    pids: list[int]
    cfg: ModelConfig
    store: RedisVersions
    wall: list[float] = field(default_factory=list)
    servers: list[list[float]] = field(default_factory=list)  # per rep: CPU s of each server
    client: list[float] = field(default_factory=list)
    machine: list[float] = field(default_factory=list)

    def flush(self) -> None:
        """FLUSHALL on every master, then take the publish lock again (the flush dropped it)."""
        self.store.unlock()
        for p in self.ports:
            redis.Redis(port=p).flushall()
        self.store.lock(owner="bench", ttl_s=600)


@dataclass
class Run:
    table: Path
    rows: int
    digest: str
    keys: np.ndarray
    scores: np.ndarray


def load_once(spark: Any, side: Side, run: Run, label: str, *, record: bool) -> None:
    side.flush()
    v = side.store.allocate(run_id=label, rows=run.rows, columns=["score"], model_version="v1", digest=run.digest)
    exclude = set(side.pids)
    s0, c0, m0 = [server_cpu(p) for p in side.ports], client_cpu(exclude), machine_cpu()
    started = time.perf_counter()
    load_and_verify(spark, side.cfg, [str(run.table / "runs" / "r")], side.url, side.store, v)
    wall = time.perf_counter() - started
    s1, c1, m1 = [server_cpu(p) for p in side.ports], client_cpu(exclude), machine_cpu()
    check(side, run, v)
    if record:
        side.wall.append(wall)
        side.servers.append([b - a for a, b in zip(s0, s1, strict=True)])
        side.client.append(c1 - c0)
        side.machine.append(m1 - m0)


def check(side: Side, run: Run, v: Any) -> None:
    """Every entity is there (total HLEN) and random entities hold their staged scores."""
    total = sum(side.store.bucket_sizes(v.vid, v.buckets))
    assert total == run.rows, f"{side.name}: {total} entities in Redis, {run.rows} staged"
    picks = random.Random(len(side.wall)).sample(range(run.rows), min(SPOT_CHECKS, run.rows))
    pipe = side.store.r.pipeline(transaction=False)
    for i in picks:
        k = str(int(run.keys[i]))
        pipe.hget(layout.data_key(NS, v.vid, layout.bucket_of(k, v.buckets)), k)
    for i, raw in zip(picks, pipe.execute(), strict=True):
        assert raw is not None, f"{side.name}: entity {run.keys[i]} missing"
        got = layout.decode_scores(raw, 1)[0]
        assert np.float32(got) == run.scores[i], f"{side.name}: entity {run.keys[i]}: {got} != {run.scores[i]}"


def config(work: Path, table: Path, *, cluster: bool) -> ModelConfig:
    path = work / f"m-{'cluster' if cluster else 'single'}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "m", "model": {"uri": str(work / "none.onnx"), "format": "onnx", "version": "v1"},
        "input": {"path": str(work / "in.parquet"), "key": "user_id", "features": ["a"]},
        "outputs": {"delta": {"path": str(table)}, "redis": {"key_prefix": "b", "cluster": cluster}},
        "runtime": {"report_dir": str(work / "runs")}}))
    return load_model_config(path)


def bench(rows: int, reps: int, work: Path) -> tuple[Side, Side]:
    table = work / "pred"
    write_run(table, "r", rows)
    staged = pq.read_table(table / "runs" / "r", columns=["user_id", "score"])
    run = Run(table, rows, delta.stage(str(table), "r").digest, staged["user_id"].to_numpy(),
              staged["score"].to_numpy())
    spark = build_session("bench-cluster", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    try:
        with LocalRedis() as server, local_cluster(work / "cluster") as cl:
            assert server.proc is not None
            a = Side("A: one redis-server", server.url, False, [server.port], [server.proc.pid],
                     config(work, table, cluster=False), RedisVersions(connect(server.url), NS))
            b = Side(f"B: Cluster, {MASTERS} masters", cl.url, True, cl.ports, cl.pids,
                     config(work, table, cluster=True), RedisVersions(connect(cl.url, cluster=True), NS))
            for side in (a, b):
                side.store.lock(owner="bench", ttl_s=600)
                load_once(spark, side, run, "warm", record=False)  # JVM/JIT, workers' imports, connections
            for i in range(reps):  # interleaved, order alternating: drift hits both sides alike
                for side in (a, b) if i % 2 == 0 else (b, a):
                    load_once(spark, side, run, f"r{i}", record=True)
            for side in (a, b):
                side.store.unlock()
                side.store.r.close()
    finally:
        spark.stop()
    return a, b


# -- report --------------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def report(a: Side, b: Side, rows: int, reps: int) -> bool:
    w_a, w_b = med(a.wall), med(b.wall)
    ratios = [x / y for x, y in zip(a.wall, b.wall, strict=True)]  # per round: rate B / rate A
    ratio = med(ratios)
    print(f"cluster load benchmark: {rows:,} entities (1 float32 score), Spark local[2], {CORES} cores, "
          f"median of {reps} interleaved round(s)")
    print()
    print("| side | seconds (median, min..max) | rows/s | server CPU s (sum) | server CPU s (max per server) "
          "| client CPU s | machine busy CPU s | CPU / (2 cores x wall) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in (a, b):
        srv_sum = med([sum(x) for x in s.servers])
        srv_max = med([max(x) for x in s.servers])
        cli, mach = med(s.client), med(s.machine)
        w = med(s.wall)
        print(f"| {s.name} | {w:.2f} ({min(s.wall):.2f}..{max(s.wall):.2f}) | {rows / w:,.0f} | {srv_sum:.2f} "
              f"| {srv_max:.2f} | {cli:.2f} | {mach:.2f} | {(cli + srv_sum) / (CORES * w):.0%} |")
    met = ratio >= BAR
    print(f"| **Cluster / single rate** (bar >= {BAR:.0f}x) | | **{ratio:.2f}x** (rounds {min(ratios):.2f}.."
          f"{max(ratios):.2f}; ratio of medians {w_a / w_b:.2f}x) | | | | | **{'met' if met else 'missed'}** |")
    print()
    print("server CPU s: INFO cpu used_cpu_sys+used_cpu_user deltas per redis-server; client CPU s: /proc "
          "utime+stime(+reaped children) of this process and its descendants (driver, JVM, Python workers), "
          "servers excluded; machine busy: /proc/stat (includes anything else running).")
    for s in (a, b):
        other = med([m - c - sum(x) for m, c, x in zip(s.machine, s.client, s.servers, strict=True)])
        if other > 0.1 * CORES * med(s.wall):
            print(f"WARNING: other processes used ~{other:.2f} CPU s during {s.name}'s loads (machine busy minus "
                  "client and servers): the box was not quiet, its figures are contaminated")
    per_server = " / ".join(f"{x:.2f}" for x in [med([r[i] for r in b.servers]) for i in range(len(b.ports))])
    print(f"Cluster CPU s per master (median): {per_server}")
    print()
    explain(a, b, rows, ratio, met)
    return met


def explain(a: Side, b: Side, rows: int, ratio: float, met: bool) -> None:
    w_a, w_b = med(a.wall), med(b.wall)
    c_a, s_a = med(a.client), med([sum(x) for x in a.servers])
    c_b, s_b = med(b.client), med([sum(x) for x in b.servers])
    s_b_max = med([max(x) for x in b.servers])
    us = 1e6 / rows
    print(f"per entity: single client {c_a * us:.2f} us + server {s_a * us:.2f} us; "
          f"cluster client {c_b * us:.2f} us + servers {s_b * us:.2f} us (busiest master {s_b_max * us:.2f} us)")
    print(f"single side: the redis-server thread was busy {s_a / w_a:.0%} of the wall time, the {CORES} cores "
          f"{(c_a + s_a) / (CORES * w_a):.0%}")
    # On CORES cores the Cluster load takes at least (client + servers CPU) / CORES, and at least the
    # busiest master's CPU (one thread each): the most the ratio could be with these CPU costs.
    floor_b = max((c_b + s_b) / CORES, s_b_max)
    floor_same = max((c_a + s_a) / CORES, s_a / MASTERS)
    print(f"2-core ceiling of the ratio with the Cluster run's CPU: {w_a:.2f} s / max(({c_b:.2f} + {s_b:.2f}) / "
          f"{CORES}, {s_b_max:.2f}) = {w_a / floor_b:.2f}x")
    print(f"2-core ceiling even at the single run's CPU cost (perfect sharding, no extra client work): "
          f"{w_a:.2f} s / max(({c_a:.2f} + {s_a:.2f}) / {CORES}, {s_a:.2f} / {MASTERS}) = {w_a / floor_same:.2f}x")
    budget = CORES * w_a / BAR  # CPU seconds the Cluster load may use in all to finish in w_a / BAR on CORES cores
    if met:
        print(f"bar met: {ratio:.2f}x >= {BAR:.0f}x")
        return
    print(f"budget for {BAR:.0f}x: the Cluster load must finish in {w_a / BAR:.2f} s, i.e. use at most "
          f"{budget:.2f} CPU s on {CORES} cores; it used client {c_b:.2f} + servers {s_b:.2f} = {c_b + s_b:.2f} s")
    if c_b >= budget:
        print(f"reason: the CLIENT side alone ({c_b:.2f} CPU s, {c_b / (c_b + s_b):.0%} of the load's CPU) exceeds "
              f"the {budget:.2f} s budget: with servers costing nothing the ratio would still be at most "
              f"{w_a / (c_b / CORES):.2f}x")
    elif s_b >= budget:
        print(f"reason: the SERVER side alone ({s_b:.2f} CPU s over {MASTERS} masters) exceeds the {budget:.2f} s "
              f"budget: with a free client the ratio would still be at most {w_a / max(s_b / CORES, s_b_max):.2f}x")
    elif c_b + s_b > budget:
        main = "client" if c_b >= s_b else "server"
        print(f"reason: client and servers together ({c_b + s_b:.2f} CPU s) exceed the {budget:.2f} s budget; the "
              f"larger share is the {main} side ({max(c_b, s_b):.2f} s, {max(c_b, s_b) / (c_b + s_b):.0%})")
    else:
        print(f"reason: not CPU: the load used {c_b + s_b:.2f} of the {budget:.2f} CPU s the bar allows but the "
              f"cores were busy only {(c_b + s_b) / (CORES * w_b):.0%} of its {w_b:.2f} s (waiting on round trips)")
    if w_a / floor_same < BAR:
        print(f"on {CORES} cores the bar cannot be met by sharding the servers: the single-server load already "
              f"keeps the cores {(c_a + s_a) / (CORES * w_a):.0%} busy, so even at its own CPU cost the Cluster "
              f"load could be at most {w_a / floor_same:.2f}x faster")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="entities loaded into Redis")
    p.add_argument("--reps", type=int, default=3, help="timed loads per side, interleaved")
    p.add_argument("--quick", action="store_true", help="100,000 rows, 1 rep")
    args = p.parse_args()
    rows, reps = (100_000, 1) if args.quick else (args.rows, args.reps)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        a, b = bench(rows, reps, Path(tmp))
    met = report(a, b, rows, reps)
    print("bars: " + ("met" if met else "MISSED"))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
