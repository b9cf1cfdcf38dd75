"""Every exception the library raises on purpose.

The CLI maps these to one-line messages and exit codes; anything else is a bug and keeps its traceback.
Messages follow "what is wrong: detail" and, where the operator can act, say what to do.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Base of every expected failure."""


class WalError(ReplicatorError):
    """The WAL file cannot be used as it is."""


class InvalidWalHeader(WalError):
    """The 32-byte WAL header is not one SQLite would accept: SQLite then treats the WAL as empty."""


class FormatError(ReplicatorError):
    """An object in a replica is not what our format promises."""


class CorruptSegment(FormatError):
    """A segment or snapshot object failed verification (bad magic, checksum, truncation, inconsistency)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"corrupt object {name}: {detail}")
        self.name = name
        self.detail = detail


class UnsupportedFormatVersion(CorruptSegment):
    """The object was written by a newer (or unknown) version of the format."""


class MalformedKey(FormatError):
    """An object key in the replica does not follow our layout (a foreign or damaged object)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"unexpected object key {key!r}: {detail}")
        self.key = key


class StorageError(ReplicatorError):
    """A replica storage operation failed."""


class ObjectNotFound(StorageError):
    """The object (or the bucket/directory holding it) does not exist."""


class PermanentStorageError(StorageError):
    """Retrying will not help: access denied, bad credentials, missing bucket, invalid request."""


class TransientStorageError(StorageError):
    """Worth retrying: timeouts, connection resets, throttling, 5xx answers."""


class ConfigError(ReplicatorError):
    """A replica URL, option or configuration value is invalid."""
