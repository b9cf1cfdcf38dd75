"""replicator: streaming replication of SQLite databases to object storage.

The library never prints and never exits: it raises the errors in `replicator.errors`, which the CLI
(`replicator_cli`) turns into one-line messages and exit codes.
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`__version__`, looked up when asked: importlib.metadata costs ~20 ms of every start-up (restore's too)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("replicator")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0+unknown"
