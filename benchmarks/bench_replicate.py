"""The shipper under load: throughput and CPU per MB, and what it costs the app's commits.

    python -m benchmarks.bench_replicate [--mb 200] [--repeat 3] [--only ship|latency]

ship     a bulk writer (1000 x 1 KiB random blobs per transaction, as fast as it can) until the database
         holds --mb MB; the replicator ships to a local directory. Figures: the writer's WAL MB/s with the
         replicator (and alone, once), seconds from the writer's end until the final sync is done
         (SIGTERM -> exit 0), replicator CPU-seconds per WAL MB after start-up (whole_mb_cpu_s counts the
         ~0.4 s of interpreter start-up too), its peak RSS, and the largest the WAL file grew.
latency  a writer committing 200 small transactions per second for 20 s, alone and with the replicator
         (1 s sync interval): commit latency p50 / p99 / max.
Medians of --repeat runs with [min-max]. Every run is checked by restoring the replica.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from replicator.rebuild import restore
from replicator.storage import FileClient

BULK = """
import sqlite3, sys, os, random
db, target = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, b BLOB)")
if len(sys.argv) > 3: c.execute("PRAGMA wal_autocheckpoint=0")
while os.path.getsize(db) + (os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0) < target:
    c.execute("BEGIN")
    c.executemany("INSERT INTO t(b) VALUES (?)", [(rng.randbytes(1024),) for _ in range(1000)])
    c.execute("COMMIT")
print(c.execute("SELECT count(*) FROM t").fetchone()[0], os.path.getsize(db + "-wal"))
"""

STEADY = """
import sqlite3, sys, time, random
db, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rng = random.Random(7)
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
lat = []
start = time.monotonic(); n = 0
while time.monotonic() - start < seconds:
    t0 = time.perf_counter()
    c.execute("INSERT INTO t(v, b) VALUES (?, ?)", ("x" * 100, rng.randbytes(100)))
    lat.append(time.perf_counter() - t0)
    n += 1
    delay = start + n / rate - time.monotonic()
    if delay > 0: time.sleep(delay)
print(" ".join(f"{x:.6f}" for x in lat))
"""


def replicator(db: Path, url: str, *options: str) -> tuple[subprocess.Popen[bytes], float]:
    """Start it; returns the process and the CPU-seconds it spent starting up (imports, first snapshot)."""
    cmd = [sys.executable, "-m", "replicator_cli", "replicate", str(db), url, *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until it is up (first log line: generation started)
        if b" INFO " in line:
            break
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
    time.sleep(0.2)
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return proc, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's own peak (wait4's ru_maxrss would include the parent it was forked from)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def stop(proc: subprocess.Popen[bytes]) -> tuple[float, float, int]:
    """SIGTERM and wait: (seconds until exit, CPU-seconds, peak RSS KiB); asserts exit 0."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    peak = 0
    while True:  # VmHWM only grows: its last reading before exit is the peak
        peak = max(peak, peak_rss_kb(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.005)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"replicator exited with {proc.returncode}"
    return time.monotonic() - start, usage.ru_utime + usage.ru_stime, peak


def wal_bytes_alone(tmp: Path, target: int) -> tuple[float, float]:
    """(WAL MB the workload writes, seconds the writer needs) with checkpoints off and nobody attached."""
    db = tmp / "alone.db"
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", BULK, str(db), str(target), "nockpt"], check=True, capture_output=True, text=True
    )
    took = time.monotonic() - start
    size = int(done.stdout.split()[1])
    for p in tmp.glob("alone.db*"):
        p.unlink()
    return size / 1e6, took


def ship_once(tmp: Path, target: int, wal_mb: float) -> dict[str, float]:
    db = tmp / "app.db"
    replica = tmp / "replica"
    proc, startup_cpu = replicator(db, str(replica), "--sync-interval", "1s")
    biggest = 0
    writer = subprocess.Popen([sys.executable, "-c", BULK, str(db), str(target)], stdout=subprocess.PIPE)
    start = time.monotonic()
    while writer.poll() is None:
        wal = Path(f"{db}-wal")
        if wal.exists():
            biggest = max(biggest, wal.stat().st_size)
        time.sleep(0.02)
    wrote = time.monotonic() - start
    rows = int(writer.stdout.read().split()[0]) if writer.stdout else 0
    caught_up, cpu, rss = stop(proc)
    out = tmp / "restored.db"
    restore(FileClient(replica), out)
    got = sqlite3.connect(out).execute("SELECT count(*) FROM t").fetchone()[0]
    assert got == rows, f"restored {got} rows, wrote {rows}"
    for p in list(tmp.iterdir()):
        if p.is_dir():
            subprocess.run(["rm", "-rf", str(p)], check=True)
        else:
            p.unlink()
    return {
        "writer_mb_s": wal_mb / wrote,
        "caught_up_s": caught_up,
        "cpu_s_per_mb": (cpu - startup_cpu) / wal_mb,
        "mb_per_cpu_s": wal_mb / (cpu - startup_cpu),
        "whole_mb_cpu_s": wal_mb / cpu,
        "rss_mb": rss / 1024,
        "max_wal_mb": biggest / 1e6,
    }


def latency_once(tmp: Path, attached: bool) -> dict[str, float]:
    db = tmp / "lat.db"
    proc = replicator(db, str(tmp / "replica"), "--sync-interval", "1s")[0] if attached else None
    done = subprocess.run(
        [sys.executable, "-c", STEADY, str(db), "20", "200"], check=True, capture_output=True, text=True
    )
    if proc is not None:
        stop(proc)
    lat = sorted(float(x) for x in done.stdout.split())
    for p in list(tmp.iterdir()):
        subprocess.run(["rm", "-rf", str(p)], check=True)
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3, "max_ms": lat[-1] * 1e3}


def summary(runs: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    return {
        k: (statistics.median(r[k] for r in runs), min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]
    }


def show(title: str, figures: dict[str, tuple[float, float, float]]) -> None:
    print(title)
    for name, (med, lo, hi) in figures.items():
        print(f"  {name:<14} {med:10.3f}  [{lo:.3f}-{hi:.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["ship", "latency"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-repl-") as name:
        tmp = Path(name)
        if args.only in (None, "ship"):
            wal_mb, alone_s = wal_bytes_alone(tmp, args.mb * 1_000_000)
            print(
                f"ship: {args.mb} MB database, {wal_mb:.0f} MB of WAL; writer alone {wal_mb / alone_s:.0f} MB/s of WAL"
            )
            show(
                "ship (file replica, 1 s sync):",
                summary([ship_once(tmp, args.mb * 1_000_000, wal_mb) for _ in range(args.repeat)]),
            )
        if args.only in (None, "latency"):
            show(
                "commit latency alone (200 tx/s, 20 s):",
                summary([latency_once(tmp, False) for _ in range(args.repeat)]),
            )
            show("commit latency with replicator:", summary([latency_once(tmp, True) for _ in range(args.repeat)]))


if __name__ == "__main__":
    main()
