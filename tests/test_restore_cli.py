"""`replicator restore` and the listings, as an operator and a container entrypoint use them."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard
from conftest import Replica, S3Server, tmpfs
from harness import Replicator, Writer, cli, generations, restored_rows, rows

from replicator import keys, segment
from replicator.errors import TransientStorageError
from replicator.rebuild import restore
from replicator.storage import FileClient, RetryingClient

# Runs the CLI and reports its own peak RSS. VmHWM belongs to this process's address space; getrusage's
# ru_maxrss would also count the parent it was forked from (Linux carries maxrss across exec).
PEAK_RSS_OF_CLI = """
import runpy, sys
sys.argv = ["replicator", *sys.argv[1:]]
try:
    runpy.run_module("replicator_cli", run_name="__main__")
finally:
    print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")), file=sys.stderr)
"""


def restore_measuring_rss(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`replicator restore ARGS`, and its peak RSS in KiB."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_CLI, "restore", *args], capture_output=True, text=True, check=False
    )
    return done, int(done.stderr.split("VmHWM:")[1].split()[0])


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat()


def assert_clean_failure(done: subprocess.CompletedProcess[str], says: str, directory: Path) -> None:
    """One line on stderr naming the problem, non-zero exit, no traceback, nothing left in `directory`."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr, done.stderr
    assert [p.name for p in directory.iterdir()] == [], list(directory.iterdir())


# -- boot restore -----------------------------------------------------------------------------------


def test_first_boot_with_no_replica_is_a_success_that_creates_nothing(tmp_path: Path, out_dir: Path) -> None:
    done = cli("restore", str(tmp_path / "nothing-here"), "-o", str(out_dir / "app.db"), "--if-replica-exists")
    assert done.returncode == 0, done.stderr
    assert "nothing restored" in done.stderr
    assert list(out_dir.iterdir()) == []


