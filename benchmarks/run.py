"""Side by side with Litestream: the shipper, lag, object-store cost and restore.

    python -m benchmarks run [--quick] [--full] [--only NAME ...] [--repeat N]

Every tool gets identical inputs: the same seeded writer processes (stdlib sqlite3), the same database,
and the same replica kind (a local directory, or moto's S3 server on 127.0.0.1 behind a request-counting
middleware, s3server.py). Results go to benchmarks/results/<date>.md and .json, and every figure is
printed as ours / theirs and as a ratio. See benchmarks/README.md for what each figure means.

Workloads (workloads.py):
  W1  200 one-row transactions per second (steady), after a 20 MB preload;
  W2  bulk: 1000 x 1 KiB random blobs per transaction, as fast as possible, until the database holds
      200 MB (100 MB with --quick; 1 GB with --full);
  W3  a 1 GiB database (256 MB with --quick), mixed random/text rows, restored from its snapshot alone;
  W4  a snapshot plus 10 minutes of W1 history (20 s with --quick), restored;
  W5  idle for 5 minutes (30 s with --quick): requests per minute.
  history  W4 after 60 minutes of W1 (5 with --quick) on moto and on a real Ceph RGW at once, in
      bench_history.py (its own results file; RGW only where Ceph's packages are installed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from . import workloads as wl
from .s3server import OPS, CountingS3
from .tools import Replica, Tool, litestream, ours

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
PUT_PRICE = 0.005 / 1000  # USD per PUT/LIST at S3 standard public prices
GET_PRICE = 0.0004 / 1000
SCENARIOS = ["ceilings", "ship", "w1", "w1-100ms", "sparse", "w5", "w4", "w3", "history"]


@dataclass(frozen=True)
class Plan:
    quick: bool
    full: bool
    repeat: int

    @property
    def w1_seconds(self) -> float:
        return 20 if self.quick else 60

    @property
    def w2_mb(self) -> int:
        return 1000 if self.full else 100 if self.quick else 200

    @property
    def w3_mb(self) -> int:
        return 256 if self.quick else 1024

    @property
    def w4_seconds(self) -> float:
        return 20 if self.quick else 600

    @property
    def w5_seconds(self) -> float:
        return 30 if self.quick else 300

    @property
    def sparse_seconds(self) -> float:
        return 20 if self.quick else 45

    @property
    def alone_seconds(self) -> float:
        """W1 with no tool attached: 4000 commits give the baseline commit latency p99."""
        return 20


def _fresh(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _bench_client(replica: Replica) -> Any:
    """The harness's own boto3 client for an S3 replica (moto, with the bench credentials from _env)."""
    return boto3.session.Session().client("s3", endpoint_url=replica.endpoint, region_name="us-east-1")


def _preloaded(tmp: Path, db: Path) -> None:
    """A copy of one database preloaded with 20 MB, made once per run: every tool starts from the same bytes."""
    template = tmp / "preloaded-20mb.db"
    if not template.exists():
        wl.seed_database(template, preload_mb=20)
    shutil.copyfile(template, db)


def _s3_replica(s3: CountingS3, name: str) -> Replica:
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(bucket)
    return Replica("s3", None, bucket, name, s3.endpoint)


def _stored_bytes(replica: Replica) -> int:
    if replica.kind == "file":
        assert replica.path is not None
        return sum(p.stat().st_size for p in replica.path.rglob("*") if p.is_file())
    client = _bench_client(replica)
    total = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=replica.bucket, Prefix=replica.prefix or ""):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def _wait_quiet(replica: Replica, quiet: float = 3.0, limit: float = 120.0) -> float:
    """Wait until the replica stops changing for `quiet` seconds; return when it last changed."""
    last_size, last_change = -1, time.time()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        size = _stored_bytes(replica)
        if size != last_size:
            last_size, last_change = size, time.time()
        elif time.time() - last_change >= quiet:
            break
        time.sleep(0.05)
    return last_change


