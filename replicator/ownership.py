"""One database per replica prefix: the owner record at the replica's root.

`replicator.json` names the database (its resolved path) that the replica belongs to. It is written when
a database first replicates there, and checked at start-up, when a replica is first reached or re-checked,
and before each new generation goes there. Another database pointed at the same place is refused, naming
both, unless the operator passes --takeover (the database moved, or really replaces the other one).

The record also says whether the last writer stopped cleanly: a replicator whose final sync proved every
replica ends at generation G, txid T seals the record with (G, T), and every replicator unseals it before
it ships anything. A seal is what lets a restored copy continue generation G at T without a new snapshot
(the next container of a redeploy): nobody else is writing G, or the seal would be gone.

The record is read from a store we do not control: it is read with a bounded GET and validated before
anything in it is trusted or printed.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import TypeGuard

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


Seal = tuple[int, int]  # (generation, txid) where the last writer stopped, everything proven


@dataclass(frozen=True, slots=True)
class Owner:
    database: str  # the resolved path of the database file
    since_us: int  # when it claimed the replica
    sealed: Seal | None = None  # set by a clean stop, cleared by the next writer before it ships
    writer: str | None = None  # 16 hex digits, random: which writer took the seal off last

    def encode(self) -> bytes:
        record: dict[str, object] = {"format": FORMAT, "database": self.database, "since_us": self.since_us}
        if self.sealed is not None:
            record["sealed"] = {"generation": f"{self.sealed[0]:016x}", "txid": self.sealed[1]}
        if self.writer is not None:
            record["writer"] = self.writer
        return json.dumps(record).encode()

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
        if not _count(since):
            raise bad("no valid time")
        writer = record.get("writer")
        if writer is not None and not _hex16(writer):
            raise bad("no valid writer mark")
        sealed = record.get("sealed")
        if sealed is None:
            return cls(database, since, None, writer)
        generation = sealed.get("generation") if isinstance(sealed, dict) else None
        txid = sealed.get("txid") if isinstance(sealed, dict) else None
        if not _hex16(generation) or not _count(txid):
            raise bad("no valid seal")
        return cls(database, since, (int(generation, 16), txid), writer)


_HEX = frozenset("0123456789abcdef")


def _hex16(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 16 and _HEX.issuperset(value)


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


def read_owner(client: ReplicaClient) -> Owner | None:
    """The replica's owner record, or None if it has none yet."""
    return _read(client)[0]


def _read(client: ReplicaClient) -> tuple[Owner | None, bytes]:
    try:
        data = client.get(OWNER_KEY, 0, _MAX_BYTES + 1)
    except ObjectNotFound:
        return None, b""
    return Owner.decode(data, client.url.rstrip("/")), data


def claim(client: ReplicaClient, database: str, *, takeover: bool = False) -> Seal | None:
    """Make sure the replica belongs to `database`: record it if unclaimed, refuse if another owns it.

    Returns the seal the record carried (the last writer's clean stop), which we removed: we may write now.
    The removal is a compare-and-swap, with our own mark in the record: of two copies restored from one
    seal and starting at once, one gets the seal and the other None (it starts a new generation).
    """
    try:
        owner, raw = _read(client)
    except CorruptOwnerRecord:
        if not takeover:
            raise
        owner, raw = None, b""
    if owner is not None and owner.database == database:
        if owner.sealed is None:
            return None
        unsealed = replace(owner, sealed=None, writer=secrets.token_hex(8))
        return owner.sealed if client.swap(OWNER_KEY, raw, unsealed.encode()) else None
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
    return None


def seal(client: ReplicaClient, database: str, at: Seal) -> bool:
    """Record a clean stop at `at` (generation, txid) in a replica that is still ours; False if it is not."""
    owner = read_owner(client)
    if owner is None or owner.database != database:
        return False
    client.put(OWNER_KEY, replace(owner, sealed=at).encode())
    return True
