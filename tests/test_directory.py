"""`replicate --dir`: every database of a directory in one process, each under its own relative path."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from conftest import Replica
from harness import Replicator, Writer, cli, inventory, restored_rows, rows

from replicator import keys
from replicator.config import replica_url_for
from replicator.storage import ReplicaClient, open_client

OPTIONS = ("--sync-interval", "200ms")


def watching(data: Path, replica: Replica, *options: str) -> Replicator:
    """`replicator replicate --dir DATA [options] URL`, started."""
    data.mkdir(parents=True, exist_ok=True)
    return Replicator(data / "replicator", [], (*OPTIONS, "--dir", str(data), *options, replica.url), replica.env)


def replica_of(replica: Replica, data: Path, db: Path) -> ReplicaClient:
    return open_client(replica_url_for(replica.url, db.relative_to(data)))


def write(db: Path, count: int, *, start: int = 1, rate: float = 500) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    Writer(db, db.with_name(db.name + ".log")).start(count=count, rate=rate, start=start).wait()


def replicated(data: Path, replica: Replica, dbs: list[Path], count: int, *options: str) -> None:
    """`count` rows written into each database, then one `--dir` run over them, stopped cleanly."""
    for db in dbs:
        write(db, count)
    repl = watching(data, replica, *options).start()
    assert repl.stop() == 0, repl.output


def wait_for(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(check) or not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_every_database_of_the_directory_is_replicated_under_its_relative_path(
    tmp_path: Path, replica: Replica
) -> None:
    data = tmp_path / "tenants"
    dbs = [data / "a.db", data / "eu" / "b.db", data / "eu" / "deep" / "c.db"]
    for db in dbs:
        write(db, 20)
    repl = watching(data, replica, "--recursive").start()
    for db in dbs:
        write(db, 30, start=21)
    assert repl.stop() == 0, repl.output
    for db in dbs:
        assert restored_rows(replica_of(replica, data, db), tmp_path) == rows(db) != []


def test_without_recursive_only_the_directory_itself_is_replicated(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    write(data / "top.db", 5)
    write(data / "sub" / "nested.db", 5)
    repl = watching(data, file_replica).start()
    assert repl.stop() == 0, repl.output
    assert inventory(replica_of(file_replica, data, data / "top.db"))
    assert not (Path(file_replica.url) / "sub").exists()


def test_files_that_are_not_databases_are_skipped_with_one_warning(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    write(data / "real.db", 5)
    (data / "notes.db").write_text("not a database")
    repl = watching(data, file_replica).start()
    assert repl.stop() == 0, repl.output
    assert repl.output.count("notes.db matches the directory's pattern but is not a SQLite database") == 1
    assert restored_rows(replica_of(file_replica, data, data / "real.db"), tmp_path) == rows(data / "real.db")


def test_a_database_created_while_running_is_picked_up(tmp_path: Path, replica: Replica) -> None:
    data = tmp_path / "tenants"
    repl = watching(data, replica, "--recursive").start()
    new = data / "later" / "new.db"
    write(new, 10)
    client = replica_of(replica, data, new)
    wait_for("the new database's first snapshot", lambda: any(True for _ in client.list(keys.GENERATIONS)))
    write(new, 10, start=11)
    assert repl.stop() == 0, repl.output
    assert restored_rows(client, tmp_path) == rows(new) and len(rows(new)) == 20


def test_a_deleted_database_is_finished_and_its_replica_kept(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    gone, kept = data / "gone.db", data / "kept.db"
    write(gone, 30)
    write(kept, 30)
    repl = watching(data, file_replica).start()
    write(gone, 20, start=31)
    expected = rows(gone)
    wait_for("the last rows shipped", lambda: restored_rows(replica_of(file_replica, data, gone), tmp_path) == expected)
    for path in data.glob("gone.db*"):
        path.unlink()
    finished = lambda: any("stopped:" in line and f"{gone} " in line for line in repl.output.splitlines())  # noqa: E731
    wait_for("the deleted database to be finished", finished)
    write(kept, 10, start=31)
    assert repl.stop() == 0, repl.output
    assert restored_rows(replica_of(file_replica, data, gone), tmp_path) == expected
    assert restored_rows(replica_of(file_replica, data, kept), tmp_path) == rows(kept)


def test_a_corrupt_database_is_isolated_from_the_healthy_ones(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    write(data / "good.db", 10)
    (data / "bad.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 4080)
    repl = watching(data, file_replica).start()
    write(data / "good.db", 20, start=11)
    code = repl.stop()
    assert code == 1, repl.output
    assert "bad.db is not a valid SQLite database" in repl.output and "Traceback" not in repl.output
    assert "the other databases go on" in repl.output
    assert restored_rows(replica_of(file_replica, data, data / "good.db"), tmp_path) == rows(data / "good.db")


def test_restore_dir_all_rebuilds_the_whole_directory(tmp_path: Path, replica: Replica) -> None:
    data = tmp_path / "tenants"
    dbs = [data / "a.db", data / "eu" / "b.db"]
    replicated(data, replica, dbs, 25, "--recursive")
    out = tmp_path / "restored"
    done = cli("restore", "--dir-all", replica.url, "-o", str(out), env=replica.env)
    assert done.returncode == 0, done.stderr
    assert "restored 2 databases" in done.stderr
    for db in dbs:
        assert rows(out / db.relative_to(data)) == rows(db)
    again = cli("restore", "--dir-all", replica.url, "-o", str(out), "--if-db-not-exists", env=replica.env)
    assert again.returncode == 0 and "2 existed already" in again.stderr


def test_restore_dir_all_into_a_directory_that_holds_them_refuses_each(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    replicated(data, file_replica, [data / "a.db"], 5)
    done = cli("restore", "--dir-all", file_replica.url, "-o", str(data))
    assert done.returncode == 1 and "error: a.db:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("base", "relative", "url"),
    [
        ("s3://b/tenants", "a/b.db", "s3://b/tenants/a/b.db"),
        ("s3://b/tenants/?endpoint=http://h:9000", "x.db", "s3://b/tenants/x.db?endpoint=http://h:9000"),
        ("s3://b", "x.db", "s3://b/x.db"),
        ("file:///backups/my%20tenants", "a b.db", "file:///backups/my%20tenants/a%20b.db"),
        ("/backups/tenants", "eu/x.db", "/backups/tenants/eu/x.db"),
    ],
)
def test_a_databases_replica_is_the_base_url_plus_its_relative_path(base: str, relative: str, url: str) -> None:
    assert replica_url_for(base, relative) == url


def test_a_directory_in_the_config_file(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    write(data / "one.sqlite", 7)
    write(data / "skipped.db", 3)
    config = tmp_path / "replicator.yml"
    config.write_text(f"dbs:\n  - dir: {data}\n    pattern: '*.sqlite'\n    replicas: [{file_replica.url}]\n")
    repl = Replicator(data / "x", [], ("-c", str(config))).start()
    assert repl.stop() == 0, repl.output
    assert restored_rows(replica_of(file_replica, data, data / "one.sqlite"), tmp_path) == rows(data / "one.sqlite")
    assert not (Path(file_replica.url) / "skipped.db").exists()


def test_sqlite_creating_a_database_is_one_pickup_not_a_failure(tmp_path: Path, file_replica: Replica) -> None:
    """An app's first connect makes an empty file, then writes the header: it is picked up once it is one."""
    data = tmp_path / "tenants"
    repl = watching(data, file_replica).start()
    conn = sqlite3.connect(data / "fresh.db")
    time.sleep(0.3)  # the empty file sits there a moment
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    conn.execute("INSERT INTO t VALUES (1, x'00', 'one')")
    conn.commit()
    conn.close()
    client = replica_of(file_replica, data, data / "fresh.db")
    wait_for("fresh.db replicated", lambda: any(True for _ in client.list(keys.GENERATIONS)))
    assert repl.stop() == 0, repl.output
    assert restored_rows(client, tmp_path) == [(1, b"\0", "one")]
    assert "not a SQLite database" not in repl.output