@contextmanager
def replicating(
    tool: Tool, db: Path, replica: Replica, *, interval: str, work: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The tool replicating `db`; stopped (SIGTERM, then SIGKILL) however the block ends. Stopping twice is fine."""
    proc = tool.start(db, replica, sync_interval=interval, workdir=work)
    try:
        yield proc
    finally:
        tool.stop(proc)


@contextmanager
def writing(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """A workload process, killed if the block ends before it did."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _empty(replica: Replica) -> None:
    """Delete a finished scenario's objects so moto (which holds them all in memory) stays small."""
    client = _bench_client(replica)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=replica.bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=replica.bucket, Delete={"Objects": keys})


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


# -- lag: which object first holds each commit -------------------------------------------------------


def _lags(tool: Tool, log: list[dict[str, Any]], records: list[wl.CommitRecord], start: float) -> list[float]:
    """Seconds from each commit to the server-side completion of the first PUT that covers it."""
    puts = sorted((e for e in log if e["op"] == "PUT"), key=lambda e: e["done"])
    if tool.name == "replicator":
        # Our segment keys carry the txid range; commit k of W1 is txid base + k (the snapshot is txid base).
        positions = []
        for e in puts:
            name = e["key"].rsplit("/", 1)[-1]
            if name.endswith(".seg"):
                positions.append((int(name.split("-")[1], 16), e["done"]))
        base = max((p for p, t in positions if t < start), default=0)
        lags = []
        for k, rec in enumerate(records, start=1):
            covered = next((t for p, t in positions if p >= base + k), None)
            if covered is not None:
                lags.append(max(0.0, covered - rec.done))
        return lags
    if tool.name.startswith("litestream-0.5"):
        # LTX TXIDs count syncs, not commits, and the names carry no WAL position: take the first level-0
        # file completed after the commit (approximate: it can understate by the few ms of an upload).
        level0 = [
            e["done"] for e in puts if ("/0000/" in e["key"] or "/ltx/0/" in e["key"]) and e["key"].endswith(".ltx")
        ]
        return [
            min(t for t in level0 if t >= rec.done) - rec.done for rec in records if any(t >= rec.done for t in level0)
        ]
    # Litestream 0.3: WAL segments named <index>_<offset>; index i+1 follows a WAL restart (salt-1 + 1). The
    # segment holding a commit that ends at offset E is the last one of its WAL life starting before E.
    segments: list[tuple[int, int, float]] = []
    for e in puts:
        name = e["key"].rsplit("/", 1)[-1]
        if name.endswith(".wal.lz4"):
            index, offset = name[: -len(".wal.lz4")].split("_")
            segments.append((int(index, 16), int(offset, 16), e["done"]))
    if not segments or not records:
        return []
    first_index = max((i for i, _, t in segments if t < start), default=min(i for i, _, _ in segments))
    lags = []
    for rec in records:
        index = first_index + ((rec.salt1 - records[0].salt1) & 0xFFFFFFFF)
        holding = [(o, t) for i, o, t in segments if i == index and o < rec.wal_end]
        if holding:
            lags.append(max(0.0, max(holding)[1] - rec.done))
    return lags


# -- scenarios ---------------------------------------------------------------------------------------


