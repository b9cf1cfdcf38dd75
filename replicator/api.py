"""The Python API an app calls: from its entrypoint, app factory or management command (docs/API.md).

It takes what a user has in hand (a database path, a replica URL, a datetime) and returns typed results;
the CLI's commands are thin layers over the same functions.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .errors import ConfigError
from .rebuild import RestoreResult

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def restore(
    db: str | os.PathLike[str],
    url: str,
    *,
    if_db_not_exists: bool = False,
    if_replica_exists: bool = False,
    timestamp: datetime | None = None,
    txid: int | None = None,
    parallelism: int = 8,
) -> RestoreResult:
    """Rebuild `db` from the replica at `url` (s3://bucket/prefix?endpoint=..., or a directory).

    The latest state, or the one as of `timestamp` (timezone-aware) or `txid`. The file appears only when
    complete and past `PRAGMA integrity_check`. For an app's start-up: `if_db_not_exists` leaves an existing
    database alone, `if_replica_exists` makes an empty replica (a first deploy) a success; either way the
    result says what was done (`restored`, `skipped`). Raises `replicator.errors.ReplicatorError` subclasses:
    StorageError (the replica cannot be read), RestoreError (nothing restorable, a damaged object),
    ConfigError (bad arguments).
    """
    from .rebuild import restore as run
    from .storage import apply_litestream_credentials, open_client

    if timestamp is not None and txid is not None:
        raise ConfigError("give timestamp or txid, not both")
    if timestamp is not None and timestamp.tzinfo is None:
        raise ConfigError(f"timestamp {timestamp.isoformat()} has no time zone (use datetime.now(UTC) or similar)")
    at_us = None if timestamp is None else (timestamp - _EPOCH) // timedelta(microseconds=1)
    apply_litestream_credentials()
    return run(
        open_client(url),
        Path(db),
        parallelism=parallelism,
        if_db_not_exists=if_db_not_exists,
        if_replica_exists=if_replica_exists,
        timestamp_us=at_us,
        txid=txid,
    )
