"""One contract, every backend: memory, a local directory, and S3 over HTTP (moto server)."""

from __future__ import annotations

import io

import pytest

from replicator.errors import ObjectNotFound
from replicator.storage import ReplicaClient, RetryingClient


def test_put_then_get_returns_the_bytes(client: ReplicaClient) -> None:
    client.put("generations/a/one", b"hello world")
    assert client.get("generations/a/one") == b"hello world"


def test_empty_objects_are_objects(client: ReplicaClient) -> None:
    client.put("empty", b"")
    assert client.get("empty") == b""
    assert client.exists("empty")


def test_get_of_a_missing_object_raises_not_found(client: ReplicaClient) -> None:
    with pytest.raises(ObjectNotFound):
        client.get("generations/nope")


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [(0, 3, b"012"), (4, 2, b"45"), (7, None, b"789"), (8, 100, b"89"), (10, 5, b""), (50, None, b"")],
)
def test_ranged_get(client: ReplicaClient, offset: int, length: int | None, expected: bytes) -> None:
    client.put("digits", b"0123456789")
    assert client.get("digits", offset, length) == expected


def test_put_replaces_an_object_whole(client: ReplicaClient) -> None:
    client.put("k", b"first version, longer")
    client.put("k", b"second")
    assert client.get("k") == b"second"


def test_put_from_a_file_object(client: ReplicaClient) -> None:
    body = io.BytesIO(b"x" * 100_000)
    client.put("big", body)
    assert client.get("big") == b"x" * 100_000


def test_list_is_sorted_filtered_and_complete(client: ReplicaClient) -> None:
    names = [f"generations/g1/segments/{i:04x}" for i in range(23)] + ["generations/g2/s", "other/x"]
    for name in reversed(names):
        client.put(name, name.encode())
    listed = list(client.list("generations/g1/"))
    assert [o.key for o in listed] == names[:23]  # more than one listing page on S3
    assert all(o.size == len(o.key) for o in listed)
    assert [o.key for o in client.list("generations/")] == names[:24]
    assert [o.key for o in client.list()] == names
    assert list(client.list("generations/g1/segments/0001")) != []


def test_list_starts_after_a_key_and_stops_at_the_limit(client: ReplicaClient) -> None:
    for name in ("a/1", "a/2", "a/3", "a/4", "b/1"):
        client.put(name, b"x")
    assert [o.key for o in client.list("a/", start_after="a/2")] == ["a/3", "a/4"]
    assert [o.key for o in client.list("a/", start_after="a/1~")] == ["a/2", "a/3", "a/4"]  # need not exist
    assert [o.key for o in client.list("", start_after="a/1", limit=2)] == ["a/2", "a/3"]
    assert [o.key for o in client.list("a/", limit=1)] == ["a/1"]


def test_swap_replaces_an_object_only_while_it_holds_what_was_expected(client: ReplicaClient) -> None:
    client.put("owner.json", b"sealed")
    assert client.swap("owner.json", b"sealed", b"mine")
    assert not client.swap("owner.json", b"sealed", b"theirs")  # the second of two racing writers loses
    assert client.get("owner.json") == b"mine"
    assert not client.swap("missing.json", b"sealed", b"mine")
    assert not client.exists("missing.json")


def test_listing_an_empty_replica_finds_nothing(client: ReplicaClient) -> None:
    assert list(client.list()) == []
    assert list(client.list("generations/")) == []


def test_delete_many_ignores_missing_keys(client: ReplicaClient) -> None:
    for i in range(5):
        client.put(f"d/{i}", b"x")
    client.delete(["d/0", "d/2", "d/missing", "d/4"])
    assert [o.key for o in client.list("d/")] == ["d/1", "d/3"]


def test_delete_more_than_one_request_holds(client: ReplicaClient) -> None:
    """S3 allows 1000 keys per DeleteObjects: AWS says MalformedXML above it, Ceph RGW a bare 400, moto
    accepts any number. The client batches, so this passes on the strictest of them."""
    keys = [f"many/{i:05d}" for i in range(1005)]
    for key in keys:
        client.put(key, b"")
    client.delete(keys)
    assert list(client.list("many/")) == []


def test_exists(client: ReplicaClient) -> None:
    client.put("here", b"1")
    assert client.exists("here")
    assert not client.exists("not-here")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../escape", "a/../../b", "a/.tmp-x", "a\\b"])
def test_invalid_keys_are_refused(client: ReplicaClient, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        client.put(key, b"x")


def test_the_retrying_wrapper_streams_every_backend_in_parts(client: ReplicaClient) -> None:
    data = bytes(range(256)) * 1000
    client.put("stream", data)
    reader = RetryingClient(client).stream("stream")
    parts = [reader.read(777) for _ in range(10)]
    assert b"".join(parts) + reader.read() == data
    assert reader.read(10) == b""


def test_url_names_the_location_without_secrets(client: ReplicaClient) -> None:
    assert "://" in client.url
    assert "testing" not in client.url


def test_stream_reads_an_object_from_any_offset(client: ReplicaClient) -> None:
    data = bytes(range(256)) * 400
    client.put("streamed", data)
    whole = client.stream("streamed")
    parts = []
    while chunk := whole.read(10_000):
        parts.append(chunk)
    assert b"".join(parts) == data
    assert client.stream("streamed", 1000).read() == data[1000:]
    assert client.stream("streamed", len(data)).read() == b""


def test_stream_of_a_missing_object_raises_not_found(client: ReplicaClient) -> None:
    with pytest.raises(ObjectNotFound):
        client.stream("generations/nope").read()