def ship(tool: Tool, tmp: Path, plan: Plan, wal_mb: float) -> dict[str, float]:
    """W2 to a local directory: throughput, CPU per WAL MB, memory, WAL growth."""
    work = _fresh(tmp, f"ship-{tool.name}")
    db = work / "app.db"
    wl.seed_database(db)
    replica = Replica("file", work / "replica", None, None, None)
    with replicating(tool, db, replica, interval="1s", work=work) as proc:
        meter = wl.Meter(proc.pid)
        time.sleep(1.0)
        meter.mark()
        with writing(wl.bulk(db, plan.w2_mb * 1_000_000)) as writer:
            start = time.time()
            biggest = 0
            while writer.poll() is None:
                wal = Path(f"{db}-wal")
                if wal.exists():
                    biggest = max(biggest, wal.stat().st_size)
                time.sleep(0.02)
            ended = time.time()
            rows = int(writer.stdout.read().split()[0]) if writer.stdout else 0
        caught = _wait_quiet(replica)
        cpu = meter.cpu_since_mark()
        rss = meter.peak_rss_mb()
    out = work / "restored.db"
    wl.run_metered(tool.restore(replica, out, parallelism=8, workdir=work), {**_env(), **tool.env()})
    assert wl.rows_in(out, "w2") == rows, f"{tool.name}: restored {wl.rows_in(out, 'w2')} rows of {rows}"
    figures = {
        "writer_wal_mb_s": wal_mb / (ended - start),
        "caught_up_s": max(0.0, caught - ended),
        "cpu_s_per_wal_mb": cpu / wal_mb,
        "wal_mb_per_cpu_s": wal_mb / cpu if cpu else float("nan"),
        "peak_rss_mb": rss,
        "max_wal_mb": biggest / 1e6,
        "stored_per_wal_byte": _stored_bytes(replica) / (wal_mb * 1e6),
    }
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return figures


def steady(tool: Tool, tmp: Path, plan: Plan, s3: CountingS3, interval: str, *, rate: float = 200) -> dict[str, Any]:
    """W1 to S3: lag, requests, bytes, CPU, commit latency.

    With a low `rate` it is the sparse-writes case: one commit every few seconds.
    """
    work = _fresh(tmp, f"w1-{tool.name}-{interval}")
    db = work / "app.db"
    _preloaded(tmp, db)
    replica = _s3_replica(s3, "db")
    out = work / "commits.json"
    seconds = plan.w1_seconds if rate >= 1 else plan.sparse_seconds
    with replicating(tool, db, replica, interval=interval, work=work) as proc:
        meter = wl.Meter(proc.pid)
        _wait_quiet(replica, quiet=2.0)
        meter.mark()
        start = time.time()
        with writing(wl.steady(db, seconds, rate, out)) as writer:
            writer.wait()
        time.sleep(2.0)  # the last sync: within one interval plus an upload (lag p99 <= 1.3 s at 1 s for all)
        ended = time.time()
        cpu = meter.cpu_since_mark()
        rss = meter.peak_rss_mb()
    log = [e for e in s3.log(start - 5) if e["bucket"] == replica.bucket]
    records = wl.commits(out)
    lags = _lags(tool, [e for e in log if e["done"] <= ended], records, start)
    minutes = (ended - start) / 60
    window = _counts(log, start, ended)
    uploaded = sum(e["bytes_in"] for e in log if e["op"] == "PUT" and start <= e["done"] <= ended)
    wal_bytes = _w1_wal_bytes(records)
    _empty(replica)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return {
        "lag_p50_s": _pct(lags, 0.5),  # Litestream 0.5: approximate, see _lags
        "lag_p99_s": _pct(lags, 0.99),
        "lag_max_s": max(lags) if lags else float("nan"),
        "lag_matched": len(lags) / len(records) if records else 0.0,
        "put_per_min": window.get("PUT", 0) / minutes,
        "get_per_min": window.get("GET", 0) / minutes,
        "list_per_min": window.get("LIST", 0) / minutes,
        "head_per_min": window.get("HEAD", 0) / minutes,
        "uploaded_per_wal_byte": uploaded / wal_bytes if wal_bytes else float("nan"),
        "cpu_s_per_min": cpu / minutes,
        "peak_rss_mb": rss,
        **_commit_latency(records),
        "monthly_request_usd": (window.get("PUT", 0) + window.get("LIST", 0)) / minutes * 43200 * PUT_PRICE
        + window.get("GET", 0) / minutes * 43200 * GET_PRICE,
    }


