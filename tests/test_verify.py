"""`replicator verify`: a healthy replica passes; every damage the bad-input catalogue makes is named, with exit 1;
a replica that cannot be read is exit 3; a drill restores and answers a sentinel query."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import S3Server
from harness import Replicator, Writer, cli, inventory

from replicator import segment
from replicator.keys import SegmentKey, SnapshotKey
from replicator.segment import Commit, SegmentReader
from replicator.storage import FileClient


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory replica with snapshots, shipped and compacted segments (levels 1 and 2)."""
    base = tmp_path_factory.mktemp("verify")
    (base / "app").mkdir()
    db = base / "app" / "app.db"
    writer = Writer(db, base / "commits.log").start(count=900, rate=300)
    repl = Replicator(db, [str(base / "replica")], ("--sync-interval", "100ms", "--compaction", "500ms,1s")).start()
    writer.wait()
    time.sleep(1.2)
    assert repl.stop() == 0, repl.output
    levels = {k.level for k in inventory(FileClient(base / "replica")) if isinstance(k, SegmentKey)}
    assert levels == {0, 1, 2}
    return base / "replica"


@pytest.fixture
def replica(template: Path, tmp_path: Path) -> FileClient:
    shutil.copytree(template, tmp_path / "replica")
    return FileClient(tmp_path / "replica")


def verified(replica: FileClient, *args: str) -> tuple[int, dict[str, object]]:
    done = cli("verify", str(replica.root), "--json", *args)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def findings(report: dict[str, object]) -> list[tuple[str, str]]:
    return [(f["kind"], f["key"]) for f in report["findings"]]  # type: ignore[attr-defined]


def shipped(replica: FileClient) -> list[SegmentKey]:
    return sorted(k for k in inventory(replica) if isinstance(k, SegmentKey) and k.level == 0)


def test_a_healthy_replica_passes_with_its_restorable_window(replica: FileClient) -> None:
    code, report = verified(replica)
    assert code == 0 and report["healthy"] and report["findings"] == []
    [window] = report["generations"]  # type: ignore[misc]
    assert (window["first_txid"], window["last_txid"]) == (0, shipped(replica)[-1].last_txid)
    assert report["objects_read"] == len(inventory(replica))
    text = cli("verify", str(replica.root))
    assert text.returncode == 0 and text.stdout.startswith(f"{replica.url}: healthy")


@pytest.mark.parametrize("which", ["snapshot", "shipped", "compacted"])
def test_a_flipped_byte_is_named(replica: FileClient, which: str) -> None:
    objects = inventory(replica)
    victim = {
        "snapshot": next(k for k in objects if isinstance(k, SnapshotKey)),
        "shipped": shipped(replica)[3],
        "compacted": next(k for k in objects if isinstance(k, SegmentKey) and k.level == 2),
    }[which]
    path = replica.path(victim.key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    code, report = verified(replica)
    assert code == 1 and ("corrupt", victim.key) in findings(report)


def test_a_truncated_object_is_named(replica: FileClient) -> None:
    victim = shipped(replica)[-1]
    path = replica.path(victim.key)
    path.write_bytes(path.read_bytes()[:-5])
    code, report = verified(replica)
    assert code == 1 and ("corrupt", victim.key) in findings(report)


def test_a_missing_middle_segment_is_a_gap(replica: FileClient) -> None:
    middle = shipped(replica)[len(shipped(replica)) // 2]
    replica.delete([middle.key])
    code, report = verified(replica)
    following = next(k for k in shipped(replica) if k.first_txid == middle.last_txid + 1)
    assert code == 1 and ("gap", following.key) in findings(report)


def test_a_second_writer_continuing_the_chain_is_a_fork(replica: FileClient) -> None:
    seg = shipped(replica)[5]
    forked = SegmentKey(seg.generation, seg.first_txid, seg.last_txid, seg.last_time_us + 1)
    replica.put(forked.key, _renamed(replica.get(seg.key), forked))
    code, report = verified(replica)
    assert code == 1 and any(kind == "fork" and key in (seg.key, forked.key) for kind, key in findings(report))


def test_a_compacted_segment_that_differs_from_what_it_stands_for_is_named(replica: FileClient) -> None:
    victim = next(k for k in inventory(replica) if isinstance(k, SegmentKey) and k.level == 1)
    reader = SegmentReader(io.BytesIO(replica.get(victim.key)), victim.key)
    records = [(c, [bytes(reversed(image)) for _, image in pages]) for c, pages in reader.commits()]
    replica.put(victim.key, segment.encode(reader.header, records))  # valid checksums, wrong pages
    code, report = verified(replica)
    assert code == 1 and ("compacted-differs", victim.key) in findings(report)


def test_foreign_objects_are_a_note_not_a_problem(replica: FileClient) -> None:
    replica.put("generations/backup.sql", b"-- not ours")
    code, report = verified(replica)
    assert code == 0 and findings(report) == [("foreign", "generations/backup.sql")]


def test_an_empty_replica_has_nothing_restorable(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, report = verified(FileClient(tmp_path / "empty"))
    assert code == 1 and findings(report) == [("nothing-restorable", "")]


def test_a_replica_that_cannot_be_read_is_exit_3(s3_server: S3Server, s3_env: None) -> None:
    done = cli("verify", f"s3://no-such-bucket-{os.getpid()}/app?endpoint={s3_server.endpoint}")
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [f"error: {done.stderr.split('error: ', 1)[1].strip()}"]
    assert "bucket does not exist" in done.stderr


def test_a_drill_restores_the_latest_state_and_answers_the_sentinel(replica: FileClient) -> None:
    code, report = verified(replica, "--sql", "SELECT count(*) FROM t")
    drill = report["drill"]
    assert code == 0 and isinstance(drill, dict)
    assert drill["txid"] == shipped(replica)[-1].last_txid and drill["seconds"] > 0
    assert drill["sentinel"] == [["900"]]


def test_a_sentinel_that_fails_fails_the_drill(replica: FileClient) -> None:
    code, report = verified(replica, "--sql", "SELECT * FROM no_such_table")
    assert code == 1 and findings(report) == [("drill-failed", "")]


def _renamed(data: bytes, key: SegmentKey) -> bytes:
    """The same segment under another key (its header rewritten to agree, so it verifies on its own)."""
    reader = SegmentReader(io.BytesIO(data), "x")
    h = reader.header
    records = [(c, [image for _, image in pages]) for c, pages in reader.commits()]
    last, images = records[-1]
    records[-1] = (Commit(last.txid, key.last_time_us, last.db_size, last.pgnos), images)
    header = segment.SegmentHeader(
        h.kind, h.page_size, h.db_size, key.generation, key.first_txid, key.last_txid, records[0][0].time_us,
        key.last_time_us, h.commit_count, h.page_count,
    )  # fmt: skip
    return segment.encode(header, records)
