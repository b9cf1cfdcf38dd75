"""The public Python API (docs/API.md): what an app's start-up code calls, with typed results."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import rows

import replicator
from replicator.errors import ConfigError
from replicator.keys import SegmentKey
from replicator.rebuild import list_replica
from replicator.storage import FileClient


def test_restore_rebuilds_the_latest_state_and_says_what_it_restored(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    db, replica = replicated
    result = replicator.restore(out_dir / "app.db", str(replica.root))
    assert result.restored and result.skipped is None
    assert rows(out_dir / "app.db") == rows(db)
    assert result.txid is not None and result.txid > 0 and result.bytes > 0
    assert (out_dir / ".app.db-replicator").is_dir()  # `replicate` continues the generation from here


def test_restore_leaves_an_existing_database_alone_when_asked(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    existing = out_dir / "app.db"
    existing.write_bytes(b"the app's own data")
    result = replicator.restore(existing, str(replicated[1].root), if_db_not_exists=True)
    assert result.skipped is replicator.Skipped.DATABASE_EXISTS and not result.restored
    assert existing.read_bytes() == b"the app's own data"


def test_an_empty_replica_is_a_success_only_when_asked(tmp_path: Path, out_dir: Path) -> None:
    empty = str(tmp_path / "nothing-here")
    result = replicator.restore(out_dir / "app.db", empty, if_replica_exists=True)
    assert result.skipped is replicator.Skipped.REPLICA_EMPTY
    with pytest.raises(replicator.ReplicaEmpty):
        replicator.restore(out_dir / "app.db", empty)
    assert list(out_dir.iterdir()) == []


def test_restore_as_of_a_moment_takes_a_timezone_aware_datetime(
    replicated: tuple[Path, FileClient], out_dir: Path
) -> None:
    segments = sorted(k for k in list_replica(replicated[1]).objects if isinstance(k, SegmentKey))
    middle = segments[len(segments) // 2]
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=middle.last_time_us)
    result = replicator.restore(out_dir / "app.db", str(replicated[1].root), timestamp=moment)
    assert result.txid == middle.last_txid
    with pytest.raises(ConfigError, match="no time zone"):
        replicator.restore(out_dir / "other.db", str(replicated[1].root), timestamp=moment.replace(tzinfo=None))


def test_importing_the_package_loads_neither_sqlite_nor_s3() -> None:
    """The API is imported in an app's start-up: its names load when first used."""
    probe = "import sys, replicator; print(sorted({'apsw', 'botocore', 'zstandard'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_example_in_docs_api_md_runs(replicated: tuple[Path, FileClient], out_dir: Path) -> None:
    text = (Path(__file__).parent.parent / "docs" / "API.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    url = '"s3://bucket/app?endpoint=https://s3.example.com&region=auto"'
    assert url in example and '"/data/app.db"' in example
    code = example.replace(url, repr(str(replicated[1].root))).replace('"/data/app.db"', repr(str(out_dir / "app.db")))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert first.stdout.startswith("restored generation"), first.stdout
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "nothing restored: the database exists (if_db_not_exists)"