def alone(tmp: Path, plan: Plan) -> dict[str, float]:
    """W1 with no replication: the app's own commit latency, the baseline for the figures above."""
    work = _fresh(tmp, "alone")
    db = work / "app.db"
    _preloaded(tmp, db)
    out = work / "commits.json"
    with writing(wl.steady(db, plan.alone_seconds, 200, out)) as writer:
        writer.wait()
    records = wl.commits(out)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return _commit_latency(records)


def _commit_latency(records: list[wl.CommitRecord]) -> dict[str, float]:
    """The app's commit latency p50 and p99, in milliseconds."""
    latencies = [r.latency for r in records]
    return {"commit_p50_ms": _pct(latencies, 0.5) * 1e3, "commit_p99_ms": _pct(latencies, 0.99) * 1e3}


@dataclass(frozen=True)
class Attached:
    replica: Replica
    work: Path
    db: Path


@contextmanager
def _closed_on_error(stack: ExitStack) -> Iterator[None]:
    try:
        yield
    except BaseException:
        stack.close()
        raise


def _attach_all(tools: list[Tool], tmp: Path, s3: CountingS3, stack: ExitStack, name: str) -> dict[str, Attached]:
    """Every tool replicating its own copy of the preloaded database to its own bucket, snapshots stored.

    The processes are stopped when `stack` closes (here already, if attaching any of them fails).
    """
    attached: dict[str, Attached] = {}
    with _closed_on_error(stack):
        for tool in tools:
            work = _fresh(tmp, f"{name}-{tool.name}")
            db = work / "app.db"
            _preloaded(tmp, db)
            replica = _s3_replica(s3, "db")
            stack.enter_context(replicating(tool, db, replica, interval="1s", work=work))
            attached[tool.name] = Attached(replica, work, db)
        for a in attached.values():
            _wait_quiet(a.replica, quiet=2.0)
    return attached


class Idle:
    """W5: every tool attached to its own database that nobody writes; requests per minute after start-up.

    Runs in the background while other scenarios run (an idle tool uses well under 1% of a core, and the
    figure is a request count, which does not depend on the machine's load); `finish` waits out the window.
    """

    def __init__(self, tools: list[Tool], tmp: Path, s3: CountingS3, seconds: float) -> None:
        self.s3, self.seconds = s3, seconds
        self.stack = ExitStack()
        self.running = _attach_all(tools, tmp, s3, self.stack, "w5")
        self.since = time.time()

    def finish(self) -> dict[str, dict[str, float]]:
        time.sleep(max(0.0, self.since + self.seconds - time.time()))
        until = self.since + self.seconds
        log = self.s3.log(self.since)
        self.stack.close()
        figures = {}
        for tool in self.running:
            replica = self.running[tool].replica
            counts = _counts([e for e in log if e["bucket"] == replica.bucket], self.since, until)
            figures[tool] = {f"{op.lower()}_per_min": counts.get(op, 0) / (self.seconds / 60) for op in OPS}
            figures[tool]["requests_per_min"] = sum(counts.values()) / (self.seconds / 60)
            _empty(replica)
        return figures


class History:
    """W4's history: a snapshot plus `w4_seconds` of W1 for every tool AT ONCE (each its own db, writer, bucket).

    Built at the same time for all tools, and in the background of the sparse-writes scenario, to keep the
    full run under 45 minutes: W4 measures the restore afterwards, run alone, and the history's shape (one
    segment per sync interval) does not depend on the machine's load. `finish` waits for the writers, lets
    the tools sync, stops them and returns each tool's replica and work directory.
    """

    def __init__(self, tools: list[Tool], tmp: Path, plan: Plan, s3: CountingS3) -> None:
        self.stack = ExitStack()
        self.made = _attach_all(tools, tmp, s3, self.stack, "w4")
        with _closed_on_error(self.stack):
            self.writers = [
                self.stack.enter_context(writing(wl.steady(a.db, plan.w4_seconds, 200, a.work / "commits.json")))
                for a in self.made.values()
            ]

    def finish(self) -> dict[str, Attached]:
        with self.stack:
            for writer in self.writers:
                writer.wait()
            time.sleep(3.0)
        return self.made