def _tenant(db: Path, ids: range) -> list[tuple[object, ...]]:
    """The app writing a tenant's database (created if new): rows `ids`, one transaction each."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    for i in ids:
        conn.execute("INSERT INTO t VALUES (?, randomblob(64), ?)", (i, f"{db.name} {i}"))
    conn.close()
    return rows(db)


def test_two_hundred_databases_created_and_deleted_while_running_are_all_restorable_exactly(
    tmp_path: Path, file_replica: Replica
) -> None:
    """Tenants come and go under a running replicator; a deleted one's replica ends where the tenant did."""
    data = tmp_path / "tenants"
    repl = watching(data, file_replica).start()
    expected = {data / f"t{i:03d}.db": 1 + i % 4 for i in range(200)}
    for db, count in expected.items():
        _tenant(db, range(1, count + 1))
    followed = Path(file_replica.url)
    wait_for("every tenant picked up", lambda: len(list(followed.glob("*.db/generations"))) == 200, timeout=60)
    final = {}
    for i, (db, count) in enumerate(expected.items()):
        final[db] = _tenant(db, range(count + 1, count + 4))
        if i % 3 == 2:  # deleted at once: its last commits not shipped yet
            for path in data.glob(f"{db.name}*"):
                path.unlink()
    assert sum(not db.exists() for db in final) == 66
    assert repl.stop() == 0, repl.output
    assert "Traceback" not in repl.output
    for db, want in final.items():
        assert restored_rows(replica_of(file_replica, data, db), tmp_path) == want, db


