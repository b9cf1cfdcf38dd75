"""`replicate --dir`: every database of a directory in one process, each under its own relative path."""

from __future__ import annotations

import sqlite3
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
    for db in dbs:
        write(db, 25)
    repl = watching(data, replica, "--recursive").start()
    assert repl.stop() == 0, repl.output
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
    write(data / "a.db", 5)
    repl = watching(data, file_replica).start()
    assert repl.stop() == 0, repl.output
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
