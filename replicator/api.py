"""The Python API an app calls: from its entrypoint, app factory or management command (docs/API.md).

It takes what a user has in hand (a database path, a replica URL, a datetime) and returns typed results;
the CLI's commands are thin layers over the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from .barrier import Position
from .errors import ConfigError

if TYPE_CHECKING:
    from .rebuild import RestoreResult
    from .report import DatabaseStatus
    from .storage import ReplicaClient

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


def wait(db: str | os.PathLike[str], *, txid: int | None = None, timeout: float | None = None) -> Position:
    """The durability barrier, from any process: returns once everything committed to `db` before the call
    (or up to `txid`) is durably on every replica, and says where that is.

    It asks the replicator running for `db` (`replicator replicate`, its `--exec`, or a `Replicator`) over
    the database's control socket, and rides its normal upload cadence: it forces no extra upload. Raises
    WaitTimeout after `timeout` seconds (nothing is lost: it is still being shipped), WaitFailed if it can
    never be met (the replicator stopped, a replica refuses us), NotRunning if no replicator runs for `db`.
    """
    from . import control
    from .state import StateDir

    if timeout is not None and timeout < 0:
        raise ConfigError(f"timeout must not be negative, not {timeout}")
    socket = StateDir(Path(db).resolve()).control
    reply = control.request(
        socket, {"op": "wait", "txid": txid, "timeout": timeout}, timeout=None if timeout is None else timeout + 10
    )
    return Position(int(reply["generation"], 16), int(reply["txid"]))


def status(db: str | os.PathLike[str], urls: str | Sequence[str] = ()) -> DatabaseStatus:
    """Where `db` and each of its replicas are: generation and txid, lag, backlog, last error, restorable window.

    Asked of the replicator running for `db` if there is one (over its control socket); otherwise read from
    the local state and one LIST of each replica in `urls` (`running` is then False; without `urls`, the
    local state alone). Raises StorageError subclasses only where a replica URL is invalid; a replica that
    cannot be read shows as its `last_error`.
    """
    from .report import read
    from .storage import apply_litestream_credentials, open_client

    def clients() -> list[ReplicaClient]:
        apply_litestream_credentials()
        return [open_client(u) for u in ([urls] if isinstance(urls, str) else urls)]

    return read(Path(db), clients)
