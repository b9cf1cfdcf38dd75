"""The workloads (W1-W5) and process metering, identical for every tool.

Writers run in their own processes with stdlib sqlite3, as a user's app would, and are seeded so that every
tool sees the same bytes. W1 records, for every commit, when it returned and how long it took.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STEADY = r"""
import json, random, sqlite3, sys, time
from replicator import wal as W
scanner = None
db, seconds, rate, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rng = random.Random(11)
words = [rng.randbytes(5).hex() for _ in range(500)]
c = sqlite3.connect(db, isolation_level=None, timeout=30)
c.execute("PRAGMA synchronous=NORMAL")
log = []
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    row = (rng.randbytes(100), " ".join(rng.choices(words, k=9)))
    t0 = time.perf_counter()
    c.execute("INSERT INTO w1(b, t) VALUES (?, ?)", row)
    t1 = time.perf_counter()
    done = time.time()
    # Where the commit ended in the WAL (salt-1, end offset), tracked with our WAL reader over the WAL file
    # only (never -shm: closing a descriptor of it would drop this process's SQLite locks).
    with open(db + "-wal", "rb") as f:
        try:
            h = W.parse_header(f.read(32))
        except Exception:
            h = None
        if h is not None:
            if scanner is None or scanner.header.salt != h.salt:
                scanner = W.FrameScanner(h)
            f.seek(h.frame_offset(scanner.next_frame))
            scanner.feed(f.read(1 << 16))
    log.append((done, t1 - t0, h.salt[0] if h else 0, h.frame_offset(scanner.committed_frames) if h else 0))
    n += 1
    delay = start + n / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
json.dump(log, open(out, "w"))
"""

BULK = r"""
import os, random, sqlite3, sys
db, target = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
c = sqlite3.connect(db, isolation_level=None, timeout=30)
c.execute("PRAGMA synchronous=NORMAL")
wal = db + "-wal"
def size():
    return os.path.getsize(db) + (os.path.getsize(wal) if os.path.exists(wal) else 0)
while size() < target:
    c.execute("BEGIN")
    c.executemany("INSERT INTO w2(b) VALUES (?)", [(rng.randbytes(1024),) for _ in range(1000)])
    c.execute("COMMIT")
print(c.execute("SELECT count(*) FROM w2").fetchone()[0])
"""


def seed_database(path: Path, preload_mb: int = 0) -> None:
    """A WAL-mode database with the workload tables, optionally preloaded (mixed random and text rows)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE w1(id INTEGER PRIMARY KEY, b BLOB, t TEXT)")
    conn.execute("CREATE TABLE w2(id INTEGER PRIMARY KEY, b BLOB)")
    conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)")
    if preload_mb:
        rows = preload_mb * 1000
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) "
            "INSERT INTO big SELECT x, CASE WHEN x % 2 THEN randomblob(1000) "
            "ELSE CAST(printf('%.1000c', 'a' || x) AS BLOB) END FROM c",
            (rows,),
        )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def steady(db: Path, seconds: float, rate: float, out: Path) -> subprocess.Popen[bytes]:
    """W1: `rate` one-row transactions per second for `seconds`; commit times and latencies go to `out`."""
    return subprocess.Popen([sys.executable, "-c", STEADY, str(db), str(seconds), str(rate), str(out)])


@dataclass(frozen=True)
class CommitRecord:
    done: float  # wall time the commit returned in the app
    latency: float  # seconds the commit took
    salt1: int  # the WAL life it went into
    wal_end: int  # byte offset in the WAL just past its commit frame


def commits(out: Path) -> list[CommitRecord]:
    """Every W1 commit, in order."""
    return [CommitRecord(*entry) for entry in json.loads(out.read_text())]


def bulk(db: Path, target_bytes: int) -> subprocess.Popen[bytes]:
    """W2: 1000 x 1 KiB random blobs per transaction, as fast as possible, until the database is that big."""
    return subprocess.Popen([sys.executable, "-c", BULK, str(db), str(target_bytes)], stdout=subprocess.PIPE)


def wal_bytes_of_bulk(tmp: Path, target_bytes: int) -> float:
    """MB of WAL the W2 workload writes (measured alone, checkpoints off, so nothing is recycled)."""
    db = tmp / "measure.db"
    seed_database(db)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_autocheckpoint=0")  # persists for nobody else; the writer sets its own
    conn.close()
    script = BULK.replace('c.execute("PRAGMA synchronous=NORMAL")', 'c.execute("PRAGMA wal_autocheckpoint=0")')
    script = script.replace('print(c.execute("SELECT count(*) FROM w2").fetchone()[0])', "print(os.path.getsize(wal))")
    done = subprocess.run(
        [sys.executable, "-c", script, str(db), str(target_bytes)], capture_output=True, text=True, check=True
    )
    size = int(done.stdout.strip() or 0)
    for p in tmp.glob("measure.db*"):
        p.unlink()
    return size / 1e6


@dataclass
class Meter:
    """CPU and peak memory of one process, read from /proc (VmHWM is its own, unlike wait4's ru_maxrss)."""

    pid: int
    cpu_at_start: float = 0.0

    def cpu(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
        return 0.0

    def mark(self) -> None:
        self.cpu_at_start = self.cpu()

    def cpu_since_mark(self) -> float:
        return self.cpu() - self.cpu_at_start


def run_metered(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run a command to its end: (wall seconds, peak RSS MB, exit code), sampling its VmHWM as it goes."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meter = Meter(proc.pid)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, meter.peak_rss_mb())
        time.sleep(0.005)
    wall = time.monotonic() - start
    if proc.returncode:
        err = proc.stderr.read().decode(errors="replace")[-500:] if proc.stderr else ""
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err}")
    return wall, peak, proc.returncode


def rows_in(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()
