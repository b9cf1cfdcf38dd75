"""`replicate --exec`: the app runs as our child, in the order and with the signals a container needs."""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Replica
from harness import Replicator, Writer, cli, generations, restored_rows, rows, snapshots, started, wipe_local

OPTIONS = ("--sync-interval", "200ms")

# The app: reads what it finds first (so the test knows what it saw at boot), then writes, then exits
# with the code it is given, or on SIGTERM commits its shutdown work first. SIGUSR1 leaves a mark.
APP = """
import os, signal, sqlite3, sys, threading, time
db, seen, count, code = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
signal.signal(signal.SIGUSR1, lambda *_: open(seen + ".usr1", "w").close())
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
first = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM t").fetchone()
open(seen, "w").write(f"{first[0]} {first[1]}")
for i in range(first[1] + 1, first[1] + 1 + count):
    if stopping.is_set():
        break
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'app')", (i,))
    time.sleep(0.01)
while count == 0 and not stopping.is_set():
    time.sleep(0.05)
if stopping.is_set():
    time.sleep(0.2)
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'shutdown')", (10**6,))
conn.close()
sys.exit(code)
"""


def app_command(db: Path, seen: Path, count: int, code: int = 0) -> str:
    return shlex.join([sys.executable, "-c", APP, str(db), str(seen), str(count), str(code)])


def supervised(db: Path, replica: Replica, command: str, *options: str) -> Replicator:
    return Replicator(db, [replica.url], (*OPTIONS, *options, "--exec", command), replica.env)


def replicated_then_wiped(db: Path, replica: Replica, rows_written: int) -> None:
    """`rows_written` rows on the replica, and then a redeploy: a fresh container disk."""
    first = Replicator(db, [replica.url], OPTIONS).start()
    Writer(db, db.parent / "commits.log").start(count=rows_written, rate=500).wait()
    assert first.stop() == 0, first.output
    wipe_local(db)