def test_a_database_deleted_before_it_was_followed_is_no_failure(tmp_path: Path, file_replica: Replica) -> None:
    data = tmp_path / "tenants"
    repl = watching(data, file_replica).start()
    for i in range(30):
        db = data / f"brief{i}.db"
        _tenant(db, range(1, 3))
        for path in data.glob(f"{db.name}*"):
            path.unlink()
    _tenant(data / "stays.db", range(1, 4))
    assert repl.stop() == 0, repl.output
    assert "Traceback" not in repl.output and "error" not in repl.output.lower()
    assert restored_rows(replica_of(file_replica, data, data / "stays.db"), tmp_path) == rows(data / "stays.db")


def test_one_tenant_writing_in_bulk_does_not_hold_up_the_others(tmp_path: Path, file_replica: Replica) -> None:
    """200 MB into one database while 20 others commit once a second: theirs ship within the sync interval."""
    data = tmp_path / "tenants"
    data.mkdir()
    sparse = [data / f"s{i:02d}.db" for i in range(20)]
    for db in sparse:
        _tenant(db, range(1, 2))
    _tenant(data / "bulk.db", range(1, 2))
    repl = Replicator(data / "x", [], ("--sync-interval", "1s", "--dir", str(data), file_replica.url)).start()
    root = Path(file_replica.url)
    wait_for("every tenant picked up", lambda: len(list(root.glob("*.db/generations"))) == 21, timeout=30)
    bulk = Writer(data / "bulk.db", tmp_path / "bulk.log").start(count=200, rate=1000, start=2, payload=1_000_000)
    commits: dict[Path, list[float]] = {db: [] for db in sparse}
    conns = {db: sqlite3.connect(db, isolation_level=None) for db in sparse}
    started = time.monotonic()
    for n in range(12 * len(sparse)):  # each sparse tenant commits once a second, staggered
        db = sparse[n % len(sparse)]
        time.sleep(max(0.0, started + n / len(sparse) - time.monotonic()))
        conns[db].execute("INSERT INTO t(payload, note) VALUES (randomblob(64), 'sparse')")
        commits[db].append(time.time())
    bulk.wait(120)
    time.sleep(2)
    assert repl.stop() == 0, repl.output
    lags = []
    for db, times in commits.items():
        stored = root.glob(f"{db.name}/generations/*/segments/*")  # as shipped (compacted ones come later)
        found = [(keys.parse(str(p.relative_to(root / db.name))), p.stat().st_mtime) for p in stored]
        shipped = sorted((k.last_txid, at) for k, at in found if isinstance(k, keys.SegmentKey))
        for txid, committed in enumerate(times, start=1):
            lags.append(min(at for last, at in shipped if last >= txid) - committed)
    lags.sort()
    assert lags[int(len(lags) * 0.99)] <= 1.5, lags[-10:]


def test_exec_on_a_fresh_disk_restores_the_directory_before_the_app_starts(
    tmp_path: Path, file_replica: Replica
) -> None:
    data = tmp_path / "tenants"
    dbs = [data / "a.db", data / "eu" / "b.db"]
    replicated(data, file_replica, dbs, 12, "--recursive")
    expected = {db: rows(db) for db in dbs}
    shutil.rmtree(data)  # a new container: the disk is gone
    seen = tmp_path / "seen.txt"
    app = f"import pathlib as p; p.Path({str(seen)!r}).write_text(str(sorted(p.Path({str(data)!r}).rglob('*.db'))))"
    command = f'{sys.executable} -c "{app}"'
    done = cli("replicate", "--dir", str(data), "--recursive", file_replica.url, "--exec", command)
    assert done.returncode == 0, done.stderr
    assert seen.read_text() == str(sorted(dbs))
    for db, want in expected.items():
        assert rows(db) == want
