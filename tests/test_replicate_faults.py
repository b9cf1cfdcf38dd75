"""replicate under the faults real deployments produce: each must end restorable, or fail loudly.

One test per way we used to report success over a replica that could not restore (issue 10). The app is
a separate stdlib-sqlite3 process, the replicator runs as users run it, and every exit 0 is checked
against a restore of each replica (harness.Replicator.check_claims).
"""

from __future__ import annotations

import errno
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conftest import Replica, S3Server, fill, s3_replica, tmpfs
from faulty_proxy import FaultyProxy
from harness import Replicator, Writer, generations, restored_rows, rows, snapshots, started

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.replicate import Replicator as Engine
from replicator.state import ShipperState, StateDir
from replicator.storage import FileClient
from replicator.store import Store

OPTIONS = ("--sync-interval", "200ms")


def writer_for(db: Path) -> Writer:
    return Writer(db, db.parent / "commits.log")


def replicate(db: Path, replica: Replica, *options: str) -> Replicator:
    return Replicator(db, [replica.url], (*OPTIONS, *options), replica.env)


def app(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a few lines of app code (stdlib sqlite3) in its own process; `args` are its sys.argv[1:]."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def eventually(check: object, timeout: float = 10.0) -> None:
    """Poll `check()` until it holds (bounded).

    A check that restores from a replica being reseeded may meet segments with no snapshot before them (a
    wiped replica gets new segments until the next check notices the wipe): that restore error means "not
    yet" too.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert callable(check) and check()
            return
        except (AssertionError, ReplicatorError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# -- the claim itself -----------------------------------------------------------------------------------


def test_a_final_claim_that_a_replica_cannot_back_fails_the_check(app_db: Path, file_replica: Replica) -> None:
    """The property every other test relies on: it compares the final line with a restore, and can fail."""
    repl = replicate(app_db, file_replica, "--compaction", "none").start()  # the last segment is the only way there
    writer_for(app_db).start(count=50, rate=100).wait()
    assert repl.stop() == 0, repl.output
    last = max((k for k in file_replica.client.list("generations/") if k.key.endswith(".seg")), key=lambda o: o.key)
    file_replica.client.delete([last.key])
    with pytest.raises(AssertionError, match="not the claim"):
        repl.check_claims()


# -- 1. the local disk fills up, then has room again -----------------------------------------------------


def test_a_full_local_disk_holds_commits_and_ships_them_once_it_has_room(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    state = app_db.parent / f".{app_db.name}-replicator"
    with tmpfs(state, "1m"):
        repl = replicate(app_db, file_replica).start()
        writer = writer_for(app_db).start(count=100_000, rate=200)
        time.sleep(1.0)
        filler = fill(state)
        time.sleep(1.5)  # commits go on while nothing can be spooled
        writer.stop()
        filler.unlink()
        expected = rows(app_db)
        # No further commit: what waited ships on its own once there is room, within a few polls.
        eventually(lambda: restored_rows(file_replica.client, tmp_path) == expected)
        assert repl.stop() == 0, repl.output
        assert "No space left on device" in repl.output
        assert "the spool is writable again" in repl.output
        again = replicate(app_db, file_replica).start()
        writer_for(app_db).start(count=50, rate=500, start=100_001).wait()
        assert again.stop() == 0, again.output
    assert "continuing generation" in again.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_segment_whose_state_could_not_be_saved_is_written_again_not_skipped(
    app_db: Path,
    file_replica: Replica,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exact hole of the old code: the spool took a segment, state.json did not (ENOSPC)."""
    real_save, calls = StateDir.save, list[ShipperState]()

    def save(self: StateDir, state: ShipperState) -> None:
        calls.append(state)
        if len(calls) in (3, 4):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self, state)

    monkeypatch.setattr(StateDir, "save", save)
    store = Store([lambda: Engine(app_db, [file_replica.client], Settings(sync_interval=0.1))])
    thread = threading.Thread(target=store.run)
    thread.start()
    writer_for(app_db).start(count=300, rate=300).wait()
    time.sleep(0.5)
    store.stop()
    thread.join(60)
    assert len(calls) > 4 and "cannot save" in caplog.text
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_replica_down_for_long_costs_at_most_the_spool_limit_and_gets_a_fresh_snapshot_when_back(
    app_db: Path, moto_replica: Replica, moto_server: S3Server, tmp_path: Path
) -> None:
    spool = app_db.parent / f".{app_db.name}-replicator" / "spool"
    limit = 500_000
    with FaultyProxy(moto_server.endpoint or "", failure_rate=0.0) as proxy:
        down = moto_replica.through(moto_server, proxy.endpoint, "down")
        repl = replicate(app_db, down, "--spool-limit", "500kB").start()
        writer_for(app_db).start(count=100, rate=200).wait()
        proxy.failure_rate = 1.0
        writer_for(app_db).start(count=3000, rate=300, start=101, payload=2000).wait()  # 6 MB of random rows
        held = sum(f.stat().st_size for f in spool.rglob("*") if f.is_file())
        proxy.failure_rate = 0.0
        assert repl.stop() == 0, repl.output
    assert held <= limit + 200_000, repl.output  # the limit, and at most the segment that crossed it
    assert "dropped" in repl.output and "fresh snapshot when it is back" in repl.output
    assert restored_rows(moto_replica.client, tmp_path) == rows(app_db)