def test_a_missing_database_is_restored_before_the_app_starts(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    replicated_then_wiped(app_db, file_replica, 120)

    seen = tmp_path / "seen"
    repl = supervised(app_db, file_replica, app_command(app_db, seen, count=30)).start()
    assert repl.wait(60) == 0, repl.output
    assert seen.read_text() == "120 120"  # the app's first read already saw every restored row
    assert "restored" in repl.output
    repl.check_claims()
    assert len(restored_rows(file_replica.client, tmp_path)) == 150


def test_a_restored_database_continues_its_generation_without_a_new_snapshot(
    app_db: Path, replica: Replica, tmp_path: Path
) -> None:
    replicated_then_wiped(app_db, replica, 120)
    (generation,) = generations(replica.client)
    before = snapshots(replica.client)

    repl = supervised(app_db, replica, app_command(app_db, tmp_path / "seen", count=30)).start()
    assert repl.wait(60) == 0, repl.output
    assert f"continuing generation {generation:016x} at txid" in repl.output
    assert generations(replica.client) == {generation}
    assert snapshots(replica.client) == before  # the boot uploaded only the app's new transactions
    repl.check_claims()
    assert len(restored_rows(replica.client, tmp_path)) == 150


def test_a_restored_database_changed_before_replication_starts_a_new_generation(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    replicated_then_wiped(app_db, file_replica, 50)
    done = cli("restore", file_replica.url, "-o", str(app_db))
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(app_db) as conn:  # the app, run before the replicator, closes cleanly: a checkpoint
        conn.execute("INSERT INTO t VALUES (999, randomblob(100), 'early')")
    conn.close()

    repl = Replicator(app_db, [file_replica.url], OPTIONS).start()
    assert repl.stop() == 0, repl.output
    assert "the database file changed since it was restored" in repl.output
    assert len(generations(file_replica.client)) == 2
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_database_restored_after_its_writer_was_killed_starts_a_new_generation(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    """Without a clean stop on record, the old writer may still be shipping: continuing could fork its chain."""
    first = Replicator(app_db, [file_replica.url], OPTIONS).start()
    Writer(app_db, app_db.parent / "commits.log").start(count=50, rate=500).wait()
    time.sleep(1.0)
    first.kill()
    wipe_local(app_db)

    repl = supervised(app_db, file_replica, app_command(app_db, tmp_path / "seen", count=10)).start()
    assert repl.wait(60) == 0, repl.output
    assert "does not show that its writer stopped cleanly" in repl.output
    assert len(generations(file_replica.client)) == 2
    repl.check_claims()
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_first_boot_on_an_empty_replica_just_starts_the_app(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    repl = supervised(app_db, file_replica, app_command(app_db, seen, count=40)).start()
    assert repl.wait(60) == 0, repl.output
    assert seen.read_text() == "0 0"
    repl.check_claims()
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (3, 3), (-9, 137)])
def test_the_apps_exit_code_is_ours(
    app_db: Path, file_replica: Replica, tmp_path: Path, code: int, expected: int
) -> None:
    seen = tmp_path / "seen"
    command = app_command(app_db, seen, count=20, code=max(code, 0))
    if code < 0:  # the app dies by a signal
        command = shlex.join(["sh", "-c", f"{command} && kill -{-code} $$"])
    repl = supervised(app_db, file_replica, command).start()
    assert repl.wait(60) == expected, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)  # shipped whatever the code


def test_signals_reach_the_app_and_its_shutdown_commit_ships(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    repl = supervised(app_db, file_replica, app_command(app_db, seen, count=0)).start()
    deadline = time.monotonic() + 30
    while not seen.exists():
        assert time.monotonic() < deadline, repl.output
        time.sleep(0.05)
    assert repl.proc is not None
    repl.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert Path(f"{seen}.usr1").exists()
    assert repl.stop() == 0, repl.output  # SIGTERM: passed on; the app commits its shutdown row, then exits
    restored = restored_rows(file_replica.client, tmp_path)
    assert restored == rows(app_db) and restored[-1][2] == "shutdown"


EXCLUSIVE_APP = """
import signal, sqlite3, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
conn.execute("INSERT INTO t VALUES (1)")
time.sleep(60)
"""


def test_a_replication_failure_stops_the_app_and_exits_non_zero(app_db: Path, file_replica: Replica) -> None:
    command = shlex.join([sys.executable, "-c", EXCLUSIVE_APP, str(app_db)])
    repl = supervised(app_db, file_replica, command).start()
    assert repl.wait(60) == 1, repl.output
    assert "stopping the app" in repl.output and "locking_mode=EXCLUSIVE" in repl.output


def test_a_replica_that_cannot_be_restored_keeps_the_app_from_starting(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    replicated_then_wiped(app_db, file_replica, 20)
    for info in file_replica.client.list("generations/"):
        if info.key.endswith(".snap"):
            file_replica.client.put(info.key, b"not a snapshot")
    seen = tmp_path / "seen"
    repl = supervised(app_db, file_replica, app_command(app_db, seen, count=5)).start()
    assert repl.wait(60) != 0
    assert not seen.exists() and not app_db.exists()
    assert repl.output.strip().splitlines()[-1].startswith("error:"), repl.output
    assert "Traceback" not in repl.output


def supervised_as_pid_1(db: Path, replica: Replica, command: str) -> subprocess.Popen[bytes]:
    """`replicate --exec` as PID 1 of a new PID namespace, as in a container without an init."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], check=False, capture_output=True).returncode:
        pytest.skip("unshare --pid needs root")
    cmd = [sys.executable, "-m", "replicator_cli", "replicate", str(db), replica.url, "--exec", command]
    return started(subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", *cmd], stderr=subprocess.PIPE))


def test_as_pid_1_orphaned_grandchildren_are_reaped(app_db: Path, file_replica: Replica) -> None:
    """In a container without an init we are PID 1: a process orphaned by the app becomes ours to reap."""
    command = "sh -c '(sleep 0.2 &); sleep 3'"  # the subshell exits at once: its sleep is orphaned to PID 1
    ns = supervised_as_pid_1(app_db, file_replica, command)
    time.sleep(2.0)  # the orphan has exited by now; the app still runs
    inside = _children(ns.pid)
    assert len(inside) == 1
    zombies = [p for p in _children(inside[0]) if _state(p) == "Z"]
    assert zombies == [], f"unreaped: {zombies}"
    assert ns.wait(30) == 0


def test_as_pid_1_a_container_stop_ships_the_apps_last_commit(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    """The platform signals PID 1 only, and everything else dies with it: as PID 1, we outlive the app."""
    ns = supervised_as_pid_1(app_db, file_replica, app_command(app_db, tmp_path / "seen", count=100_000))
    time.sleep(2.0)
    (pid_1,) = _children(ns.pid)
    os.kill(pid_1, signal.SIGTERM)  # what `docker stop` / `podman stop` does
    assert ns.wait(60) == 0
    restored = restored_rows(file_replica.client, tmp_path)
    assert restored == rows(app_db) and restored[-1][2] == "shutdown"


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry))
    return found


def _state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "gone"
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