def test_boot_with_the_database_present_leaves_it_untouched(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    existing = out_dir / "app.db"
    existing.write_bytes(b"the app's own data")
    done = cli("restore", str(replicated[1].root), "-o", str(existing), "--if-db-not-exists")
    assert done.returncode == 0, done.stderr
    assert existing.read_bytes() == b"the app's own data"


def test_boot_on_a_wiped_disk_restores_the_database(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    db, client = replicated
    Path(f"{out_dir / 'app.db'}-wal").write_bytes(b"stale")  # leftovers of an earlier life must not survive
    done = cli("restore", str(client.root), "-o", str(out_dir / "app.db"), "--if-db-not-exists", "--if-replica-exists")
    assert done.returncode == 0, done.stderr
    assert rows(out_dir / "app.db") == rows(db)
    # Beside it, the state that lets `replicate` continue the generation instead of uploading a snapshot.
    assert sorted(p.name for p in out_dir.iterdir()) == [".app.db-replicator", "app.db"]


def test_restore_reads_the_replica_from_a_config_file(replicated: tuple[Path, FileClient], tmp_path: Path) -> None:
    db, client = replicated
    config = tmp_path / "replicator.yml"
    target = tmp_path / "restored" / "app.db"
    target.parent.mkdir()
    config.write_text(f"dbs:\n  - path: {target}\n    replicas: [{client.root}]\n")
    done = cli("restore", "-c", str(config), str(target))
    assert done.returncode == 0, done.stderr
    assert rows(target) == rows(db)


def test_dry_run_prints_the_plan_its_cost_and_a_predicted_time_and_writes_nothing(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    done = cli("restore", str(replicated[1].root), "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("would restore generation ")
    assert "snapshot generations/" in done.stdout and "segment  generations/" in done.stdout
    objects = sum(line.startswith(("  snapshot", "  segment")) for line in lines)
    assert re.fullmatch(rf"{objects} GETs, .*; predicted \d+\.\d\ds at parallelism 8 \(measured now: .*\)", lines[-1])
    assert list(out_dir.iterdir()) == []


# -- point in time ---------------------------------------------------------------------------------


def test_point_in_time_by_timestamp_and_by_txid(tmp_path: Path, out_dir: Path, replica: Replica) -> None:
    """Batches of rows a second apart, through WAL restarts and two generations, on every kind of replica."""
    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / "app.db"
    options = ("--sync-interval", "100ms", "--min-checkpoint-pages", "20")  # checkpoints and WAL restarts
    writer = Writer(db, tmp_path / "commits.log")
    moments: list[tuple[float, int]] = []  # (a moment between batches, rows committed before it)

    def batch(first: int) -> None:
        writer.start(count=40, rate=400, start=first).wait()
        time.sleep(1.0)
        moments.append((time.time(), first + 39))
        time.sleep(0.3)

    writer.start(count=0).wait()  # the app creates its database; the first generation starts from it
    repl = Replicator(db, [replica.url], options, replica.env).start()
    repl.wait_for("snapshot of generation")  # every moment below is after its snapshot
    for first in (1, 41, 81):
        batch(first)
    assert repl.stop() == 0, repl.output
    conn = sqlite3.connect(db)  # the app checkpoints while we are down: a new generation follows
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    repl = Replicator(db, [replica.url], options, replica.env).start()
    for first in (121, 161):
        batch(first)
    assert repl.stop() == 0, repl.output
    assert len(generations(replica.client)) == 2
    assert "checkpoint:" in repl.output

    for moment, last in moments:
        out = out_dir / f"at-{last}.db"
        done = cli("restore", replica.url, "-o", str(out), "--timestamp", rfc3339(moment), env=replica.env)
        assert done.returncode == 0, done.stderr
        assert [r[0] for r in rows(out)] == list(range(1, last + 1)), f"at {rfc3339(moment)}"

    # By position: each segment's last txid, as `replicator wal --json` shows it, restores its own state.
    listing = json.loads(cli("wal", replica.url, "--json", env=replica.env).stdout)
    gen2 = max(r["generation"] for r in listing)
    for entry in [r for r in listing if r["generation"] == gen2 and r["level"] == 0][:3]:
        out = out_dir / f"txid-{entry['last_txid']}.db"
        args = ("--generation", gen2, "--txid", str(entry["last_txid"]))
        done = cli("restore", replica.url, "-o", str(out), *args, env=replica.env)
        assert done.returncode == 0, done.stderr
        at = datetime.fromisoformat(entry["time"]).timestamp()
        committed = [i for i, t in writer.committed() if t <= at]
        assert {r[0] for r in rows(out)} <= set(committed)
        assert rows(out) == restored_rows(replica.client, tmp_path, generation=int(gen2, 16), txid=entry["last_txid"])


def test_a_time_before_the_first_snapshot_names_the_restorable_range(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "x.db"), "--timestamp", "2001-01-01T00:00:00Z")
    assert_clean_failure(done, "is before the earliest restorable point; the replica can restore from", out_dir)


def test_listings_show_generations_snapshots_and_segments(replicated: tuple[Path, FileClient]) -> None:
    root = str(replicated[1].root)
    gens = json.loads(cli("generations", root, "--json").stdout)
    assert len(gens) == 1 and gens[0]["restorable"] and gens[0]["snapshots"] == 1 and gens[0]["segments"] >= 2
    table = cli("generations", root).stdout.splitlines()
    assert table[0].split()[:2] == ["GENERATION", "STARTED"] and gens[0]["generation"] in table[1]
    snaps = json.loads(cli("snapshots", root, "--json").stdout)
    assert [s["txid"] for s in snaps] == [0]
    segs = [s for s in json.loads(cli("wal", root, "--json").stdout) if s["level"] == 0]  # as shipped: the chain
    assert [s["first_txid"] for s in segs] == [1] + [s["last_txid"] + 1 for s in segs[:-1]]


@pytest.mark.parametrize("command", ["generations", "snapshots", "wal"])
def test_listings_show_sizes_in_units_and_json_in_bytes(replicated: tuple[Path, FileClient], command: str) -> None:
    root = str(replicated[1].root)
    exact = json.loads(cli(command, root, "--json").stdout)
    assert all(isinstance(row["bytes"], int) and row["bytes"] > 0 for row in exact)
    table = cli(command, root).stdout.splitlines()
    sizes = [line.split()[-2:] for line in table[1:]]
    assert sizes and all(unit in ("B", "kB", "MB", "GB") for _, unit in sizes), table
    assert all(unit == "B" or "." in value for value, unit in sizes), table


def test_foreign_objects_are_reported_not_fatal(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    db, client = replicated
    client.put("generations/notes.txt", b"someone else's file")
    done = cli("restore", str(client.root), "-o", str(out_dir / "app.db"))
    assert done.returncode == 0, done.stderr
    assert "not ours" in done.stderr and "generations/notes.txt" in done.stderr
    assert rows(out_dir / "app.db") == rows(db)
    assert "not ours" in cli("generations", str(client.root)).stderr


# -- bad input ---------------------------------------------------------------------------------------


def test_missing_bucket(s3_server: S3Server, s3_env: None, out_dir: Path) -> None:
    url = f"s3://no-such-bucket-{os.getpid()}/p?endpoint={s3_server.endpoint}"
    done = cli("restore", url, "-o", str(out_dir / "app.db"))
    assert_clean_failure(done, "bucket does not exist", out_dir)


def test_bad_credentials(s3_server: S3Server, s3_location: object, out_dir: Path) -> None:
    if s3_server.name == "moto":
        pytest.skip("moto accepts any credentials")
    url = f"s3://{s3_location.bucket}/{s3_location.prefix}?endpoint={s3_server.endpoint}"  # type: ignore[attr-defined]
    done = cli("restore", url, "-o", str(out_dir / "app.db"), env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert_clean_failure(done, "check the AWS credentials", out_dir)
    assert "wrong-secret" not in done.stderr


# Runs the CLI and reports which of boto3's modules it loaded.
UPLOAD_MODULES_OF_CLI = """
import runpy, sys
sys.argv = ["replicator", *sys.argv[1:]]
try:
    runpy.run_module("replicator_cli", run_name="__main__")
finally:
    print("loaded:", *sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "s3transfer")), file=sys.stderr)
"""


def test_a_restore_from_s3_loads_none_of_the_upload_machinery(
    s3_server: S3Server, s3_location: object, out_dir: Path
) -> None:
    """boto3 and s3transfer (~0.1 s of imports) serve multipart uploads only: restore time is the app's boot time."""
    url = f"s3://{s3_location.bucket}/{s3_location.prefix}?endpoint={s3_server.endpoint}"  # type: ignore[attr-defined]
    args = ["restore", url, "-o", str(out_dir / "app.db"), "--if-replica-exists"]
    done = subprocess.run(
        [sys.executable, "-c", UPLOAD_MODULES_OF_CLI, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.split("loaded:")[1].split() == []


def test_unreachable_endpoint(out_dir: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1"}
    done = cli("restore", "s3://bucket/p?endpoint=http://127.0.0.1:9", "-o", str(out_dir / "app.db"), env=env)
    assert_clean_failure(done, "Could not connect", out_dir)


def test_empty_replica_without_if_replica_exists(tmp_path: Path, out_dir: Path) -> None:
    done = cli("restore", str(tmp_path / "empty"), "-o", str(out_dir / "app.db"))
    assert_clean_failure(done, "--if-replica-exists", out_dir)


def test_existing_output(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    (out_dir / "app.db").write_bytes(b"keep me")
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "app.db"))
    assert done.returncode != 0 and "already exists" in done.stderr and "Traceback" not in done.stderr
    assert (out_dir / "app.db").read_bytes() == b"keep me"


def test_output_directory_that_cannot_hold_it(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    (out_dir / "file").write_bytes(b"")
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "file" / "app.db"))
    assert done.returncode != 0 and "is not a directory" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["file"]


def test_missing_parent_directories_are_created(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "fresh" / "data" / "app.db"))
    assert done.returncode == 0, done.stderr
    assert rows(out_dir / "fresh" / "data" / "app.db") == rows(replicated[0])


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_restored_file_honours_the_umask(
    replicated: tuple[Path, FileClient], out_dir: Path, umask: int, mode: int
) -> None:
    argv = [
        sys.executable,
        "-m",
        "replicator_cli",
        "restore",
        str(replicated[1].root),
        "-o",
        str(out_dir / "app.db"),
    ]
    done = subprocess.run(
        ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out_dir / "app.db").stat().st_mode & 0o777 == mode


def test_timestamp_and_txid_together_are_a_usage_error(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "app.db"), "--txid", "3")
    assert done.returncode == 0, done.stderr
    (out_dir / "app.db").unlink()
    done = cli(
        "restore",
        str(replicated[1].root),
        "-o",
        str(out_dir / "app.db"),
        "--txid",
        "3",
        "--timestamp",
        "2026-01-01T00:00:00Z",
    )
    assert done.returncode == 2 and "not both" in done.stderr
    assert not (out_dir / "app.db").exists()


def test_help_has_no_stray_escapes() -> None:
    for command in ("restore", "replicate", "generations", "snapshots", "wal"):
        done = cli(command, "--help")
        assert done.returncode == 0 and "\\b" not in done.stdout and "\b" not in done.stdout, done.stdout


@pytest.mark.parametrize("bad", ["2026-13-01T00:00:00Z", "2026-11-21T14:03:00", "yesterday"])
def test_malformed_timestamp_is_a_usage_error(replicated: tuple[Path, FileClient], out_dir: Path, bad: str) -> None:
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "app.db"), "--timestamp", bad)
    assert done.returncode == 2
    assert "--timestamp" in done.stderr and "Traceback" not in done.stderr
    assert list(out_dir.iterdir()) == []


def objects(client: FileClient) -> list[str]:
    return [o.key for o in client.list("generations/")]


def test_a_flipped_byte_in_any_object_fails_the_restore_naming_it(
    replicated: tuple[Path, FileClient], tmp_path: Path, out_dir: Path
) -> None:
    _, client = replicated
    for key in objects(client):
        copy = tmp_path / "damaged"
        shutil.copytree(client.root, copy)
        path = copy / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
        done = cli("restore", str(copy), "-o", str(out_dir / "app.db"))
        assert_clean_failure(done, key, out_dir)
        shutil.rmtree(copy)


def test_a_truncated_object_fails_the_restore(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    _, client = replicated
    key = objects(client)[len(objects(client)) // 2]
    path = client.root / key
    path.write_bytes(path.read_bytes()[:-7])
    assert_clean_failure(cli("restore", str(client.root), "-o", str(out_dir / "app.db")), key, out_dir)


def test_a_missing_object_in_the_middle_of_the_chain_fails_the_restore(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    _, client = replicated
    segments = [k for k in objects(client) if k.endswith(".seg")]
    client.delete([segments[1]])
    done = cli("restore", str(client.root), "-o", str(out_dir / "app.db"))
    assert_clean_failure(done, "is missing transactions", out_dir)


def test_an_unknown_format_version_fails_the_restore(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    _, client = replicated
    key = next(k for k in objects(client) if k.endswith(".snap"))
    data = bytearray((client.root / key).read_bytes())
    struct.pack_into(">H", data, 4, 7)
    struct.pack_into(">I", data, segment.HEADER_SIZE - 4, zlib.crc32(data[: segment.HEADER_SIZE - 4]))
    (client.root / key).write_bytes(bytes(data))
    assert_clean_failure(cli("restore", str(client.root), "-o", str(out_dir / "app.db")), "format version 7", out_dir)


# -- scale -------------------------------------------------------------------------------------------


def bulk_database(tmp_path: Path, rows: int, payload: str) -> Path:
    """An app database of `rows` rows whose payload is the SQL expression `payload` (of x, the row's id)."""
    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
    conn.execute(
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {rows}) "
        f"INSERT INTO t SELECT x, {payload}, 'n' FROM c"
    )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


def test_a_1gb_database_restores_in_under_100mb_of_memory(tmp_path: Path, out_dir: Path) -> None:
    db = bulk_database(tmp_path, 1_000_000, "CASE WHEN x % 2 THEN randomblob(1000) ELSE zeroblob(1000) END")
    assert db.stat().st_size > 1_000_000_000
    replica = tmp_path / "replica"
    repl = Replicator(db, [str(replica)]).start()
    assert repl.stop() == 0, repl.output

    out = out_dir / "app.db"
    done, peak_kb = restore_measuring_rss(str(replica), "-o", str(out), "-q")
    assert done.returncode == 0, done.stderr
    assert peak_kb < 100 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT count(*), sum(length(payload)) FROM t").fetchone() == (1_000_000, 1_000_000_000)
    conn.close()
    assert keys.parse(objects(FileClient(replica))[0])  # one snapshot, nothing else needed


class CountedGets(FileClient):
    """A directory replica that records each ranged GET and each streamed one."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ranges: list[tuple[str, int, int | None]] = []
        self.streams: list[str] = []

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.ranges.append((key, offset, length))
        return super().get(key, offset, length)

    def stream(self, key: str, offset: int = 0) -> object:  # type: ignore[override]
        self.streams.append(key)
        return super().stream(key, offset)


def test_a_large_snapshot_comes_in_ranged_gets_on_every_worker(tmp_path: Path, out_dir: Path) -> None:
    db = bulk_database(tmp_path, 20_000, "randomblob(1000)")
    replica = tmp_path / "replica"
    repl = Replicator(db, [str(replica)]).start()
    assert repl.stop() == 0, repl.output
    client = CountedGets(replica)
    [snap] = [k for k in objects(client) if k.endswith(".snap")]
    size = (replica / snap).stat().st_size
    assert size > 16 << 20

    restore(client, out_dir / "app.db", parallelism=4)
    assert rows(out_dir / "app.db") == rows(db)
    chunk = 4 << 20  # 16 MB in flight at most, 4 MB a request at this parallelism
    assert [(o, n) for k, o, n in client.ranges if k == snap] == [
        (o, min(chunk, size - o)) for o in range(0, size, chunk)
    ]
    assert snap not in client.streams


class _BreaksOnce:
    """A stream that drops the connection once, after `after` bytes."""

    def __init__(self, inner: object, after: int) -> None:
        self.inner, self.left = inner, after

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise TransientStorageError("connection reset by peer")
        data = self.inner.read(min(size, self.left) if size >= 0 else self.left)  # type: ignore[attr-defined]
        self.left -= len(data)
        return data


class FlakyStreams(FileClient):
    """Every object's first stream breaks midway; the ones opened to resume do not."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.broken: set[str] = set()

    def stream(self, key: str, offset: int = 0) -> object:  # type: ignore[override]
        inner = super().stream(key, offset)
        if key in self.broken:
            return inner
        self.broken.add(key)
        return _BreaksOnce(inner, 1000)


def test_a_download_that_breaks_midway_is_resumed(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    db, client = replicated
    flaky = FlakyStreams(client.root)
    restore(RetryingClient(flaky, sleep=lambda _: None), out_dir / "app.db")
    assert rows(out_dir / "app.db") == rows(db)
    assert any(k.endswith(".snap") for k in flaky.broken)  # the snapshot's stream broke and was resumed


# -- hostile replicas and odd outputs ---------------------------------------------------------------


def test_an_object_claiming_millions_of_pages_is_refused_in_bounded_memory(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    """A few KB whose header and commit record claim 16 million pages: refused without allocating for them."""
    _, client = replicated
    last = max((keys.parse(k) for k in objects(client)), key=keys.chain_order)
    first = last.last_txid + 1 if isinstance(last, keys.SegmentKey) else last.txid + 1
    claimed = 16_000_000
    header = segment.SegmentHeader(segment.Kind.SEGMENT, 4096, claimed, last.generation, first, first, 9, 9, 1, claimed)
    body = struct.pack(">QQII", first, 9, claimed, claimed) + bytes(4 * claimed)
    packed = header.pack()
    compressed = zstandard.ZstdCompressor(level=19).compress(body)
    trailer = struct.pack(">4sQI", b"RPLE", len(compressed), zlib.crc32(compressed, zlib.crc32(packed)))
    key = keys.SegmentKey(last.generation, first, first, 9).key
    client.put(key, packed + compressed + trailer)
    assert client.root.joinpath(key).stat().st_size < 8192

    done, peak_kb = restore_measuring_rss(str(client.root), "-o", str(out_dir / "app.db"))
    assert done.returncode == 4, done.stderr
    assert "page numbers must strictly increase" in done.stderr and key in done.stderr
    assert peak_kb < 80 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert list(out_dir.iterdir()) == []


BULK_APP = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, payload BLOB, note TEXT)")
for i in range(8):  # bulk imports: ~15 MB per transaction, one segment each
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(payload, note) VALUES (randomblob(1024), 'bulk')", [()] * 15000)
    conn.execute("COMMIT")
    time.sleep(1.2)
conn.close()
"""


def test_large_segments_restore_in_bounded_memory(app_db: Path, file_replica: Replica, out_dir: Path) -> None:
    """Memory is bounded by bytes in flight, not by the number of objects: big segments wait on disk."""
    writer = Writer(app_db, app_db.parent / "log").start(count=0)
    writer.wait()
    repl = Replicator(app_db, [file_replica.url], ("--sync-interval", "1s"), file_replica.env).start()
    subprocess.run([sys.executable, "-c", BULK_APP, str(app_db)], check=True, timeout=120)
    assert repl.stop() == 0, repl.output
    sizes = [o.size for o in file_replica.client.list("generations/") if o.key.endswith(".seg")]
    assert len([size for size in sizes if size > 10_000_000]) >= 6

    done, peak_kb = restore_measuring_rss(file_replica.url, "-o", str(out_dir / "app.db"), "-q")
    assert done.returncode == 0, done.stderr
    assert peak_kb < 80 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
    assert rows(out_dir / "app.db") == rows(app_db)


def test_a_txid_past_the_end_is_an_error_naming_the_latest(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    latest = json.loads(cli("wal", str(replicated[1].root), "--json").stdout)[-1]["last_txid"]
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "app.db"), "--txid", str(latest + 1))
    says = f"transaction {latest + 1} was never shipped; the latest restorable is txid {latest}"
    assert_clean_failure(done, says, out_dir)
    assert cli("restore", str(replicated[1].root), "-o", str(out_dir / "app.db"), "--txid", str(latest)).returncode == 0


def test_a_timestamp_in_the_future_is_an_error_naming_the_latest(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    done = cli("restore", str(replicated[1].root), "-o", str(out_dir / "app.db"), "--timestamp", "2999-01-01T00:00:00Z")
    assert_clean_failure(done, "is in the future; the latest restorable is txid", out_dir)


def test_a_full_output_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / "app.db"
    replica = tmp_path / "replica"
    repl = Replicator(db, [str(replica)], ("--sync-interval", "100ms")).start()
    Writer(db, tmp_path / "commits.log").start(count=300, rate=2000, payload=8000).wait()
    assert repl.stop() == 0, repl.output
    with tmpfs(tmp_path / "small", "1m") as small:
        done = cli("restore", str(replica), "-o", str(small / "app.db"))
        assert_clean_failure(done, f"cannot write {small / 'app.db'}: No space left on device", small)


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("x" * 300 + ".db", "File name too long"),
        ("", "is a directory"),
        ("file/app.db", "is not a directory"),
    ],
)
def test_an_odd_output_path_is_one_line(
    replicated: tuple[Path, FileClient], out_dir: Path, output: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (out_dir / "file").write_bytes(b"")
    monkeypatch.chdir(out_dir)
    done = cli("restore", str(replicated[1].root), "-o", output)
    assert done.returncode == 1 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["file"]