# -- 2. the replica loses everything while we run ----------------------------------------------------------


@pytest.fixture
def s3_replica_of(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    """A replica on each S3 server in turn (moto, Ceph RGW), in a bucket of its own."""
    yield from s3_replica(s3_server, monkeypatch)


def delete_bucket(replica: Replica, server: S3Server) -> None:
    """Empty and delete the replica's bucket, as an operator (or a lifecycle script) would."""
    s3 = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
    bucket = replica.url.split("/")[2]
    for _ in range(20):  # uploads in flight may land between the emptying and the delete
        replica.client.delete([o.key for o in replica.client.list()])
        try:
            s3.delete_bucket(Bucket=bucket)
            return
        except s3.exceptions.ClientError:
            time.sleep(0.1)
    raise AssertionError(f"could not delete {bucket}")


@pytest.mark.parametrize("gone_for", [0.0, 1.0], ids=["between-uploads", "uploads-fail"])
def test_a_bucket_deleted_and_recreated_gets_a_fresh_snapshot(
    app_db: Path, s3_replica_of: Replica, s3_server: S3Server, tmp_path: Path, gone_for: float
) -> None:
    """Gone long enough, uploads fail (NoSuchBucket) and say so; re-created at once, no request fails and
    only the proof at stop (a fresh LIST) can tell: either way the replica gets a new base."""
    replica = s3_replica_of
    repl = replicate(app_db, replica).start()
    writer = writer_for(app_db).start(count=100_000, rate=100)
    time.sleep(1.5)
    delete_bucket(replica, s3_server)
    time.sleep(gone_for)
    boto3.session.Session().client("s3", endpoint_url=s3_server.endpoint).create_bucket(
        Bucket=replica.url.split("/")[2]
    )
    time.sleep(1.0)
    writer.stop()
    assert repl.stop() == 0, repl.output
    assert restored_rows(replica.client, tmp_path) == rows(app_db)
    assert "does not hold the current generation" in repl.output, repl.output


def test_a_wiped_replica_directory_is_reseeded_while_running(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    repl = replicate(app_db, file_replica, "--verify-interval", "1s").start()
    writer = writer_for(app_db).start(count=100_000, rate=100)
    time.sleep(1.5)
    shutil.rmtree(file_replica.client.root)
    time.sleep(1.0)
    writer.stop()
    expected = rows(app_db)
    eventually(lambda: restored_rows(file_replica.client, tmp_path) == expected)  # without waiting for stop
    assert repl.stop() == 0, repl.output
    assert "no longer holds" in repl.output


# -- 3. and 4. one writer per database, one database per replica -------------------------------------------


def test_a_second_replicator_on_the_same_database_is_refused_naming_the_first(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer_for(app_db).start(count=20, rate=500).wait()
    first = replicate(app_db, file_replica).start()
    assert first.proc is not None
    second = replicate(app_db, Replica("other", str(tmp_path / "other"), {}, FileClient(tmp_path / "other")))
    second.start()
    assert second.wait(30) == 1, second.output
    assert f"PID {first.proc.pid}" in second.output
    assert "Traceback" not in second.output
    assert first.stop() == 0, first.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_second_database_on_a_replica_is_refused_unless_taken_over(tmp_path: Path, file_replica: Replica) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one, two = tmp_path / "a" / "app.db", tmp_path / "b" / "app.db"
    writer_for(one).start(count=30, rate=500).wait()
    writer_for(two).start(count=40, rate=500).wait()
    repl = replicate(one, file_replica).start()
    assert repl.stop() == 0, repl.output

    refused = replicate(two, file_replica).start()
    assert refused.wait(30) != 0
    line = refused.output.strip().splitlines()[-1]
    assert line.startswith("error:") and str(one) in line and str(two) in line and "--takeover" in line
    assert restored_rows(file_replica.client, tmp_path) == rows(one)  # untouched

    taken = replicate(two, file_replica, "--takeover").start()
    assert taken.stop() == 0, taken.output
    assert restored_rows(file_replica.client, tmp_path) == rows(two)


def test_a_second_live_writer_is_found_while_running_and_named_with_both_generations(
    tmp_path: Path, file_replica: Replica
) -> None:
    """An overlapping deploy: the old container still ships when the new one starts its own generation
    (modelled by --takeover, which lets the second in as the same path in a new container would)."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = tmp_path / "old" / "app.db", tmp_path / "new" / "app.db"
    old_writer = writer_for(old).start(count=100_000, rate=50)
    first = replicate(old, file_replica, "--verify-interval", "1s").start()
    time.sleep(1.0)
    writer_for(new).start(count=20, rate=500).wait()
    second = replicate(new, file_replica, "--takeover").start()
    (mine,) = set(GENERATION_STARTED.findall(first.output))
    (theirs,) = set(GENERATION_STARTED.findall(second.output))

    eventually(lambda: "SECOND WRITER" in first.output)
    line = next(x for x in first.output.splitlines() if "SECOND WRITER" in x)
    assert mine in line and theirs in line
    old_writer.stop()
    assert first.stop() != 0  # what it committed since is not restorable: no exit 0 for it
    assert second.stop() == 0, second.output
    assert restored_rows(file_replica.client, tmp_path) == rows(new)


GENERATION_STARTED = re.compile(r"starting generation ([0-9a-f]{16})")


def test_a_config_giving_two_databases_one_replica_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "replicator.yml"
    config.write_text(
        f"dbs:\n  - path: {tmp_path / 'one.db'}\n    replicas: [{tmp_path / 'r'}]\n"
        f"  - path: {tmp_path / 'two.db'}\n    replicas: [{tmp_path / 'r'}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "replicator_cli", "replicate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and str(tmp_path / "r") in done.stderr
    assert not (tmp_path / "r").exists()


# -- 5. paths ----------------------------------------------------------------------------------------------


def test_a_symlinked_database_path_is_followed_to_its_target(tmp_path: Path, file_replica: Replica) -> None:
    volume, data = tmp_path / "vol", tmp_path / "data"
    volume.mkdir()
    data.mkdir()
    (data / "app.db").symlink_to(volume / "app.db")
    writer_for(data / "app.db").start(count=5, rate=500).wait()
    repl = replicate(data / "app.db", file_replica).start()
    writer_for(data / "app.db").start(count=50, rate=200, start=6).wait()
    assert repl.stop() == 0, repl.output
    assert (volume / ".app.db-replicator").is_dir()  # beside the target, where SQLite keeps the WAL
    assert len(restored_rows(file_replica.client, tmp_path)) == 55


def test_a_state_directory_path_taken_by_a_file_is_one_clear_error(app_db: Path, file_replica: Replica) -> None:
    writer_for(app_db).start(count=5, rate=500).wait()
    (app_db.parent / f".{app_db.name}-replicator").write_text("not a directory")
    repl = replicate(app_db, file_replica).start()
    assert repl.wait(30) != 0
    assert repl.output.strip().splitlines()[-1].startswith("error:"), repl.output
    assert "Traceback" not in repl.output
    assert not file_replica.client.root.exists()


def test_a_percent_encoded_file_url_names_the_decoded_directory(tmp_path: Path, app_db: Path) -> None:
    root = tmp_path / "my backups"
    writer_for(app_db).start(count=20, rate=500).wait()
    repl = Replicator(app_db, [root.as_uri()], OPTIONS).start()
    assert repl.stop() == 0, repl.output
    assert not (tmp_path / "my%20backups").exists()
    assert restored_rows(FileClient(root), tmp_path) == rows(app_db)


# -- 6. the app's own file operations ----------------------------------------------------------------------

DELETE_AND_RECREATE = """
import os, sqlite3, sys, time
db = sys.argv[1]
conn = sqlite3.connect(db, isolation_level=None)
for i in range(1, 51):
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'old')", (i,))
conn.close()
time.sleep(2.0)  # an idle moment, as before any maintenance
os.remove(db)
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
for i in range(1001, 1021):
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'new')", (i,))
assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 20
conn.close()
"""

SWAP_IN_ANOTHER = """
import os, sqlite3, sys, time
db, other = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db, isolation_level=None)
for i in range(1, 51):
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'old')", (i,))
for _ in range(200):  # swap only once the WAL is all in the file (as a careful app does), at most 10 s
    _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    if frames == copied:
        break
    time.sleep(0.05)
