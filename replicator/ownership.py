"""One database per replica prefix: the owner record at the replica's root.

`replicator.json` names the database (its resolved path) that the replica belongs to. It is written when
a database first replicates there, and checked at start-up, when a replica is first reached or re-checked,
and before each new generation goes there. Another database pointed at the same place is refused, naming
both, unless the operator passes --takeover (the database moved, or really replaces the other one).

The record is read from a store we do not control: it is read with a bounded GET and validated before
anything in it is trusted or printed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from .errors import FormatError, ObjectNotFound, ReplicatorError
from .storage import ReplicaClient

log = logging.getLogger(__name__)

OWNER_KEY = "replicator.json"
FORMAT = 1
_MAX_BYTES = 16 << 10
_MAX_PATH = 4096


class ReplicaOwnedElsewhere(ReplicatorError):
    """The replica belongs to another database."""


class CorruptOwnerRecord(FormatError):
    """The owner record exists but is not one of ours."""


@dataclass(frozen=True, slots=True)
class Owner:
    database: str  # the resolved path of the database file
    since_us: int  # when it claimed the replica

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "database": self.database, "since_us": self.since_us}).encode()

    @classmethod
    def decode(cls, data: bytes, where: str) -> Owner:
        def bad(detail: str) -> CorruptOwnerRecord:
            return CorruptOwnerRecord(
                f"{where}/{OWNER_KEY} is not a replicator owner record ({detail}); remove it or pass --takeover"
            )

        if len(data) > _MAX_BYTES:
            raise bad("too large")
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise bad("not JSON") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise bad("unknown format")
        database, since = record.get("database"), record.get("since_us")
        if not isinstance(database, str) or not 0 < len(database) <= _MAX_PATH or not database.isprintable():
            raise bad("no valid database path")
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise bad("no valid time")
        return cls(database, since)


def read_owner(client: ReplicaClient) -> Owner | None:
    """The replica's owner record, or None if it has none yet."""
    try:
        data = client.get(OWNER_KEY, 0, _MAX_BYTES + 1)
    except ObjectNotFound:
        return None
    return Owner.decode(data, client.url.rstrip("/"))


def claim(client: ReplicaClient, database: str, *, takeover: bool = False) -> None:
    """Make sure the replica belongs to `database`: record it if unclaimed, refuse if another owns it."""
    try:
        owner = read_owner(client)
    except CorruptOwnerRecord:
        if not takeover:
            raise
        owner = None
    if owner is not None and owner.database == database:
        return
    if owner is not None and not takeover:
        raise ReplicaOwnedElsewhere(
            f"{client.url} belongs to the database {owner.database}, not to {database}: two databases must "
            "not share a replica (a copied config?); give each its own, or pass --takeover if this one "
            "really replaces it"
        )
    client.put(OWNER_KEY, Owner(database, time.time_ns() // 1000).encode())
    if owner is not None:
        log.warning("%s: taken over from the database %s (--takeover)", client.url, owner.database)
    else:
        log.info("%s: recorded as the replica of %s", client.url, database)
