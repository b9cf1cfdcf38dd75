"""replicator: streaming replication of SQLite databases to object storage.

The library never prints and never exits: it raises the errors in `replicator.errors`, which the CLI
(`replicator_cli`) turns into one-line messages and exit codes.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("replicator")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
