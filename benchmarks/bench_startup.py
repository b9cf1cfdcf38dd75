"""Restore start-up: a 1-row database restored from S3, whole process, beside both Litestreams.

    python -m benchmarks.bench_startup [--repeat 10] [--servers moto rgw]

Most of our users' databases are small, so for them restore time is start-up time. Two figures per tool:
- the whole restore's wall time (process start to exit, integrity_check included for ours), on moto and on
  a real Ceph RGW (tests/rgw.py);
- on moto only, when the tool's first request reached the server, from the moment the process was started
  (moto's counting middleware logs when each request arrived; RGW's usage log has no times).
Medians of `--repeat` runs after one untimed run. Writes benchmarks/results/<date>-startup.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from . import tools as tl
from . import workloads as wl
from .bench_history import CACHE, RESULTS, Lane, Moto, Server, _servers, _wait_quiet


def _one_row(path: Path) -> None:
    wl.seed_database(path)
    conn = wl.sqlite3.connect(path)
    conn.execute("INSERT INTO w1(b, t) VALUES (x'00', 'one row')")
    conn.commit()
    conn.close()


def _first_request_s(server: Moto, bucket: str, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds from process start to its first request's arrival, wall seconds of the whole process)."""
    started = time.time()
    t0 = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    arrived = [e["arrived"] for e in server.s3.log(started) if e["bucket"] == bucket]
    return min(arrived) - started, wall


def run(servers: list[str], tool_names: list[str], repeat: int) -> dict[str, dict[str, float]]:
    tool_list = [tl.ours() if n == "replicator" else tl.litestream(n, CACHE) for n in tool_names]
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp_name, _servers(servers, 2 << 30) as live:
        tmp = Path(tmp_name)
        for server in live:
            for tool in tool_list:
                lane = _replicated(tool, server, tmp)
                out = lane.work / "restored.db"
                argv = lane.tool.restore(lane.replica, out, parallelism=8, workdir=lane.work)
                walls, firsts = [], []
                for attempt in range(repeat + 1):
                    if isinstance(server, Moto):
                        assert lane.replica.bucket is not None
                        first, wall = _first_request_s(server, lane.replica.bucket, argv, tool.env())
                    else:
                        wall, _, code = wl.run_metered(argv, tool.env())
                        assert code == 0, f"{lane.name}: restore exited {code}"
                        first = float("nan")
                    assert wl.rows_in(out, "w1") == 1, f"{lane.name}: the row is missing"
                    out.unlink()
                    if attempt:
                        walls.append(wall)
                        firsts.append(first)
                figures[lane.name] = {"wall_s": statistics.median(walls), "first_request_s": statistics.median(firsts)}
                print(lane.name, figures[lane.name], flush=True)
    return figures


def _replicated(tool: tl.Tool, server: Server, tmp: Path) -> Lane:
    work = tmp / f"{server.name}-{tool.name}"
    work.mkdir()
    lane = Lane(tool, server, work, tl.Replica.s3(server.bucket(), tool.name, server.endpoint))
    _one_row(lane.db)
    proc = tool.start(lane.db, lane.replica, sync_interval="1s", workdir=work)
    try:
        _wait_quiet(lane, quiet=2.0)
    finally:
        tool.stop(proc)
    return lane


def _report(figures: dict[str, dict[str, float]], tool_names: list[str], servers: list[str]) -> str:
    names = ["replicator" if n == "replicator" else f"litestream-{n}" for n in tool_names]
    lines = [
        f"# Restore of a 1-row database, whole process, {time.strftime('%Y-%m-%d')}",
        "",
        "| server | figure | " + " / ".join(names) + " | " + " | ".join(f"vs {n}" for n in names[1:]) + " |",
        "|---|---|---|" + "---|" * (len(names) - 1),
    ]
    for server in servers:
        for key in ("wall_s", "first_request_s"):
            values = [figures[f"{n} on {server}"][key] for n in names]
            if any(math.isnan(v) for v in values):
                continue  # not measured on this server
            ratios = " | ".join(f"{values[0] / v:.2f}" for v in values[1:])
            lines.append(f"| {server} | {key} | " + " / ".join(f"{v:.3f}" for v in values) + f" | {ratios} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_startup", description=__doc__)
    parser.add_argument("--servers", nargs="+", default=["moto", "rgw"], choices=["moto", "rgw"])
    parser.add_argument("--tools", nargs="+", default=["replicator", "0.3.13", "0.5.17"])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    report = _report(run(args.servers, args.tools, args.repeat), args.tools, args.servers)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{time.strftime('%Y-%m-%d')}-startup.md").write_text(report)


if __name__ == "__main__":
    main()
