"""Retries live in one wrapper: transient failures are retried with jittered backoff, nothing else is."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from replicator.errors import ObjectNotFound, PermanentStorageError, TransientStorageError
from replicator.storage import MemoryClient, MeteredClient, ObjectInfo, RetryingClient, request_counts
from replicator.storage.base import Body


class Flaky(MemoryClient):
    """Fails the first `failures` calls of every operation with the given error."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.calls = 0
        self.bodies: list[bytes] = []

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self._maybe_fail()
        return super().get(key, offset, length)

    def put(self, key: str, body: Body) -> None:
        data = body if isinstance(body, bytes) else body.read()  # the body is consumed, then the failure
        self.bodies.append(data)
        self._maybe_fail()
        super().put(key, data)

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        self._maybe_fail()
        return super().list(prefix, start_after=start_after, limit=limit)


def retrying(inner: Flaky, attempts: int = 4) -> tuple[RetryingClient, list[float]]:
    sleeps: list[float] = []
    return RetryingClient(inner, attempts=attempts, base_delay=1.0, max_delay=3.0, sleep=sleeps.append), sleeps


def test_transient_errors_are_retried_until_success() -> None:
    inner = Flaky(2, TransientStorageError("503 SlowDown"))
    MemoryClient.put(inner, "k", b"v")
    client, sleeps = retrying(inner)
    assert client.get("k") == b"v"
    assert inner.calls == 3 and len(sleeps) == 2


def test_backoff_grows_and_is_capped_with_full_jitter() -> None:
    inner = Flaky(10, TransientStorageError("timeout"))
    client, sleeps = retrying(inner, attempts=5)
    with pytest.raises(TransientStorageError):
        client.get("k")
    assert len(sleeps) == 4
    assert all(0 <= s <= cap for s, cap in zip(sleeps, [1.0, 2.0, 3.0, 3.0], strict=True))


@pytest.mark.parametrize("error", [PermanentStorageError("access denied"), ObjectNotFound("gone")])
def test_other_errors_are_not_retried(error: Exception) -> None:
    inner = Flaky(1, error)
    client, sleeps = retrying(inner)
    with pytest.raises(type(error)):
        client.get("k")
    assert inner.calls == 1 and sleeps == []


def test_a_retried_file_body_is_sent_from_its_start() -> None:
    inner = Flaky(2, TransientStorageError("reset"))
    client, _ = retrying(inner)
    client.put("k", io.BytesIO(b"abcdef"))
    body = io.BytesIO(b"head:abcdef")
    body.seek(5)  # the body starts where the caller left the file, not at byte 0
    client.put("k2", body)
    assert inner.bodies == [b"abcdef", b"abcdef", b"abcdef", b"abcdef"]
    assert MemoryClient.get(inner, "k") == MemoryClient.get(inner, "k2") == b"abcdef"


def test_listing_is_retried_as_a_whole() -> None:
    inner = Flaky(1, TransientStorageError("reset"))
    MemoryClient.put(inner, "a", b"")
    client, _ = retrying(inner)
    assert [o.key for o in client.list()] == ["a"]


class LosesTheAnswer(MemoryClient):
    """A swap that happens on the store, but whose answer is lost on the way back (a dropped connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.swaps = 0

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        self.swaps += 1
        done = super().swap(key, expected, body)
        if self.swaps == 1:
            raise TransientStorageError("connection reset")
        return done


def test_a_swap_whose_answer_was_lost_is_known_done_on_retry() -> None:
    inner = LosesTheAnswer()
    inner.put("k", b"old")
    client = RetryingClient(inner, attempts=3, sleep=lambda _: None)
    assert client.swap("k", b"old", b"new")
    assert inner.get("k") == b"new" and inner.swaps == 1


def test_a_swap_that_lost_to_another_writer_says_so() -> None:
    inner = MemoryClient()
    inner.put("k", b"theirs")
    assert not RetryingClient(inner).swap("k", b"old", b"new")
    assert inner.get("k") == b"theirs"


def test_every_attempt_counts_as_a_request_and_each_failed_one_as_an_error() -> None:
    client = RetryingClient(MeteredClient(Flaky(2, TransientStorageError("503"))), sleep=lambda _: None)
    client.put("generations/a", b"x")
    counts = request_counts(client)
    assert counts is not None
    assert counts.requests == {"put": 3} and counts.errors == {("put", "transient"): 2} and counts.bytes == {"put": 1}
