"""W4 over a long history, on moto and on a real Ceph RGW at once: what restore costs after an hour of W1.

    python -m benchmarks.bench_history [--minutes 60] [--servers moto rgw] [--tools replicator 0.3.13 0.5.17]

Every tool replicates its own copy of the 20 MB preloaded database to its own bucket on each server, all at
the same time (a tool, a server, a writer each: six lanes), while a W1 writer commits 200 one-row
transactions a second for `--minutes`. The history's shape (one object per sync interval, whatever a tool
compacts) does not depend on the machine's load, so the lanes share the two cores. Then, with every tool
stopped, each lane is restored alone: the latest state at parallelism 1 and 8 (after one untimed restore:
a fresh object's first read is slow on moto), and the state half the history back (30 minutes for an hour).

Figures per lane: uploads over the history (PUT requests and bytes), stored bytes at the end, and for each
restore its wall time (whole process), peak RSS, GETs, bytes read, and for the point in time how many
committed rows it holds against the rows committed by then (precision). Uploads are also given against
"compressed database + compressed changes": the snapshot and shipped segments we upload, without the
compacted ones (the same content for every tool: one workload, one seed).

Requests are counted where they arrive: moto's counting middleware (s3server.py), and RGW's own usage log
(`radosgw-admin usage show`, flushed every second). RGW needs Ceph's Debian packages (tests/rgw.py).
Writes benchmarks/results/<date>-history-<minutes>m.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import boto3

from . import tools as tl
from . import workloads as wl
from .s3server import CountingS3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rgw import RgwCluster

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
RATE = 200.0  # W1's commits per second
USAGE_LOG = "rgw enable usage log = true\nrgw usage log tick interval = 1\nrgw usage log flush threshold = 1\n"


@dataclass
class Usage:
    """Requests one bucket has served so far, by S3 billing class, with the bytes in and out."""

    ops: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, op: str, count: int, bytes_in: int, bytes_out: int) -> None:
        self.ops[op] = self.ops.get(op, 0) + count
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def minus(self, before: Usage) -> Usage:
        ops = {op: n - before.ops.get(op, 0) for op, n in self.ops.items()}
        return Usage(ops, self.bytes_in - before.bytes_in, self.bytes_out - before.bytes_out)


class Server(Protocol):
    name: str
    endpoint: str

    def bucket(self) -> str: ...

    def usage(self, bucket: str) -> Usage: ...


class Moto:
    name = "moto"

    def __init__(self, s3: CountingS3) -> None:
        self.s3, self.endpoint = s3, s3.endpoint

    def bucket(self) -> str:
        name = f"h-{uuid.uuid4().hex[:10]}"
        self.s3.create_bucket(name)
        return name

    def usage(self, bucket: str) -> Usage:
        usage = Usage()
        for e in self.s3.log():
            if e["bucket"] == bucket:
                usage.add(e["op"], 1, e["bytes_in"], e["bytes_out"])
        return usage

    def put_bytes_by_kind(self, bucket: str) -> dict[str, int]:
        """Bytes PUT under each of our key kinds (snapshots, segments, levels): the amplification's parts."""
        kinds: dict[str, int] = {}
        for e in self.s3.log():
            key = "/" + e["key"]
            if e["bucket"] == bucket and e["op"] == "PUT" and "/generations/" in key:
                kind = key.split("/generations/", 1)[1].split("/")[1]
                kinds[kind] = kinds.get(kind, 0) + e["bytes_in"]
        return kinds


_RGW_CLASS = {"get_obj": "GET", "list_bucket": "LIST", "stat_obj": "HEAD", "delete_obj": "DELETE"}


class Rgw:
    name = "rgw"

    def __init__(self, cluster: RgwCluster) -> None:
        self.cluster, self.endpoint = cluster, cluster.endpoint
        self.client = boto3.client(
            "s3",
            endpoint_url=cluster.endpoint,
            aws_access_key_id=cluster.access_key,
            aws_secret_access_key=cluster.secret_key,
            region_name=tl.REGION,
        )

    def bucket(self) -> str:
        name = f"h-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=name)
        return name

    def usage(self, bucket: str) -> Usage:
        time.sleep(2.5)  # the usage log is flushed every second
        shown = json.loads(self.cluster.admin("usage", "show", "--uid=replicator-tests", "--show-log-entries=true"))
        usage = Usage()
        for entry in shown["entries"]:
            for b in entry["buckets"]:
                if b["bucket"] != bucket:
                    continue
                for c in b["categories"]:
                    op = _RGW_CLASS.get(
                        c["category"], "PUT" if "put" in c["category"] or "multipart" in c["category"] else "OTHER"
                    )
                    usage.add(op, c["ops"], c["bytes_received"], c["bytes_sent"])
        return usage


