"""Many databases in one process: `replicate --dir` against Litestream 0.5.17's directory mode, same layout.

    python -m benchmarks.bench_store [--quick] [--dbs 1000] [--busy 50] [--rate 20] [--replicas file s3]

A directory of N small databases (copies of one seeded file), one tool process replicating all of it with a
1 s sync interval. Once every database has reached the replica (start-up), a writer process (stdlib sqlite3,
synchronous=NORMAL) commits one row at a time to the first `--busy` databases at `--rate` commits per second
each, for the measurement window; halfway through it, a new database is created in the directory. Figures:

- start-up: seconds until every database has an object in the replica
- peak RSS (VmHWM, start-up included) and RSS at the end
- CPU-s per minute over the window (and as a share of one core); moto's own CPU is reported apart
- requests (s3) or files written (file) for the idle databases during the window: the target is zero
- busy databases' lag from each commit to the completion of the first upload holding it (run.py's `_lags`)
- new database picked up: from its first commit until its first object is stored

Results: benchmarks/results/<date>-store.md and .json. Not part of the test suite (no timed assertions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .run import _lags, _pct
from .s3server import CountingS3
from .tools import Replica, Tool, litestream, ours

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
SYNC = "1s"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Commit:
    """One commit of the writer (what run._lags reads of a record)."""

    done: float


def _template(work: Path) -> Path:
    db = work / "template.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    conn.execute("INSERT INTO t VALUES (1, randomblob(200), 'seed')")
    conn.commit()
    conn.close()
    return db


def _layout(directory: Path, template: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True)
    dbs = [directory / f"t{i:04d}.db" for i in range(count)]
    for db in dbs:
        shutil.copyfile(template, db)
    return dbs


def write(directory: Path, busy: int, rate: float, seconds: float, log: Path) -> None:
    """The app (run as `--write`): one commit at a time, round-robin over the busy databases."""
    conns = []
    for i in range(busy):
        conn = sqlite3.connect(directory / f"t{i:04d}.db", isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        conns.append(conn)
    period = 1.0 / (rate * busy)
    next_at = start = time.monotonic()
    n = 0
    with open(log, "w") as out:
        while time.monotonic() - start < seconds:
            i = n % busy
            conns[i].execute("INSERT INTO t(payload, note) VALUES (randomblob(200), 'w')")
            out.write(f"{i} {time.time():.6f}\n")
            n += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _proc_mem(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1000
    return float("nan")


class Observed:
    """What the replica shows: one entry per stored object, {"op": "PUT", "key": "<db>/...", "done": time}."""

    def __init__(self, replica: Replica, s3: CountingS3 | None) -> None:
        self.replica, self.s3 = replica, s3

    def entries(self, since: float | None = None) -> list[dict[str, Any]]:
        if self.s3 is not None:
            prefix = f"{self.replica.bucket}/{self.replica.prefix}/"
            found = []
            for e in self.s3.log(since):
                key = e.get("key") or ""
                full = f"{e.get('bucket')}/{key}" if e.get("bucket") else key
                if full.startswith(prefix):
                    found.append({**e, "key": full[len(prefix) :]})
                elif key.startswith(f"{self.replica.prefix}/"):
                    found.append({**e, "key": key[len(self.replica.prefix) + 1 :]})
                elif e.get("op") == "LIST":
                    found.append({**e, "key": key})
            return found
        assert self.replica.path is not None
        found = []
        for path in self.replica.path.rglob("*"):
            if path.is_file():
                done = path.stat().st_mtime
                if since is None or done >= since:
                    found.append({"op": "PUT", "key": str(path.relative_to(self.replica.path)), "done": done})
        return found

    def databases(self) -> set[str]:
        return {e["key"].split("/", 1)[0] for e in self.entries() if e["op"] == "PUT" and "/" in e["key"]}


def run_one(tool: Tool, kind: str, args: argparse.Namespace, work: Path, s3: CountingS3 | None) -> dict[str, Any]:
    work.mkdir(parents=True)
    directory = work / "tenants"
    _layout(directory, _template(work), args.dbs)
    if kind == "file":
        replica = Replica("file", work / "replica")
    else:
        assert s3 is not None
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        s3.create_bucket(bucket)
        s3.reset()
        replica = Replica("s3", None, bucket, "tenants", s3.endpoint)
    seen = Observed(replica, s3)
    began = time.monotonic()
    proc = tool.start_dir(directory, replica, sync_interval=SYNC, workdir=work)
    result: dict[str, Any] = {"tool": tool.name, "replica": kind, "dbs": args.dbs, "busy": args.busy}
    try:
        while len(seen.databases()) < args.dbs and time.monotonic() - began < args.startup_limit:
            time.sleep(0.5)
        result["startup_s"] = round(time.monotonic() - began, 1)
        result["started_dbs"] = len(seen.databases())
        time.sleep(3)  # let start-up uploads and checkpoints settle
        moto_cpu = s3.server_cpu_seconds() if s3 is not None else 0.0
        cpu0, start = _proc_cpu(proc.pid), time.time()
        log = work / "commits.log"
        app = [str(directory), str(args.busy), str(args.rate), str(args.seconds), str(log)]
        writer = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_store", "--write", *app])
        time.sleep(args.seconds / 2)
        new_at = _create(directory / "new.db")
        writer.wait()
        time.sleep(3)  # the last commits' uploads
        end = time.time()
        cpu = _proc_cpu(proc.pid) - cpu0
        minutes = (end - start) / 60
        result["cpu_s_per_min"] = round(cpu / minutes, 2)
        result["core_share"] = round(cpu / (end - start), 3)
        result["peak_rss_mb"] = round(_proc_mem(proc.pid, "VmHWM"), 1)
        result["end_rss_mb"] = round(_proc_mem(proc.pid, "VmRSS"), 1)
        if s3 is not None:
            result["moto_cpu_s"] = round(s3.server_cpu_seconds() - moto_cpu, 1)
        entries = seen.entries()
        window = [e for e in entries if start <= e["done"] <= end]
        names = {f"t{i:04d}.db" for i in range(args.busy)}
        idle = [e for e in window if e["key"].split("/", 1)[0] not in names | {"new.db"}]
        by_op: dict[str, int] = defaultdict(int)
        for e in idle:
            by_op[e["op"]] += 1
        result["idle_requests"] = dict(by_op) if s3 is not None else {"files written": len(idle)}
        busy_ops = [e for e in window if e["key"].split("/", 1)[0] in names]
        result["busy_requests_per_min"] = round(len(busy_ops) / minutes)
        commits: dict[str, list[Commit]] = defaultdict(list)
        for line in log.read_text().splitlines():
            i, t = line.split()
            commits[f"t{int(i):04d}.db"].append(Commit(float(t)))
        lags: list[float] = []
        for name, records in commits.items():
            mine = [{**e, "key": "/" + e["key"]} for e in entries if e["key"].startswith(name + "/")]
            lags += _lags(tool, mine, records, start)  # type: ignore[arg-type]
        matched = sum(len(r) for r in commits.values())
        result["commits"] = matched
        result["lag_matched"] = round(len(lags) / matched, 3) if matched else 0
        result["lag_p50_s"] = round(_pct(lags, 0.5), 3)
        result["lag_p99_s"] = round(_pct(lags, 0.99), 3)
        result["lag_max_s"] = round(max(lags), 3) if lags else float("nan")
        firsts = [e["done"] for e in entries if e["key"].startswith("new.db/") and e["op"] == "PUT"]
        result["new_db_pickup_s"] = round(min(firsts) - new_at, 2) if firsts else None
    finally:
        stopped = time.monotonic()
        tool.stop(proc)
        result["stop_s"] = round(time.monotonic() - stopped, 1)
        result["exit"] = proc.returncode
    return result


def _create(db: Path) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    conn.execute("INSERT INTO t(payload, note) VALUES (randomblob(200), 'new')")
    conn.close()
    return time.time()


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [
        ("start-up until every database is on the replica, s", "startup_s"),
        ("peak RSS (VmHWM, start-up included), MB", "peak_rss_mb"),
        ("RSS at the end, MB", "end_rss_mb"),
        ("CPU-s per minute in the window", "cpu_s_per_min"),
        ("share of one core", "core_share"),
        ("idle databases: requests (s3) / files written (file) in the window", "idle_requests"),
        ("busy databases: requests per minute", "busy_requests_per_min"),
        ("busy lag p50 / p99 / max, s", "lag"),
        ("share of commits matched to an upload", "lag_matched"),
        ("new database: first object after its first commit, s", "new_db_pickup_s"),
        ("stop (SIGTERM to exit), s / exit status", "stop"),
        ("moto CPU-s in the window", "moto_cpu_s"),
    ]
    out = [
        f"# Many databases in one process ({datetime.date.today()})",
        "",
        f"`python -m benchmarks.bench_store {' '.join(sys.argv[1:])}`: {args.dbs} databases, {args.busy} busy at "
        f"{args.rate:g} commits/s each for {args.seconds:g} s, sync interval {SYNC}; this 2-core machine; S3 is "
        "moto on loopback. One run each.",
        "",
    ]
    for kind in args.replicas:
        here = [r for r in results if r["replica"] == kind]
        out += [f"## {kind} replica", "", "| figure | " + " | ".join(r["tool"] for r in here) + " |"]
        out.append("|---|" + "---|" * len(here))
        for label, key in rows:
            cells = []
            for r in here:
                if key == "lag":
                    cells.append(f"{r.get('lag_p50_s')} / {r.get('lag_p99_s')} / {r.get('lag_max_s')}")
                elif key == "stop":
                    cells.append(f"{r.get('stop_s')} / {r.get('exit')}")
                else:
                    cells.append(str(r.get(key, "-")))
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", nargs=5, metavar=("DIR", "BUSY", "RATE", "SECONDS", "LOG"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a 30 s window instead of 60 s")
    parser.add_argument("--dbs", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--startup-limit", type=float, default=300.0)
    parser.add_argument("--replicas", nargs="+", default=["file", "s3"], choices=["file", "s3"])
    parser.add_argument("--tools", nargs="+", default=["replicator", "0.5.17"])
    args = parser.parse_args(argv)
    if args.write:
        d, busy, rate, seconds, log = args.write
        write(Path(d), int(busy), float(rate), float(seconds), Path(log))
        return
    args.seconds = args.seconds or (30.0 if args.quick else 60.0)
    tools = [ours() if name == "replicator" else litestream(name, CACHE) for name in args.tools]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, CountingS3() as s3:
        for kind in args.replicas:
            for tool in tools:
                print(f"{kind}: {tool.name} ...", file=sys.stderr, flush=True)
                result = run_one(tool, kind, args, Path(tmp) / f"{kind}-{tool.name}", s3 if kind == "s3" else None)
                print(json.dumps(result), file=sys.stderr, flush=True)
                results.append(result)
                shutil.rmtree(Path(tmp) / f"{kind}-{tool.name}", ignore_errors=True)
    report = _report(results, args)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{datetime.date.today()}-store{'-quick' if args.quick else ''}"
    stem.with_suffix(".md").write_text(report + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
