"""A stand-in for the user's app: writes numbered rows with stdlib sqlite3, in its own process.

    python writer.py DB --rate 200 --count 1000 [--start 1] [--truncate-every N] [--log FILE] [--journal-mode M]

One row per transaction. After each commit it appends "<id> <unix time>" to --log (flushed), so a test
knows exactly what was committed and when. Stops after --count rows, or at SIGTERM.
"""

import argparse
import signal
import sqlite3
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("db")
parser.add_argument("--rate", type=float, default=200.0)
parser.add_argument("--count", type=int, default=1000)
parser.add_argument("--start", type=int, default=1)
parser.add_argument("--truncate-every", type=int, default=0)
parser.add_argument("--payload", type=int, default=200)
parser.add_argument("--log")
parser.add_argument("--journal-mode", default="WAL")  # "delete": an app that never asked for WAL
args = parser.parse_args()

stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
conn = sqlite3.connect(args.db, isolation_level=None, timeout=10)
conn.execute(f"PRAGMA journal_mode={args.journal_mode}")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
# The app's own TRUNCATE checkpoints use a short busy timeout: with the replicator's read lock held they
# give up quickly instead of stalling the app (as a real app should configure them).
checkpointer = sqlite3.connect(args.db, isolation_level=None, timeout=0.05)
log = open(args.log, "a") if args.log else None  # noqa: SIM115
period = 1.0 / args.rate
next_at = time.monotonic()
for i in range(args.start, args.start + args.count):
    if stopping.is_set():
        break
    conn.execute("INSERT INTO t VALUES (?, randomblob(?), ?)", (i, args.payload, f"row {i}"))
    if log:
        log.write(f"{i} {time.time():.6f}\n")
        log.flush()
    if args.truncate_every and i % args.truncate_every == 0:
        try:
            checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass  # busy: fine
    next_at += period
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
conn.close()
checkpointer.close()
sys.exit(0)