@dataclass
class Lane:
    """One tool replicating its own database to its own bucket on one server."""

    tool: tl.Tool
    server: Server
    work: Path
    replica: tl.Replica

    @property
    def db(self) -> Path:
        return self.work / "app.db"

    @property
    def name(self) -> str:
        return f"{self.tool.name} on {self.server.name}"


def stored_bytes(client: Any, bucket: str, prefix: str) -> int:
    """What a replica holds, in bytes (one LIST pass)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(o["Size"] for page in pages for o in page.get("Contents", []))


def wait_quiet(client: Any, bucket: str, prefix: str, quiet: float = 5.0, limit: float = 600.0) -> None:
    """Until the replica holds something and has not changed for `quiet` seconds: the tool has caught up."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        size = stored_bytes(client, bucket, prefix)
        if size != last:
            last, since = size, time.monotonic()
        elif size and time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)
    raise RuntimeError(f"s3://{bucket}/{prefix} never settled")


def _client(lane: Lane) -> Any:
    keys = {"aws_access_key_id": tl.ACCESS_KEY, "aws_secret_access_key": tl.SECRET_KEY}
    return boto3.client("s3", endpoint_url=lane.server.endpoint, region_name=tl.REGION, **keys)


def _stored(lane: Lane) -> int:
    return stored_bytes(_client(lane), lane.replica.bucket or "", lane.replica.prefix or "")


def _wait_quiet(lane: Lane, quiet: float = 5.0) -> None:
    wait_quiet(_client(lane), lane.replica.bucket or "", lane.replica.prefix or "", quiet)


@contextmanager
def _servers(names: list[str], memstore_bytes: int) -> Iterator[list[Server]]:
    with ExitStack() as stack:
        servers: list[Server] = []
        if "rgw" in names:
            cluster = RgwCluster(memstore_bytes=memstore_bytes, rgw_options=USAGE_LOG).start()
            stack.callback(cluster.stop)
            tl.ACCESS_KEY, tl.SECRET_KEY = cluster.access_key, cluster.secret_key  # moto takes any keys
            servers.append(Rgw(cluster))
        if "moto" in names:
            servers.append(Moto(stack.enter_context(CountingS3())))
        yield servers


def _restore(lane: Lane, out: Path, parallelism: int, timestamp: str | None = None) -> dict[str, float]:
    before = lane.server.usage(lane.replica.bucket)
    argv = lane.tool.restore(lane.replica, out, parallelism=parallelism, workdir=lane.work, timestamp=timestamp)
    wall, rss, code = wl.run_metered(argv, lane.tool.env())
    if code != 0:
        raise RuntimeError(f"{lane.name}: restore exited {code}: {argv}")
    used = lane.server.usage(lane.replica.bucket).minus(before)
    rows = wl.rows_in(out, "w1")
    out.unlink()
    lists = used.ops.get("LIST", 0) + used.ops.get("HEAD", 0)
    return {
        "wall_s": wall,
        "rss_mb": rss,
        "gets": used.ops.get("GET", 0),
        "lists": lists,
        "mb_read": used.bytes_out / 1e6,
        "rows": rows,
    }


