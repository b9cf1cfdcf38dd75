"""Our read lock really pins the WAL: another process cannot restart it, however often we poll -shm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from replicator.sqlite import Database

APP = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for sql in sys.argv[2:]:
    conn.execute(sql).fetchall()
"""


def app(db: Path, *sql: str) -> None:
    """One short-lived app process running `sql` (a separate process: POSIX locks are per process)."""
    subprocess.run([sys.executable, "-c", APP, str(db), *sql], check=True, timeout=60)


def long_lived_app(db: Path) -> subprocess.Popen[str]:
    """An app that keeps a connection open, so SQLite does not delete the WAL when others close."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT count(*) FROM sqlite_schema'); "
        "print('up', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def app_with_a_wal(db: Path) -> subprocess.Popen[str]:
    """A database whose WAL holds 10 uncheckpointed transactions, kept alive by a long-lived app."""
    app(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)")
    holder = long_lived_app(db)
    app(db, *["INSERT INTO t VALUES (randomblob(3000))"] * 10)
    return holder


def test_a_pinned_wal_is_not_restarted_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    holder = app_with_a_wal(db)
    ours = Database(db)
    try:
        ours.pin()
        before = ours.read_index()
        for _ in range(5):  # reading -shm must not drop SQLite's locks (closing a descriptor would)
            ours.read_index()
            ours.read_file(0, 100)
        app(db, "PRAGMA wal_checkpoint(PASSIVE)", "INSERT INTO t VALUES (1)")
        after = ours.read_index()
        assert before is not None and after is not None
        assert after.salt == before.salt, "the WAL was restarted under our pin"
        assert after.max_frame > before.max_frame
    finally:
        ours.close()
        holder.communicate("")


def test_without_the_pin_the_same_steps_restart_the_wal(tmp_path: Path) -> None:
    """The control: the restart above is really what the pin prevents."""
    db = tmp_path / "app.db"
    holder = app_with_a_wal(db)
    ours = Database(db)
    try:
        before = ours.read_index()
        app(db, "PRAGMA wal_checkpoint(PASSIVE)", "INSERT INTO t VALUES (1)")
        after = ours.read_index()
        assert before is not None and after is not None and after.salt != before.salt
    finally:
        ours.close()
        holder.communicate("")