conn.close()
os.replace(other, db)
conn = sqlite3.connect(db, isolation_level=None)
assert conn.execute("SELECT count(*) FROM t WHERE note = 'swapped'").fetchone()[0] == 30, "reads the old file"
assert conn.execute("SELECT count(*) FROM t WHERE note = 'old'").fetchone()[0] == 0, "reads the old file"
for i in range(2001, 2011):
    conn.execute("INSERT INTO t VALUES (?, randomblob(100), 'after')", (i,))
conn.close()
"""


def test_the_app_deleting_and_recreating_its_database_sees_no_error(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer_for(app_db).start(count=1, start=0).wait()
    repl = replicate(app_db, file_replica).start()
    app(DELETE_AND_RECREATE, str(app_db))  # asserts the app saw no error and its own new rows
    time.sleep(1.5)
    assert repl.stop() == 0, repl.output
    assert "was deleted" in repl.output or "was replaced by another file" in repl.output, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)
    assert {r[2] for r in rows(app_db)} == {"new"}
    assert len(generations(file_replica.client)) == 2


def test_the_app_swapping_in_another_database_reads_and_ships_the_new_one(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    other = app_db.parent / "incoming.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, randomblob(100), 'swapped')", [(i,) for i in range(1, 31)])
    conn.commit()
    conn.close()
    writer_for(app_db).start(count=1, rate=500, start=100).wait()
    app("import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('DELETE FROM t').connection.commit()", str(app_db))
    repl = replicate(app_db, file_replica).start()
    app(SWAP_IN_ANOTHER, str(app_db), str(other))
    time.sleep(1.5)
    assert repl.stop() == 0, repl.output
    assert "replaced by another file" in repl.output, repl.output
    assert {r[2] for r in rows(app_db)} == {"swapped", "after"}
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


BURST = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
conn.execute("BEGIN")
for i in range(10_000, 16_000):
    conn.execute("INSERT INTO t VALUES (?, randomblob(3000), 'burst')", (i,))
conn.execute("COMMIT")
conn.close()
"""


