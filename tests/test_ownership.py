"""One database per replica prefix: the owner record (replicator/ownership.py)."""

from __future__ import annotations

import json

import pytest

from replicator.ownership import (
    OWNER_KEY,
    CorruptOwnerRecord,
    Owner,
    ReplicaOwnedElsewhere,
    claim,
    read_owner,
    seal,
)
from replicator.storage import MemoryClient


def test_the_first_claim_records_the_database() -> None:
    client = MemoryClient()
    claim(client, "/data/app.db")
    owner = read_owner(client)
    assert owner is not None and owner.database == "/data/app.db"


def test_the_owner_claiming_again_changes_nothing() -> None:
    client = MemoryClient()
    claim(client, "/data/app.db")
    before = client.get(OWNER_KEY)
    claim(client, "/data/app.db")
    assert client.get(OWNER_KEY) == before


def test_another_database_is_refused_naming_both() -> None:
    client = MemoryClient()
    claim(client, "/data/app.db")
    with pytest.raises(ReplicaOwnedElsewhere, match=r"/data/app\.db.*/data/other\.db.*--takeover"):
        claim(client, "/data/other.db")
    owner = read_owner(client)
    assert owner is not None and owner.database == "/data/app.db"  # untouched


def test_takeover_records_the_new_database() -> None:
    client = MemoryClient()
    claim(client, "/data/app.db")
    claim(client, "/data/other.db", takeover=True)
    owner = read_owner(client)
    assert owner is not None and owner.database == "/data/other.db"


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe not json",
        b"[]",
        json.dumps({"format": 99, "database": "/a", "since_us": 1}).encode(),
        json.dumps({"format": 1, "database": "", "since_us": 1}).encode(),
        json.dumps({"format": 1, "database": "/a\x1b[2J", "since_us": 1}).encode(),  # would paint the terminal
        json.dumps({"format": 1, "database": "/a", "since_us": True}).encode(),
        json.dumps({"format": 1, "database": "/" + "a" * 5000, "since_us": 1}).encode(),
        b" " * (17 << 10),
        json.dumps({"format": 1, "database": "/a", "since_us": 1, "sealed": {"generation": "xyz", "txid": 1}}).encode(),
        json.dumps({"format": 1, "database": "/a", "since_us": 1, "sealed": {"generation": "0" * 16}}).encode(),
        json.dumps({"format": 1, "database": "/a", "since_us": 1, "sealed": [1, 2]}).encode(),
        json.dumps({"format": 1, "database": "/a", "since_us": 1, "writer": "not hex at all!"}).encode(),
    ],
)
def test_a_record_that_is_not_ours_is_refused_and_never_printed(data: bytes) -> None:
    client = MemoryClient()
    client.put(OWNER_KEY, data)
    with pytest.raises(CorruptOwnerRecord) as raised:
        claim(client, "/data/app.db")
    assert "\x1b" not in str(raised.value) and len(str(raised.value)) < 300
    claim(client, "/data/app.db", takeover=True)  # the operator's way out
    assert read_owner(client) is not None


def test_a_record_round_trips() -> None:
    owner = Owner("/data/app.db", 1_700_000_000_000_000)
    assert Owner.decode(owner.encode(), "x") == owner


def test_a_sealed_record_round_trips() -> None:
    owner = Owner("/data/app.db", 1_700_000_000_000_000, sealed=(0x0123456789ABCDEF, 42))
    assert Owner.decode(owner.encode(), "x") == owner


def test_a_clean_stop_seals_the_record_and_the_next_claim_takes_the_seal_off() -> None:
    client = MemoryClient()
    claim(client, "/data/app.db")
    assert seal(client, "/data/app.db", (7, 99))
    assert claim(client, "/data/app.db") == (7, 99)  # the next writer learns where the last one stopped
    owner = read_owner(client)
    assert owner is not None and owner.sealed is None  # and nobody else can continue from there
    assert claim(client, "/data/app.db") is None


def test_a_replica_taken_over_by_another_database_is_not_sealed() -> None:
    client = MemoryClient()
    claim(client, "/data/other.db")
    assert not seal(client, "/data/app.db", (7, 99))
    owner = read_owner(client)
    assert owner is not None and owner.sealed is None


def test_of_two_writers_taking_one_seal_at_once_only_one_gets_it() -> None:
    """Two copies restored from one clean stop, starting together: only one may continue the generation."""
    client = MemoryClient()
    claim(client, "/data/app.db")
    seal(client, "/data/app.db", (7, 99))

    class Racing(MemoryClient):
        """Our view of the replica, where the other writer takes the seal off between our read and our write."""

        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            data = client.get(key, offset, length)
            assert claim(client, "/data/app.db") == (7, 99)  # the other one, first
            return data

        def swap(self, key: str, expected: bytes, body: bytes) -> bool:
            return client.swap(key, expected, body)

    assert claim(Racing(), "/data/app.db") is None  # we lost: a new generation for us
    owner = read_owner(client)
    assert owner is not None and owner.sealed is None
