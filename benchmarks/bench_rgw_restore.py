"""W3 on a real S3 server: a 1 GiB database snapshotted by each tool to Ceph's RADOS Gateway, then restored.

    python -m benchmarks.bench_rgw_restore [--mb 1024] [--repeat 3]

Why beside `benchmarks run`'s W3: that one uses moto, which copies the whole object for every ranged GET, so
a restore that reads a large snapshot in ranges (ours, at parallelism > 1) is charged for moto's copying, not
its own work. RGW serves ranges as S3 does. The cluster comes from tests/rgw.py (needs Ceph's Debian
packages: radosgw ceph-mon ceph-osd ceph-common), on 127.0.0.1, stopped by PID at the end.

Prints wall time (whole process, integrity_check included for ours) and peak RSS per tool and parallelism,
and ours / theirs ratios; writes benchmarks/results/<date>-rgw-w3.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3

from . import tools as tl
from . import workloads as wl
from .bench_history import stored_bytes, wait_quiet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rgw import RgwCluster

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_rgw_restore", description=__doc__)
    parser.add_argument("--mb", type=int, default=1024, help="database size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", nargs="+", default=["replicator", "0.3.13", "0.5.17"], help="which tools")
    args = parser.parse_args(argv)

    tool_list = [tl.ours() if name == "replicator" else tl.litestream(name, CACHE) for name in args.tools]
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-rgw-") as tmp_name:
        tmp = Path(tmp_name)
        seed = tmp / "seed.db"
        wl.seed_database(seed, preload_mb=args.mb)
        rows = wl.rows_in(seed, "big")
        cluster = RgwCluster(memstore_bytes=max(4 << 30, args.mb * 3 << 20)).start()
        try:
            tl.ACCESS_KEY, tl.SECRET_KEY = cluster.access_key, cluster.secret_key
            s3 = boto3.client(
                "s3",
                endpoint_url=cluster.endpoint,
                aws_access_key_id=cluster.access_key,
                aws_secret_access_key=cluster.secret_key,
                region_name=tl.REGION,
            )
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            for tool in tool_list:
                work = tmp / tool.name
                work.mkdir()
                db = work / "app.db"
                db.write_bytes(seed.read_bytes())
                replica = tl.Replica.s3(bucket, tool.name, cluster.endpoint)
                proc = tool.start(db, replica, sync_interval="1s", workdir=work)
                try:
                    wait_quiet(s3, bucket, tool.name)
                finally:
                    tool.stop(proc)
                figures: dict[str, list[float]] = {"stored_mb": [stored_bytes(s3, bucket, tool.name) / 1e6]}
                out = work / "restored.db"
                for parallelism in (1, 8):
                    cmd = tool.restore(replica, out, parallelism=parallelism, workdir=work)
                    for attempt in range(args.repeat + 1):  # the first is untimed: a fresh object's first read
                        wall, rss, _ = wl.run_metered(cmd, tool.env())
                        got = wl.rows_in(out, "big")
                        assert got == rows, f"{tool.name}: {got} of {rows} rows"
                        out.unlink()
                        if attempt:
                            figures.setdefault(f"wall_s_p{parallelism}", []).append(wall)
                            figures.setdefault(f"rss_mb_p{parallelism}", []).append(rss)
                results[tool.name] = figures
                print(tool.name, {k: [round(x, 3) for x in v] for k, v in figures.items()}, flush=True)
                db.unlink()
        finally:
            cluster.stop()

    names = [t.name for t in tool_list]
    lines = [
        f"# W3 restore on Ceph RGW, {datetime.now(UTC):%Y-%m-%d}: a {args.mb} MB database, median of {args.repeat}",
        "",
        "| " + " | ".join(["figure", *names, *(f"ratio vs {n}" for n in names[1:])]) + " |",
        "|---|" + "---|" * (2 * len(names) - 1),
    ]
    for figure in results[names[0]]:
        medians = [statistics.median(results[n][figure]) for n in names]
        ratios = [medians[0] / m if m else float("nan") for m in medians[1:]]  # ours first, as --tools lists it
        lines.append(
            f"| {figure} | "
            + " | ".join(f"{m:.3g}" for m in medians)
            + " | "
            + " | ".join(f"{r:.2f}" for r in ratios)
            + " |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{datetime.now(UTC):%Y-%m-%d}-rgw-w3.md").write_text(report)


if __name__ == "__main__":
    main()
