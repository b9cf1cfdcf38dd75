"""Counts what a replica is asked: requests, bytes and errors by operation, for metrics and `status`.

It wraps the backend directly, under RetryingClient, so that every attempt counts: a request that was retried
five times costs five requests, and its four failures show as errors of their class.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from ..errors import ObjectNotFound, PermanentStorageError, StorageError, TransientStorageError
from ..tally import Tally
from .base import Body, ObjectInfo, Readable, ReplicaClient

ERROR_CLASSES: list[tuple[type[BaseException], str]] = [
    (ObjectNotFound, "not_found"),
    (PermanentStorageError, "permanent"),
    (TransientStorageError, "transient"),
    (StorageError, "storage"),
    (OSError, "os"),
]
T = TypeVar("T")


def error_class(exc: BaseException) -> str:
    """The `class` label of a failed request."""
    return next((name for kind, name in ERROR_CLASSES if isinstance(exc, kind)), "other")


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """One replica's totals, by operation (list, get, put, swap, delete, exists)."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)  # read by get, written by put and swap
    errors: dict[tuple[str, str], int] = field(default_factory=dict)  # by (operation, error class)
    last_error: str | None = None  # the latest failure but "no such object" (often expected), retried or not
    last_error_at: float | None = None  # its Unix time


class _CountedStream:
    def __init__(self, inner: Readable, tally: Tally) -> None:
        self._inner, self._tally = inner, tally

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._inner.read(size)
        except BaseException as exc:
            self._tally.add(("errors", "get", error_class(exc)))
            raise
        self._tally.add(("bytes", "get"), len(data))
        return data


class MeteredClient:
    """A ReplicaClient that counts every call of the one it wraps (see the module docstring)."""

    def __init__(self, inner: ReplicaClient) -> None:
        self.inner = inner
        self.tally = Tally()
        self.last_error: tuple[str, float] | None = None  # message, Unix time

    @property
    def url(self) -> str:
        return self.inner.url

    def counts(self) -> RequestCounts:
        message, at = self.last_error or (None, None)
        out = RequestCounts(last_error=message, last_error_at=at)
        for key, n in self.tally.counts().items():
            assert isinstance(key, tuple)
            if key[0] == "errors":
                out.errors[(key[1], key[2])] = n
            else:
                getattr(out, key[0])[key[1]] = n
        return out

    def _call(self, operation: str, fn: Callable[[], T], size: Callable[[T], int] = lambda _: 0) -> T:
        """Run one request, counting it, its bytes (`size` of its result) or its failure."""
        self.tally.add(("requests", operation))
        try:
            result = fn()
        except BaseException as exc:
            self.tally.add(("errors", operation, error_class(exc)))
            if not isinstance(exc, ObjectNotFound):
                self.last_error = (str(exc), time.time())
            raise
        if n := size(result):
            self.tally.add(("bytes", operation), n)
        return result

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        return iter(self._call("list", lambda: list(self.inner.list(prefix, start_after=start_after, limit=limit))))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("get", lambda: self.inner.get(key, offset, length), len)

    def stream(self, key: str, offset: int = 0) -> Readable:
        """Opening counts as the request; its bytes count as they are read."""
        return _CountedStream(self._call("get", lambda: self.inner.stream(key, offset)), self.tally)

    def put(self, key: str, body: Body) -> None:
        if isinstance(body, bytes):
            sent = len(body)
        else:
            start = body.tell()
            sent = body.seek(0, io.SEEK_END) - start
            body.seek(start)
        self._call("put", lambda: self.inner.put(key, body), lambda _: sent)

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        return self._call("swap", lambda: self.inner.swap(key, expected, body), lambda _: len(body))

    def delete(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        self._call("delete", lambda: self.inner.delete(batch))

    def exists(self, key: str) -> bool:
        return self._call("exists", lambda: self.inner.exists(key))


def request_counts(client: ReplicaClient) -> RequestCounts | None:
    """The counts of the MeteredClient inside `client`'s wrappers, or None if it is not metered."""
    current: object = client
    while current is not None:
        if isinstance(current, MeteredClient):
            return current.counts()
        current = getattr(current, "inner", None)
    return None