def run(minutes: float, servers: list[str], tool_names: list[str], repeat: int) -> dict[str, Any]:
    tool_list = [tl.ours() if n == "replicator" else tl.litestream(n, CACHE) for n in tool_names]
    results: dict[str, Any] = {"minutes": minutes, "rate": RATE, "lanes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp_name, ExitStack() as running:
        tmp = Path(tmp_name)
        template = tmp / "preloaded.db"
        wl.seed_database(template, preload_mb=20)
        with _servers(servers, memstore_bytes=6 << 30) as live:
            lanes = []
            for server in live:
                for tool in tool_list:
                    work = tmp / f"{server.name}-{tool.name}"
                    work.mkdir()
                    lane = Lane(tool, server, work, tl.Replica.s3(server.bucket(), tool.name, server.endpoint))
                    shutil.copyfile(template, lane.db)
                    proc = tool.start(lane.db, lane.replica, sync_interval="1s", workdir=work)
                    running.callback(tool.stop, proc)
                    lanes.append(lane)
            for lane in lanes:
                _wait_quiet(lane, quiet=2.0)
            print(f"{len(lanes)} lanes replicating; writing for {minutes} min", flush=True)
            writers = [wl.steady(lane.db, minutes * 60, RATE, lane.work / "commits.json") for lane in lanes]
            for writer in writers:
                running.callback(lambda w=writer: w.poll() is None and w.kill())
            for writer in writers:
                writer.wait()
            for lane in lanes:
                _wait_quiet(lane)
            uploads = {lane.name: lane.server.usage(lane.replica.bucket) for lane in lanes}
            running.close()  # every tool stopped: the restores run alone
            ours_parts = {
                lane.server.name: lane.server.put_bytes_by_kind(lane.replica.bucket)
                for lane in lanes
                if isinstance(lane.server, Moto) and lane.tool.name == "replicator"  # keys are counted on moto
            }
            for lane in lanes:
                results["lanes"][lane.name] = _lane_figures(lane, uploads[lane.name], repeat, minutes)
                print(lane.name, json.dumps(results["lanes"][lane.name]), flush=True)
            results["ours_put_bytes_by_kind"] = ours_parts
    return results


def _lane_figures(lane: Lane, uploads: Usage, repeat: int, minutes: float) -> dict[str, Any]:
    commits = wl.commits(lane.work / "commits.json")
    back = datetime.fromtimestamp(int(commits[-1].done - minutes * 30), UTC)  # half the history back
    out = lane.work / "restored.db"
    figures: dict[str, Any] = {
        "put_requests": uploads.ops.get("PUT", 0),
        "uploaded_mb": uploads.bytes_in / 1e6,
        "stored_mb": _stored(lane) / 1e6,
        "commits": len(commits),
    }
    _restore(lane, out, 8)  # untimed: a fresh object's first read
    for parallelism in (1, 8):
        runs = [_restore(lane, out, parallelism) for _ in range(repeat)]
        assert all(r["rows"] == len(commits) for r in runs), f"{lane.name}: latest lacks committed rows: {runs}"
        figures[f"latest_p{parallelism}"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    point = _restore(lane, out, 8, back.isoformat().replace("+00:00", "Z"))
    point["rows_committed_by_then"] = sum(c.done <= back.timestamp() for c in commits)
    figures["point_p8"] = point
    return figures


def _report(results: dict[str, Any], tool_names: list[str], servers: list[str]) -> str:
    names = ["replicator" if n == "replicator" else f"litestream-{n}" for n in tool_names]
    lanes = results["lanes"]
    parts = results.get("ours_put_bytes_by_kind", {}).get("moto", {})
    base = (parts.get("snapshots", 0) + parts.get("segments", 0)) / 1e6
    lines = [
        f"# W4 after {results['minutes']:g} minutes of W1 ({results['rate']:g} tx/s), {datetime.now(UTC):%Y-%m-%d}",
        "",
        "Cells: " + " / ".join(names) + "; ratios ours / each Litestream. Restores run alone after the history.",
        f"Compressed database + compressed changes (our snapshot and shipped segments): {base:.1f} MB; "
        f"our compacted segments: {parts.get('levels', 0) / 1e6:.1f} MB.",
        "",
        "| server | figure | " + " / ".join(names) + " | " + " | ".join(f"vs {n}" for n in names[1:]) + " |",
        "|---|---|---|" + "---|" * (len(names) - 1),
    ]
    rows: list[tuple[str, Any]] = [
        ("uploads: PUTs", lambda f: f["put_requests"]),
        ("uploads: MB", lambda f: f["uploaded_mb"]),
        ("uploads / (db + changes)", lambda f: f["uploaded_mb"] / base if base else float("nan")),
        ("stored at the end: MB", lambda f: f["stored_mb"]),
    ]
    for what in ("latest_p1", "latest_p8", "point_p8"):
        for key, label in (("wall_s", "wall s"), ("gets", "GETs"), ("mb_read", "MB read"), ("rss_mb", "peak RSS MB")):
            rows.append((f"{what}: {label}", lambda f, w=what, k=key: f[w][k]))
    rows.append(
        (
            "point_p8: rows short of the moment",
            lambda f: f["point_p8"]["rows_committed_by_then"] - f["point_p8"]["rows"],
        )
    )
    for server in servers:
        for label, get in rows:
            try:
                values = [float(get(lanes[f"{n} on {server}"])) for n in names]
            except KeyError:
                continue
            ratios = [values[0] / v if v else float("nan") for v in values[1:]]
            cells = " / ".join(f"{v:.3g}" for v in values)
            lines.append(f"| {server} | {label} | {cells} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_history", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0, help="history length (default 60)")
    parser.add_argument("--servers", nargs="+", default=["moto", "rgw"], choices=["moto", "rgw"])
    parser.add_argument("--tools", nargs="+", default=["replicator", "0.3.13", "0.5.17"])
    parser.add_argument("--repeat", type=int, default=3, help="timed restores of the latest state per parallelism")
    args = parser.parse_args(argv)
    measure(args.minutes, args.servers, args.tools, args.repeat)


def measure(minutes: float, servers: list[str], tool_names: list[str], repeat: int) -> None:
    """Run, print the table and write results/<date>-history-<minutes>m.md and .json."""
    results = run(minutes, servers, tool_names, repeat)
    report = _report(results, tool_names, servers)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-history-{minutes:g}m"
    stem.with_suffix(".md").write_text(report)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
