"""How replicate stops beside an app: what the app commits while both are being stopped still ships."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import Replica
from harness import Replicator, Writer, restored_rows, rows, started

OPTIONS = ("--sync-interval", "200ms")

# An app that does its shutdown work when signalled: a last commit a moment after the SIGTERM.
APP_WITH_SHUTDOWN_WORK = """
import signal, sqlite3, sys, threading, time
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
i = 0
print("ready", flush=True)
while not stopping.is_set():
    i += 1
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'work')", (i,))
    time.sleep(0.01)
time.sleep(0.3)  # flushing caches, closing sessions...
conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'shutdown')", (i + 1,))
conn.close()
"""


def test_the_apps_shutdown_commit_after_a_simultaneous_sigterm_is_shipped(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    """Heroku, systemd and compose signal every process at once; the app commits its shutdown work after."""
    app = started(subprocess.Popen([sys.executable, "-c", APP_WITH_SHUTDOWN_WORK, str(app_db)], stdout=subprocess.PIPE))
    assert app.stdout is not None and app.stdout.readline() == b"ready\n"
    repl = Replicator(app_db, [file_replica.url], OPTIONS, file_replica.env).start()
    time.sleep(1.0)
    assert repl.proc is not None
    app.send_signal(signal.SIGTERM)
    code = repl.stop()
    assert app.wait(30) == 0
    assert code == 0, repl.output
    restored = restored_rows(file_replica.client, tmp_path)
    assert restored == rows(app_db) and restored[-1][2] == "shutdown"
    assert "while the app still has it open" in repl.output


def test_a_stop_after_the_app_has_closed_the_database_does_not_wait(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    repl = Replicator(app_db, [file_replica.url], OPTIONS, file_replica.env).start()
    Writer(app_db, tmp_path / "commits.log").start(count=50, rate=500).wait()
    assert repl.stop() == 0, repl.output
    assert "while the app still has it open" not in repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_the_grace_period_ends_even_if_the_app_keeps_the_database_open(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    app = started(subprocess.Popen([sys.executable, "-c", APP_WITH_SHUTDOWN_WORK, str(app_db)], stdout=subprocess.PIPE))
    try:
        assert app.stdout is not None and app.stdout.readline() == b"ready\n"
        repl = Replicator(app_db, [file_replica.url], (*OPTIONS, "--shutdown-grace", "500ms"), file_replica.env)
        repl.start()
        time.sleep(0.5)
        assert repl.stop(timeout=30) == 0, repl.output  # the app writes on: we stop anyway, after the grace
        assert "for up to 0.5s more" in repl.output
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)