def test_after_a_burst_the_wal_file_is_cut_back_once_the_app_is_quiet(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer_for(app_db).start(count=20, rate=500).wait()
    repl = replicate(app_db, file_replica).start()
    done = app(BURST, str(app_db))  # one 18 MB transaction: the WAL grows past it
    assert done.returncode == 0, done.stderr
    wal = Path(f"{app_db}-wal")
    eventually(lambda: wal.stat().st_size == 0, timeout=15)
    writer_for(app_db).start(count=30, rate=200, start=100).wait()  # the next life continues the chain
    assert repl.stop() == 0, repl.output
    assert "cut" in repl.output and len(generations(file_replica.client)) == 1, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


# -- 7. locked at start, and workers that fail ---------------------------------------------------------------

MIGRATION = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("CREATE TABLE migrations(name TEXT)")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
conn.execute("INSERT INTO migrations VALUES ('0001_initial')")
print("locked", flush=True)
time.sleep(3.0)  # a slow migration, in rollback-journal mode
conn.execute("COMMIT")
conn.close()
"""


def test_a_database_locked_by_a_migration_at_start_is_waited_for(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    migration = started(
        subprocess.Popen([sys.executable, "-c", MIGRATION, str(app_db)], stdout=subprocess.PIPE, text=True)
    )
    assert migration.stdout is not None and migration.stdout.readline() == "locked\n"
    repl = replicate(app_db, file_replica).start()
    assert migration.wait(30) == 0
    writer_for(app_db).start(count=200, rate=400).wait()
    assert repl.stop() == 0, repl.output
    assert repl.output.count("the app holds its lock") == 1, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


def test_a_steady_writer_in_rollback_journal_mode_is_switched_to_wal(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer = writer_for(app_db).start(count=1500, rate=1000, journal_mode="delete")
    time.sleep(0.5)
    repl = replicate(app_db, file_replica).start()
    writer.wait()
    assert repl.stop() == 0, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


EXCLUSIVE_APP = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute(f"PRAGMA journal_mode={sys.argv[2]}")
conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
conn.execute("INSERT INTO t VALUES (1)")
print("ready", flush=True)
sys.stdin.read()  # holds the file until the test closes our stdin
"""


@pytest.mark.parametrize("journal_mode", ["WAL", "DELETE"])
def test_exclusive_locking_mode_is_an_error_naming_the_pragma(
    app_db: Path, file_replica: Replica, journal_mode: str
) -> None:
    holder = started(
        subprocess.Popen(
            [sys.executable, "-c", EXCLUSIVE_APP, str(app_db), journal_mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        repl = replicate(app_db, file_replica).start()
        assert repl.wait(30) != 0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    last = repl.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "locking_mode=EXCLUSIVE" in last and str(holder.pid) in last, repl.output


def test_an_unexpected_exception_in_a_worker_is_a_failure(tmp_path: Path) -> None:
    class Broken(Engine):
        def step(self, *, stopping: bool = False) -> float | None:
            raise KeyError("a bug")

    failures = Store([lambda: Broken(tmp_path / "app.db", [])]).run()
    assert [type(exc) for _, exc in failures] == [KeyError]


def test_a_stop_right_after_the_app_created_the_database_still_ships_it(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    repl = replicate(app_db, file_replica).start()  # waits for the database
    writer_for(app_db).start(count=5, rate=1000).wait()
    assert repl.stop() == 0, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)


# -- 9. leaving WAL mode needs the replicator stopped ------------------------------------------------------

LEAVE_WAL = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0.5)
try:
    mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
except sqlite3.OperationalError as exc:
    mode = str(exc)
if mode == "delete":
    conn.execute("PRAGMA page_size=8192")
    conn.execute("VACUUM")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
print(mode)
"""


def test_leaving_wal_mode_needs_a_stop_and_the_next_start_takes_a_new_generation(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer_for(app_db).start(count=50, rate=500).wait()
    repl = replicate(app_db, file_replica).start()
    time.sleep(0.5)
    assert app(LEAVE_WAL, str(app_db)).stdout.strip() == "database is locked"
    assert repl.stop() == 0, repl.output

    assert app(LEAVE_WAL, str(app_db)).stdout.strip() == "wal"  # stopped: the documented procedure works
    repl = replicate(app_db, file_replica).start()
    writer_for(app_db).start(count=10, rate=500, start=51).wait()
    assert repl.stop() == 0, repl.output
    assert "page size changed" in repl.output, repl.output
    assert len(snapshots(file_replica.client)) == 2
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)
