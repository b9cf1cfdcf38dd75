"""replicator: streaming replication of SQLite databases to object storage.

The public API (docs/API.md): `restore`, with its `RestoreResult` and `Skipped` (and `ReplicaEmpty`, raised
when there is nothing to restore); `Replicator`, replication in a supervised child process; `wait`, the
durability barrier, with its `Position` (and `WaitTimeout`, `WaitFailed`, `NotRunning`); `status`, where a
database and its replicas are, as a `DatabaseStatus` of `ReplicaStatus` records; and the errors in
`replicator.errors`. The library never prints and never
exits: it raises those errors, which the CLI (`replicator_cli`) turns into one-line messages and exit codes.

Names are loaded when first used: `import replicator` stays cheap, because restore runs in our users'
entrypoints and its start-up is their boot time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import restore, status, wait
    from .barrier import Position, WaitFailed, WaitTimeout
    from .control import NotRunning
    from .process import Replicator, ReplicatorExited
    from .rebuild import ReplicaEmpty, RestoreResult, Skipped
    from .report import DatabaseStatus, ReplicaStatus

__all__ = [
    "DatabaseStatus",
    "NotRunning",
    "Position",
    "ReplicaEmpty",
    "ReplicaStatus",
    "Replicator",
    "ReplicatorExited",
    "RestoreResult",
    "Skipped",
    "WaitFailed",
    "WaitTimeout",
    "restore",
    "status",
    "wait",
]
_WHERE = {
    "restore": ".api",
    "wait": ".api",
    "status": ".api",
    "DatabaseStatus": ".report",
    "ReplicaStatus": ".report",
    "RestoreResult": ".rebuild",
    "Skipped": ".rebuild",
    "ReplicaEmpty": ".rebuild",
    "Replicator": ".process",
    "ReplicatorExited": ".process",
    "Position": ".barrier",
    "WaitTimeout": ".barrier",
    "WaitFailed": ".barrier",
    "NotRunning": ".control",
}


def __getattr__(name: str) -> Any:
    """The public names on first use, and `__version__` (importlib.metadata costs ~20 ms of a start-up)."""
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("replicator")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0+unknown"