def _w1_wal_bytes(records: list[wl.CommitRecord]) -> int:
    """WAL bytes the W1 run wrote: the sum of each WAL life's committed end."""
    total, life, end = 0, None, 0
    for rec in records:
        if rec.salt1 != life:
            total += end
            life, end = rec.salt1, 32
        end = max(end, rec.wal_end)
    return total + end


def _counts(log: list[dict[str, Any]], since: float, until: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in log:
        if since <= e["done"] <= until:
            counts[e["op"]] = counts.get(e["op"], 0) + 1
    return counts


def restore_figures(
    tool: Tool, s3: CountingS3, replica: Replica, work: Path, plan: Plan, *, check: Callable[[Path], None]
) -> list[dict[str, float]]:
    """Restore wall time, peak RSS and requests at parallelism 1 and 8, `plan.repeat` times each.

    One untimed restore first: moto serves the first GET of a freshly written object several times slower
    than later ones (server-side), which would otherwise be charged to whichever restore came first.
    """
    env = {**_env(), **tool.env()}
    out = work / "restored.db"
    wl.run_metered(tool.restore(replica, out, parallelism=8, workdir=work), env)
    check(out)
    out.unlink()
    runs = []
    for _ in range(plan.repeat):
        figures: dict[str, float] = {}
        for parallelism in (1, 8):
            before = time.time()
            wall, rss, _ = wl.run_metered(tool.restore(replica, out, parallelism=parallelism, workdir=work), env)
            counts = _counts(s3.log(before), before, time.time())
            check(out)
            out.unlink()
            figures[f"wall_s_p{parallelism}"] = wall
            figures[f"rss_mb_p{parallelism}"] = rss
            figures[f"gets_p{parallelism}"] = counts.get("GET", 0)
            figures[f"lists_p{parallelism}"] = counts.get("LIST", 0) + counts.get("HEAD", 0)
        runs.append(figures)
    return runs


def big_restore(tool: Tool, tmp: Path, plan: Plan, s3: CountingS3, seed: Path) -> list[dict[str, float]]:
    """W3: the tool snapshots a big database to S3 (its start-up cost); then it is restored from that alone."""
    work = _fresh(tmp, f"w3-{tool.name}")
    db = work / "app.db"
    subprocess.run(["cp", "--sparse=never", str(seed), str(db)], check=True)
    replica = _s3_replica(s3, "db")
    with replicating(tool, db, replica, interval="1s", work=work) as proc:
        meter = wl.Meter(proc.pid)
        _wait_quiet(replica, quiet=5.0, limit=300)
        startup_cpu = meter.cpu()  # from process start until the replica stopped changing: its start-up cost
    rows = wl.rows_in(seed, "big")

    def check(out: Path) -> None:
        assert wl.rows_in(out, "big") == rows, f"{tool.name}: W3 restore has {wl.rows_in(out, 'big')} of {rows} rows"

    runs = restore_figures(tool, s3, replica, work, plan, check=check)
    stored_mb = _stored_bytes(replica) / 1e6
    for figures in runs:
        figures["stored_mb"] = stored_mb
        figures["startup_cpu_s"] = startup_cpu
    _empty(replica)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    return runs


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# -- the run -----------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    keys = [k for k in runs[0] if not k.startswith("_") and isinstance(runs[0][k], int | float)]
    return {k: (statistics.median(r[k] for r in runs), min(r[k] for r in runs), max(r[k] for r in runs)) for k in keys}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter workloads, one run each (~20 minutes)")
    parser.add_argument("--full", action="store_true", help="also the 1 GB W2 burst")
    parser.add_argument("--repeat", type=int, help="runs per measurement (default 3, 1 with --quick)")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, help="a subset")
    parser.add_argument("--tools", nargs="*", default=["replicator", "0.3.13", "0.5.17"])
    args = parser.parse_args(argv)
    # Stop every tool, writer and the S3 server on SIGTERM or SIGINT too (the finally blocks do it): a run
    # started in the background by a shell has SIGINT ignored, and SIGTERM would otherwise skip them.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    os.environ.update(_env())  # our own listings of the S3 replica use the bench credentials too
    plan = Plan(args.quick, args.full, args.repeat or (1 if args.quick else 3))
    only = set(args.only or SCENARIOS)
    CACHE.mkdir(exist_ok=True)
    tools = [ours() if t == "replicator" else litestream(t, CACHE) for t in args.tools]
    results: dict[str, dict[str, Any]] = {t.name: {} for t in tools}
    started = time.monotonic()

    phases: dict[str, float] = {}

    def timed(phase: str) -> Callable[[], None]:
        began = time.monotonic()
        return lambda: phases.__setitem__(phase, round(time.monotonic() - began, 1))

    def record(tool: Tool, scenario: str, runs: list[dict[str, Any]]) -> None:
        results[tool.name][scenario] = _median(runs)
        print(tool.name, scenario, results[tool.name][scenario], flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-") as name, CountingS3() as s3:
        tmp = Path(name)
        if "ceilings" in only:
            results["machine"] = {"ceilings": _ceilings(tmp)}
            print("machine ceilings:", results["machine"]["ceilings"], flush=True)
        idle = Idle(tools, tmp, s3, plan.w5_seconds) if "w5" in only else None
        try:
            if "ship" in only:
                done = timed("ship")
                wal_mb = wl.wal_bytes_of_bulk(tmp, plan.w2_mb * 1_000_000)
                for tool in tools:
                    record(tool, "W2 ship (file)", [ship(tool, tmp, plan, wal_mb) for _ in range(plan.repeat)])
                done()
            for scenario, interval, rate, key in [
                ("W1 1s (s3)", "1s", 200.0, "w1"),
                ("W1 100ms (s3)", "100ms", 200.0, "w1-100ms"),
            ]:
                if key in only:
                    done = timed(key)
                    for tool in tools:
                        runs = [steady(tool, tmp, plan, s3, interval, rate=rate) for _ in range(plan.repeat)]
                        record(tool, scenario, runs)
                    done()
            if "w1" in only:
                done = timed("alone")
                results["no replication"] = {"W1 alone": _median([alone(tmp, plan) for _ in range(plan.repeat)])}
                done()
        finally:
            idle_figures = idle.finish() if idle else {}
        for tool in tools:
            if tool.name in idle_figures:
                results[tool.name]["W5 idle (s3)"] = {k: (v, v, v) for k, v in idle_figures[tool.name].items()}
        done = timed("w4 history + sparse")
        building = History(tools, tmp, plan, s3) if "w4" in only else None
        try:
            if "sparse" in only:
                for tool in tools:
                    runs = [steady(tool, tmp, plan, s3, "1s", rate=1 / 3) for _ in range(plan.repeat)]
                    record(tool, "W1 sparse, 1 commit / 3 s, 1s (s3)", runs)
        finally:
            made = building.finish() if building else {}
        done()
        if made:
            done = timed("w4 restores")
            for tool in tools:
                replica, work = made[tool.name].replica, made[tool.name].work
                rows = len(wl.commits(work / "commits.json"))

                def check(out: Path, tool: Tool = tool, rows: int = rows) -> None:
                    got = wl.rows_in(out, "w1")
                    assert got == rows, f"{tool.name}: W4 restore has {got} of {rows} committed rows"

                record(tool, "W4 restore (s3)", restore_figures(tool, s3, replica, work, plan, check=check))
                _empty(replica)
            done()
        if "w3" in only:
            done = timed("w3")
            seed = tmp / "w3-seed.db"
            wl.seed_database(seed, preload_mb=plan.w3_mb)
            for tool in tools:
                record(tool, "W3 restore (s3)", big_restore(tool, tmp, plan, s3, seed))
            done()
        results["run"] = {
            "seconds": time.monotonic() - started,
            "phases": phases,
            "quick": plan.quick,
            "repeat": plan.repeat,
            "moto_cpu_s": s3.server_cpu_seconds(),
        }  # type: ignore[dict-item]
    # A partial run gets its own file name, so it never overwrites a complete run's results.
    suffix = "-quick" * plan.quick + "-full" * plan.full + "".join(f"-{n}" for n in sorted(only) if args.only)
    _report(results, [t.name for t in tools], plan, suffix)
    if "history" in only:
        from . import bench_history

        servers = ["moto", "rgw"] if shutil.which("radosgw") else ["moto"]
        bench_history.measure(5 if plan.quick else 60, servers, args.tools, plan.repeat)


def _ceilings(tmp: Path) -> dict[str, float]:
    """The machine's own limits, measured now: sequential read from page cache, zstd level 1 alone."""
    import zstandard

    data = os.urandom(32 << 20) + bytes(32 << 20)
    path = tmp / "ceiling.bin"
    path.write_bytes(data)
    buf = bytearray(8 << 20)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    read = len(data) / (time.perf_counter() - t0) / 1e6
    t0 = time.perf_counter()
    zstandard.ZstdCompressor(level=1).compress(data)
    zstd = len(data) / (time.perf_counter() - t0) / 1e6
    path.unlink()
    return {"page_cache_read_mb_s": read, "zstd1_mb_s": zstd}


def _report(results: dict[str, dict[str, Any]], names: list[str], plan: Plan, suffix: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    (RESULTS / f"{stamp}{suffix}.json").write_text(json.dumps(results, indent=2, default=str))
    ours_name, theirs = names[0], names[1:]
    lines = [
        f"# Benchmarks {stamp}{suffix} ({plan.repeat} run(s) each; median [min-max])",
        "",
        "Ratios are ours / theirs: below 1 is better for times, CPU, memory, requests and bytes;",
        "above 1 is better for throughput.",
        "S3 figures use moto's server (one Python process) on 127.0.0.1; it, not the tools, may be the ceiling.",
        "",
    ]
    scenarios = sorted({s for n in names for s in results.get(n, {})})
    for scenario in scenarios:
        lines += [
            f"## {scenario}",
            "",
            "| figure | " + " | ".join(names) + " | " + " | ".join(f"ratio vs {t}" for t in theirs) + " |",
        ]
        lines.append("|---|" + "---|" * (len(names) + len(theirs)))
        figures = results[ours_name].get(scenario, {})
        for fig in figures:
            cells = []
            for n in names:
                v = results.get(n, {}).get(scenario, {}).get(fig)
                cells.append(
                    "-" if v is None else f"{v[0]:.3g} [{v[1]:.3g}-{v[2]:.3g}]" if v[1] != v[2] else f"{v[0]:.3g}"
                )
            ratios = []
            for t in theirs:
                a = figures[fig][0]
                b = results.get(t, {}).get(scenario, {}).get(fig, (float("nan"),))[0]
                ratios.append(f"{a / b:.2f}" if b and not math.isnan(b) and not math.isnan(a) else "-")
            lines.append(f"| {fig} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines.append("")
    if "no replication" in results:
        alone = results["no replication"]["W1 alone"]
        lines += [
            "## App commit latency without replication (W1)",
            "",
            f"p50 {alone['commit_p50_ms'][0]:.3f} ms, p99 {alone['commit_p99_ms'][0]:.3f} ms",
            "",
        ]
    if "machine" in results:
        lines += ["## Machine ceilings (this run)", "", json.dumps(results["machine"]["ceilings"]), ""]
    lines += [f"Run time: {results['run']['seconds']:.0f} s; moto used {results['run']['moto_cpu_s']:.1f} CPU-s.", ""]
    text = "\n".join(lines)
    (RESULTS / f"{stamp}{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
