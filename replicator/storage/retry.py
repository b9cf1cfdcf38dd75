"""Retries with exponential backoff and full jitter, for any ReplicaClient: the only place that retries."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..errors import ObjectNotFound, TransientStorageError
from .base import Body, ObjectInfo, Readable, ReplicaClient

log = logging.getLogger(__name__)
T = TypeVar("T")


class _ResumingStream:
    """A stream that survives dropped connections: a failed read reopens it at the offset reached, on the
    wrapper's retry policy (so a restore of a large snapshot does not start over, nor give up at once)."""

    def __init__(self, client: RetryingClient, key: str, offset: int) -> None:
        self._client, self._key, self._offset = client, key, offset
        self._stream: Readable | None = client._call(lambda: client.inner.stream(key, offset))

    def read(self, size: int = -1) -> bytes:
        def attempt() -> bytes:
            if self._stream is None:
                self._stream = self._client.inner.stream(self._key, self._offset)
            try:
                return self._stream.read(size)
            except TransientStorageError:
                self._stream = None
                raise

        data = self._client._call(attempt)
        self._offset += len(data)
        return data


class RetryingClient:
    """Retries TransientStorageError up to `attempts` times in all; other errors pass straight through."""

    def __init__(
        self,
        inner: ReplicaClient,
        *,
        attempts: int = 6,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._jitter = jitter

    @property
    def url(self) -> str:
        return self.inner.url

    def _call(self, fn: Callable[[], T], before_retry: Callable[[], object] | None = None) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStorageError as exc:
                if attempt == self.attempts:
                    raise
                delay = self._jitter() * min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                log.warning("%s; retry %d/%d in %.2fs", exc, attempt, self.attempts - 1, delay)
                self._sleep(delay)
                if before_retry is not None:
                    before_retry()
        raise AssertionError("unreachable")

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        return iter(self._call(lambda: list(self.inner.list(prefix, start_after=start_after, limit=limit))))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(lambda: self.inner.get(key, offset, length))

    def stream(self, key: str, offset: int = 0) -> Readable:
        """Opening is retried, and so is a read that fails midway: the stream is reopened where it broke."""
        return _ResumingStream(self, key, offset)

    def put(self, key: str, body: Body) -> None:
        if isinstance(body, bytes):
            self._call(lambda: self.inner.put(key, body))
            return
        start = body.tell()
        self._call(lambda: self.inner.put(key, body), before_retry=lambda: body.seek(start))

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        """Retried like the rest; a retry that finds `body` in place learns the lost answer was a success."""
        attempts = iter(range(self.attempts))

        def once() -> bool:
            if next(attempts) > 0 and self._holds(key, body):
                return True
            return self.inner.swap(key, expected, body)

        return self._call(once)

    def _holds(self, key: str, body: bytes) -> bool:
        try:
            return self.inner.get(key) == body
        except ObjectNotFound:
            return False

    def delete(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        self._call(lambda: self.inner.delete(batch))

    def exists(self, key: str) -> bool:
        return self._call(lambda: self.inner.exists(key))
