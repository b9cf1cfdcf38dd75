"""The storage-shaped protocol every replica backend implements, and helpers written once over it.

Keys are relative to the client's root ("generations/..."), '/'-separated, and never start with '/' or
contain '.'-leading segments: check_key() enforces that in every backend, so a key read from a bucket can
never escape the root of a directory replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

Body = bytes | BinaryIO  # a file object must be seekable, so that a retry can send it again


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int


@runtime_checkable
class ReplicaClient(Protocol):
    """All that replication, restore and retention need from an object store: list, read, write, delete, and
    one compare-and-swap for the owner record."""

    @property
    def url(self) -> str:
        """Where this client points, safe to print (never includes credentials)."""
        ...

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in lexical key order. A missing root lists nothing.

        Only keys after `start_after` (lexically) are listed, and at most `limit` of them: a probe of what
        lies beyond a known point costs one request, however much the replica holds.
        """
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Up to `length` bytes from `offset` (to the end if None); b"" at or past the end.

        Raises ObjectNotFound when the object does not exist.
        """
        ...

    def stream(self, key: str, offset: int = 0) -> Readable:
        """The object from `offset` on as a file-like reader: one request, read as it arrives.

        Raises ObjectNotFound at once if there is no such object; read() may raise StorageError midway
        (a dropped connection), after which the caller can open a new stream from where it stopped.
        """
        ...

    def put(self, key: str, body: Body) -> None:
        """Store an object atomically: readers see the old object, the whole new one, or none."""
        ...

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        """Replace a small object with `body` only if it still holds exactly `expected`; False if it does not.

        Atomic against another writer doing the same where the store can tell (S3's conditional PUT,
        If-Match; a lock beside a directory replica). A store that ignores If-Match lets the last one win.
        """
        ...

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; keys that do not exist are ignored."""
        ...

    def exists(self, key: str) -> bool: ...


def after(listing: list[ObjectInfo], start_after: str, limit: int | None) -> list[ObjectInfo]:
    """A sorted listing cut as `list(start_after=, limit=)` asks, for backends that list everything first."""
    kept = [o for o in listing if o.key > start_after] if start_after else listing
    return kept if limit is None else kept[:limit]


def check_key(key: str) -> str:
    """Reject keys that could escape the root or collide with a backend's temporary names."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(not p or p.startswith(".") for p in parts) or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """What a config file can say about an S3 replica beyond its URL (Litestream's per-replica keys)."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)  # never printed
    skip_verify: bool = False  # do not verify the endpoint's TLS certificate
