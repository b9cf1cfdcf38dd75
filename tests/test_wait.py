"""The durability barrier end to end (`replicator.wait`, `replicator wait`, the control socket), and the API's
`Replicator`: the engine in a supervised child process."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Replica, S3Server
from faulty_proxy import FaultyProxy
from harness import Replicator as Process
from harness import Writer, cli, restored_rows, started

import replicator
from replicator import control
from replicator.state import StateDir

SYNC = ("--sync-interval", "1s")


def create(db: Path) -> sqlite3.Connection:
    """The app's connection (stdlib sqlite3, in the test's process: not the replicator's)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    return conn


def insert(conn: sqlite3.Connection, row: int) -> None:
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'signup')", (row,))


def running(db: Path, replica: Replica) -> Process:
    proc = Process(db, [replica.url], SYNC, replica.env).start()
    proc.wait_for("snapshot of generation")
    return proc


def test_after_wait_returns_a_restore_holds_every_row_committed_before_it(
    app_db: Path, replica: Replica, tmp_path: Path
) -> None:
    create(app_db).close()
    proc = running(app_db, replica)
    writer = Writer(app_db, tmp_path / "commits.log").start(count=1400, rate=200)
    for _ in range(3):
        time.sleep(1.3)
        committed = max(row for row, _ in writer.committed())
        replicator.wait(app_db, timeout=30)
        assert max(row for row, *_ in restored_rows(replica.client, tmp_path)) >= committed
    writer.stop()
    assert proc.stop() == 0, proc.output


def test_a_lone_commit_on_an_idle_database_is_durable_at_once(app_db: Path, file_replica: Replica) -> None:
    conn = create(app_db)
    proc = running(app_db, file_replica)
    time.sleep(1.5)  # idle: no capture is due, nothing to wait behind
    insert(conn, 1)
    started_at = time.monotonic()
    position = replicator.wait(app_db, timeout=10)
    elapsed = time.monotonic() - started_at
    assert position.txid >= 1
    assert elapsed < 0.5, f"{elapsed:.3f}s"  # ~10 ms here; the benchmark measures it
    assert proc.stop() == 0, proc.output


def test_with_the_replica_down_a_wait_times_out_clearly_and_nothing_is_lost(
    app_db: Path, moto_replica: Replica, moto_server: S3Server, tmp_path: Path
) -> None:
    conn = create(app_db)
    with FaultyProxy(moto_server.endpoint or "", failure_rate=0.0) as proxy:
        down = moto_replica.through(moto_server, proxy.endpoint, "down")
        proc = running(app_db, down)
        proxy.failure_rate = 1.0
        insert(conn, 1)
        with pytest.raises(replicator.WaitTimeout, match="still being shipped") as raised:
            replicator.wait(app_db, timeout=1.5)
        assert moto_replica.url.split("?")[0] in str(raised.value)  # names the replica
        done = cli("wait", str(app_db), "--timeout", "1")
        assert done.returncode == 5 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
        proxy.failure_rate = 0.0
        replicator.wait(app_db, timeout=60)
        assert [r[0] for r in restored_rows(moto_replica.client, tmp_path)] == [1]
        assert proc.stop() == 0, proc.output


def test_the_wait_command_prints_where_the_replicas_are(app_db: Path, file_replica: Replica) -> None:
    insert(create(app_db), 1)
    proc = running(app_db, file_replica)
    done = cli("wait", str(app_db), "--timeout", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("durable on every replica: generation ")
    assert proc.stop() == 0, proc.output


def test_waiting_on_a_database_nobody_replicates_is_one_line_and_exit_1(app_db: Path) -> None:
    create(app_db).close()
    done = cli("wait", str(app_db), "--timeout", "1")
    assert done.returncode == 1
    assert done.stderr.startswith("error: no replicator is running") and done.stderr.count("\n") == 1
    with pytest.raises(replicator.NotRunning):
        replicator.wait(app_db)


def test_the_control_socket_is_private_to_the_apps_user_and_gone_after_stop(
    app_db: Path, file_replica: Replica
) -> None:
    create(app_db).close()
    proc = running(app_db, file_replica)
    socket = StateDir(app_db).control
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    status = control.request(socket, {"op": "status"}, timeout=5)
    assert status["following"] and status["replicas"][0]["url"] == f"file://{file_replica.url}"
    assert proc.stop() == 0, proc.output
    assert not socket.exists()


def test_the_control_socket_works_under_a_path_longer_than_a_socket_address(
    tmp_path: Path, file_replica: Replica
) -> None:
    deep = tmp_path / ("d" * 100) / "app"
    deep.mkdir(parents=True)
    db = deep / "app.db"
    conn = create(db)
    proc = running(db, file_replica)
    insert(conn, 1)
    assert replicator.wait(db, timeout=10).txid >= 1
    assert proc.stop() == 0, proc.output


# -- the API's Replicator: a supervised child process ---------------------------------------------------------


def test_a_replicator_object_ships_what_the_app_commits_and_everything_on_stop(
    app_db: Path, file_replica: Replica, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = create(app_db)
    caplog.set_level(logging.INFO, logger="replicator")
    with replicator.Replicator(app_db, file_replica.url, sync_interval="1s") as running_one:
        assert running_one.running
        insert(conn, 1)
        running_one.wait(timeout=10)
        assert [r[0] for r in restored_rows(file_replica.client, tmp_path)] == [1]
        for row in range(2, 50):
            insert(conn, row)
    assert not running_one.running
    assert [r[0] for r in restored_rows(file_replica.client, tmp_path)] == list(range(1, 50))
    assert any("stopped: every replica" in r.getMessage() for r in caplog.records)  # the child's log, forwarded


def test_a_replicator_object_that_cannot_start_raises_the_childs_error_line(
    app_db: Path, file_replica: Replica
) -> None:
    create(app_db).close()
    with replicator.Replicator(app_db, file_replica.url), pytest.raises(replicator.ReplicatorExited) as raised:
        replicator.Replicator(app_db, file_replica.url).start()
    assert "already being replicated" in str(raised.value)


def test_an_unknown_setting_is_refused_before_anything_starts(app_db: Path) -> None:
    with pytest.raises(replicator.errors.ConfigError, match="sync_intervall"):
        replicator.Replicator(app_db, "/tmp/nowhere", sync_intervall="1s")


APP = """
import sqlite3, sys, time
import replicator
db, url = sys.argv[1], sys.argv[2]
r = replicator.Replicator(db, url, sync_interval="1s")
r.start()
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("INSERT INTO t VALUES (1, randomblob(100), 'last words')")
print(r._process.pid, flush=True)
time.sleep(600)
"""


def test_the_child_replicator_ships_and_exits_when_its_app_is_killed(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    create(app_db).close()
    app = started(subprocess.Popen([sys.executable, "-c", APP, str(app_db), file_replica.url], stdout=subprocess.PIPE))
    assert app.stdout is not None
    child = int(app.stdout.readline())
    app.send_signal(signal.SIGKILL)
    app.wait(10)
    deadline = time.monotonic() + 60
    while _alive(child):
        assert time.monotonic() < deadline, "the replicator outlived its app"
        time.sleep(0.05)
    assert [r[0] for r in restored_rows(file_replica.client, tmp_path)] == [1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
