"""replicate end to end: the app and the replicator are separate processes, the replica is real storage.

Every test ends the same way: restore from the replica alone and compare with what the app committed.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import Replica, S3Server
from faulty_proxy import FaultyProxy
from harness import Replicator, Writer, generations, restored_rows, rows, snapshots, wipe_local

from replicator.storage import FileClient

INTERVAL = 0.2


def writer_for(db: Path) -> Writer:
    return Writer(db, db.parent / "commits.log")


def replicator_for(db: Path, replica: Replica, *options: str) -> Replicator:
    return Replicator(db, [replica.url], ("--sync-interval", f"{int(INTERVAL * 1000)}ms", *options), replica.env)


def test_steady_writes_survive_a_wiped_disk(app_db: Path, replica: Replica, tmp_path: Path) -> None:
    writer = writer_for(app_db).start(count=600, rate=300)
    repl = replicator_for(app_db, replica, "--min-checkpoint-pages", "100").start()
    writer.wait()
    assert repl.stop() == 0, repl.output
    expected = rows(app_db)
    assert len(expected) == 600
    wipe_local(app_db)
    assert restored_rows(replica.client, tmp_path) == expected
    assert len(generations(replica.client)) == 1, repl.output


def test_kill_9_loses_at_most_the_last_interval(app_db: Path, file_replica: Replica, tmp_path: Path) -> None:
    writer = writer_for(app_db).start(count=100_000, rate=200)
    rng = random.Random(7)
    margin = INTERVAL + 1.5  # one interval to ship, plus the upload and a slow machine's scheduling
    for _ in range(3):
        repl = replicator_for(app_db, file_replica).start()
        time.sleep(rng.uniform(1.5, 3.0))
        repl.kill()
        killed_at = time.time()
        have = {r[0] for r in restored_rows(file_replica.client, tmp_path)}
        must = {i for i, t in writer.committed() if t < killed_at - margin}
        assert must <= have, f"lost {sorted(must - have)[:10]} after kill -9\n{repl.output}"
    repl = replicator_for(app_db, file_replica).start()
    time.sleep(1.0)
    writer.stop()
    assert repl.stop() == 0, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_app_checkpoints_are_handled_and_a_generation_starts_only_when_needed(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer = writer_for(app_db).start(count=1500, rate=400, truncate_every=300)
    repl = replicator_for(app_db, file_replica).start()
    writer.wait()
    assert repl.stop() == 0, repl.output
    assert len(generations(file_replica.client)) == 1, repl.output  # our pin kept every TRUNCATE harmless

    # Down for a while: the app writes, and its TRUNCATE now succeeds, erasing the WAL we never read.
    writer_for(app_db).start(count=300, rate=1000, start=1501).wait()
    conn = sqlite3.connect(app_db)
    assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    conn.close()
    writer_for(app_db).start(count=50, rate=1000, start=1801).wait()

    repl = replicator_for(app_db, file_replica).start()
    writer_for(app_db).start(count=300, rate=400, start=1851, truncate_every=100).wait()
    assert repl.stop() == 0, repl.output
    assert "the WAL was restarted or truncated while the replicator was not running" in repl.output
    assert len(generations(file_replica.client)) == 2, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_replaced_database_file_starts_a_new_generation(app_db: Path, file_replica: Replica, tmp_path: Path) -> None:
    writer_for(app_db).start(count=200, rate=500).wait()
    repl = replicator_for(app_db, file_replica).start()
    writer_for(app_db).start(count=200, rate=500, start=201).wait()
    time.sleep(2 * INTERVAL)

    other = tmp_path / "elsewhere.db"
    writer_for(other).start(count=50, rate=1000, start=10_000).wait()
    other.replace(app_db)  # e.g. restored from another backup while the app was stopped
    for suffix in ("-wal", "-shm"):
        Path(f"{app_db}{suffix}").unlink(missing_ok=True)
    writer_for(app_db).start(count=100, rate=500, start=20_000).wait()
    assert repl.stop() == 0, repl.output
    assert "the database file was replaced" in repl.output
    assert len(generations(file_replica.client)) == 2
    restored = restored_rows(file_replica.client, tmp_path)
    assert restored == rows(app_db)
    assert {r[0] for r in restored} == set(range(10_000, 10_050)) | set(range(20_000, 20_100))


def test_restarting_with_intact_state_continues_the_generation(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    """The app runs on (its connection open) while the replicator is restarted, e.g. for an upgrade."""
    writer = writer_for(app_db).start(count=100_000, rate=100)
    options = ("--min-checkpoint-pages", "200")  # short WAL lives: the app's own checkpoint never triggers
    repl = replicator_for(app_db, file_replica, *options).start()
    time.sleep(1.5)
    assert repl.stop() == 0, repl.output
    time.sleep(1.0)  # the app keeps writing meanwhile
    repl = replicator_for(app_db, file_replica, *options).start()
    time.sleep(1.5)
    writer.stop()
    assert repl.stop() == 0, repl.output
    assert "continuing generation" in repl.output
    assert len(generations(file_replica.client)) == 1
    assert len(snapshots(file_replica.client)) == 1  # nothing uploaded twice
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_retention_deletes_old_history_and_keeps_the_newest_chain(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    repl = replicator_for(app_db, file_replica, "--retention", "2s", "--snapshot-interval", "1s").start()
    writer_for(app_db).start(count=2000, rate=300).wait()
    time.sleep(2.5)
    assert repl.stop() == 0, repl.output
    assert "retention: deleted" in repl.output
    kept = snapshots(file_replica.client)
    assert 1 <= len(kept) <= 4, kept  # a snapshot every second for ~7 s, most of them expired
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


@pytest.mark.parametrize("content", [b"not a database at all", b"SQLite format 2\0" + bytes(100)])
def test_a_file_that_is_not_sqlite_is_refused_and_untouched(
    app_db: Path, file_replica: Replica, content: bytes
) -> None:
    app_db.write_bytes(content)
    repl = replicator_for(app_db, file_replica).start()
    code = repl.wait(30)
    out = repl.output
    assert code != 0
    assert "is not a SQLite database" in out and "Traceback" not in out
    assert app_db.read_bytes() == content
    assert sorted(p.name for p in app_db.parent.iterdir() if not p.name.startswith("replicator-")) == ["app.db"]


def test_waits_for_the_app_to_create_the_database(app_db: Path, file_replica: Replica, tmp_path: Path) -> None:
    repl = replicator_for(app_db, file_replica).start()
    time.sleep(1.0)
    writer_for(app_db).start(count=100, rate=500).wait()
    assert repl.stop() == 0, repl.output
    assert repl.output.count("waiting for") == 1
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_rollback_journal_database_is_switched_to_wal(app_db: Path, file_replica: Replica, tmp_path: Path) -> None:
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    conn.execute("INSERT INTO t VALUES (1, x'00', 'before')")
    conn.commit()
    conn.close()
    repl = replicator_for(app_db, file_replica).start()
    writer_for(app_db).start(count=100, rate=500, start=2).wait()
    assert repl.stop() == 0, repl.output
    assert "switched" in repl.output and "to WAL mode" in repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_replica_failing_one_request_in_five_loses_nothing(
    app_db: Path, moto_replica: Replica, moto_server: S3Server, tmp_path: Path
) -> None:
    with FaultyProxy(moto_server.endpoint or "", failure_rate=0.2) as proxy:
        flaky = moto_replica.through(moto_server, proxy.endpoint, "flaky")
        repl = replicator_for(app_db, flaky).start()
        writer_for(app_db).start(count=800, rate=200).wait()
        assert repl.stop() == 0, repl.output
    assert proxy.failures >= 3, (proxy.requests, proxy.failures)
    assert "SlowDown" in repl.output  # the failures were seen, and retried
    assert restored_rows(moto_replica.client, tmp_path) == rows(app_db)


def test_a_dead_replica_holds_up_no_other_and_fails_the_final_sync_loudly(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    dead = "s3://bucket/prefix?endpoint=http://127.0.0.1:9"  # nothing listens on port 9
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    repl = Replicator(
        app_db, [file_replica.url, dead], ("--sync-interval", "200ms", "--shutdown-timeout", "2s"), env
    ).start()
    writer_for(app_db).start(count=300, rate=300).wait()
    time.sleep(1.0)
    code = repl.stop()
    assert code != 0
    last = repl.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "final sync failed" in last
    assert "s3://bucket/prefix/" in last and "objects behind" in last
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)  # the live replica got everything


def test_a_config_file_replicates_several_databases(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    dbs = [tmp_path / "app" / "one.db", tmp_path / "app" / "two.db"]
    config = tmp_path / "replicator.yml"
    config.write_text(
        "sync-interval: 200ms\n"
        "dbs:\n"
        f"  - path: {dbs[0]}\n    replicas: [{tmp_path / 'r1'}]\n"
        f"  - path: {dbs[1]}\n    replicas: [{tmp_path / 'r2a'}, {tmp_path / 'r2b'}]\n    retention: 1h\n"
    )
    repl = Replicator(dbs[0], [], ("-c", str(config))).start()
    writers = [Writer(db, db.with_suffix(".log")).start(count=200, rate=400) for db in dbs]
    for w in writers:
        w.wait()
    assert repl.stop() == 0, repl.output
    for db, roots in ((dbs[0], ["r1"]), (dbs[1], ["r2a", "r2b"])):
        for root in roots:
            assert restored_rows(FileClient(tmp_path / root), tmp_path) == rows(db)


def test_a_new_replica_is_fed_from_the_spool_without_a_new_generation(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    """The generation's snapshot still waits in the spool (a replica was down): a replica added now gets it."""
    dead = "s3://bucket/prefix?endpoint=http://127.0.0.1:9"
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    writer = writer_for(app_db).start(count=100_000, rate=100)
    options = ("--sync-interval", "200ms", "--shutdown-timeout", "1s", "--min-checkpoint-pages", "200")
    repl = Replicator(app_db, [file_replica.url, dead], options, env).start()
    repl.wait_for("snapshot of generation")
    time.sleep(1.0)
    writer.stop()  # no commits between the runs: ones made then could restart the WAL unwatched
    assert repl.stop() != 0  # the dead replica is behind: everything stays spooled for it
    fresh = tmp_path / "fresh-replica"
    repl = Replicator(app_db, [file_replica.url, str(fresh)], options[:2]).start()
    writer_for(app_db).start(count=150, rate=100, start=len(rows(app_db)) + 1).wait()
    assert repl.stop() == 0, repl.output
    assert "continuing generation" in repl.output, repl.output
    assert len(generations(FileClient(fresh))) == 1
    assert restored_rows(FileClient(fresh), tmp_path) == rows(app_db)


def test_a_wal_restart_while_stopping_armed_continues_the_generation(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    """Stopped with the WAL wholly copied, the app's next commit restarts the WAL while we still drain (our pin
    allows that one restart): the next run continues the generation rather than calling it a restart offline."""
    dead = "s3://bucket/prefix?endpoint=http://127.0.0.1:9"
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    writer_for(app_db).start(count=20, rate=500).wait()
    options = ("--sync-interval", "200ms", "--shutdown-timeout", "3s")
    repl = Replicator(app_db, [file_replica.url, dead], options, env).start()
    repl.wait_for("snapshot of generation")  # the app closed the database: its WAL is empty
    assert repl.proc is not None
    repl.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # the final capture is done; the dead replica holds the drain for 3 s
    with sqlite3.connect(app_db) as con:
        con.execute("INSERT INTO t (id, note) VALUES (100000, 'after the final capture')")
    con.close()
    assert repl.wait() != 0
    repl = Replicator(app_db, [file_replica.url], options[:2]).start()
    assert repl.stop() == 0, repl.output
    assert "continuing generation" in repl.output, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)
