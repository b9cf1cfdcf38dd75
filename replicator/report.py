"""Where a database and each of its replicas are: one record for `replicator status`, the metrics and the API.

A running replicator builds it from what it knows (replicate.Replicator.status, over the control socket);
`offline` builds it from the local state and one LIST per replica, for a replicator that is not running.

Rules:
1. A replica's position is the end of the chain it holds (what a restore of it reaches), never a local note.
2. Lag is the age of the oldest captured change a replica lacks (0 when it holds everything captured);
   backlog is what the spool holds for it. Both are None where they cannot be known.
3. The restorable window is from the earliest snapshot a replica holds to its latest write.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StorageError
from .history import by_generation, last_write, restorable_span, started, time_of
from .keys import ObjectKey, chain_order, parse_listing
from .lineage import NOTHING, Position, prove_chain
from .state import StateDir
from .storage import ReplicaClient, RequestCounts, request_counts

if TYPE_CHECKING:
    from .spool import Outbox
    from .uploader import Uploader
    from .watchdog import Watchdog

_NEWEST = (1 << 63) - 1  # "up to whatever it holds": prove_chain's txid bound when no local head is at hand


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    url: str
    generation: int | None = None  # the end of the chain it holds (rule 1)
    txid: int | None = None
    lag_seconds: float | None = None  # rule 2
    backlog_objects: int | None = None
    backlog_bytes: int | None = None
    last_upload: float | None = None  # Unix time of its last acknowledged upload (offline: its latest object)
    last_error: str | None = None  # the latest failed request's (retried or not), or the uploader's
    last_error_at: float | None = None  # its Unix time, where known
    restorable_from_us: int | None = None  # rule 3
    restorable_to_us: int | None = None
    stalled_since: float | None = None  # Unix time the current stall began (watchdog.py), None if not stalled
    stalls: int = 0
    refused: str | None = None  # why nothing is shipped there (another database's or writer's replica)
    requests: dict[str, int] = field(default_factory=dict)  # by operation (storage/metered.py)
    bytes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # by "operation/class"

    @property
    def window_seconds(self) -> float | None:
        if self.restorable_from_us is None or self.restorable_to_us is None:
            return None
        return (self.restorable_to_us - self.restorable_from_us) / 1e6


@dataclass(frozen=True, slots=True)
class DatabaseStatus:
    database: str
    running: bool  # a replicator process holds the database (False: read offline)
    pid: int | None = None
    following: bool = False  # the database is followed (or waited for until it exists)
    generation: int | None = None  # the local head: what was captured
    txid: int | None = None
    wal_bytes: int | None = None
    last_error: str | None = None
    generations: dict[str, int] = field(default_factory=dict)  # generations started, by reason
    checkpoints: dict[str, int] = field(default_factory=dict)  # by result
    replicas: list[ReplicaStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["generation"] = _hex(self.generation)
        for replica, out in zip(self.replicas, data["replicas"], strict=True):
            out["generation"] = _hex(replica.generation)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatabaseStatus:
        names = {f for f in cls.__dataclass_fields__}
        replica_names = {f for f in ReplicaStatus.__dataclass_fields__}
        replicas = [
            ReplicaStatus(**{**{k: v for k, v in r.items() if k in replica_names}, "generation": _int(r["generation"])})
            for r in data.get("replicas", [])
        ]
        own = {k: v for k, v in data.items() if k in names and k != "replicas"}
        return cls(**{**own, "generation": _int(data.get("generation")), "replicas": replicas})

    @property
    def stalled(self) -> list[ReplicaStatus]:
        return [r for r in self.replicas if r.stalled_since is not None]


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:016x}"


def _int(value: str | None) -> int | None:
    return None if value is None else int(value, 16)


def replica_status(uploader: Uploader, dog: Watchdog, outbox: Outbox, stalls: int) -> ReplicaStatus:
    """A running replicator's view of one replica: its uploader, its watchdog, and what the spool holds for it."""
    now, position = time.time(), uploader.position
    objects, size, first = outbox.waiting(position)
    head = outbox.head
    lag = None
    if first is not None and position != NOTHING:
        lag = max(0.0, now - time_of(first) / 1e6)
    elif head is not None and position[:2] == head:
        lag = 0.0
    start, to = uploader.restorable() or (None, None)
    counts = request_counts(uploader.client) or RequestCounts()
    stalled = dog.stalled_since
    return ReplicaStatus(
        uploader.client.url,
        generation=None if position == NOTHING else position[0],
        txid=None if position == NOTHING else position[1],
        lag_seconds=lag,
        backlog_objects=objects,
        backlog_bytes=size,
        last_upload=uploader.last_upload,
        last_error=counts.last_error or uploader.last_error,
        last_error_at=counts.last_error_at,
        restorable_from_us=start,
        restorable_to_us=to,
        stalled_since=None if stalled is None else now - (time.monotonic() - stalled),
        stalls=stalls,
        refused=uploader.refused,
        requests=counts.requests,
        bytes=counts.bytes,
        errors={f"{op}/{kind}": n for (op, kind), n in counts.errors.items()},
    )


def chain_end(held: set[ObjectKey]) -> Position | None:
    """Rule 1 without a local head: the end of the newest generation's chain that a snapshot starts."""
    based = [g for g, items in by_generation(held).items() if started(items) is not None]
    if not based:
        return None
    proof = prove_chain(held, max(based), _NEWEST)
    return None if proof.end == NOTHING else proof.end


def read(db: Path, clients: Callable[[], list[ReplicaClient]]) -> DatabaseStatus:
    """Ask the replicator running for `db` (its control socket); if none runs, read it `offline` from the
    replicas `clients()` opens."""
    from . import control

    try:
        reply = control.request(StateDir(db.resolve()).control, {"op": "status"}, timeout=10)
    except control.NotRunning:
        return offline(db, clients())
    return DatabaseStatus.from_json(reply)


def offline(db: Path, clients: list[ReplicaClient], *, now: float | None = None) -> DatabaseStatus:
    """The status of a database no replicator runs for: its local state and spool, and one LIST per replica."""
    from .uploader import inventory

    now = time.time() if now is None else now
    db = db.resolve()
    state_dir = StateDir(db)
    state = state_dir.load()
    spooled: dict[ObjectKey, int] = {}
    if state_dir.spool.root.exists():
        listed = list(state_dir.spool.list("generations/"))
        sizes = {o.key: o.size for o in listed}
        ours, _ = parse_listing(sizes)
        spooled = {k: sizes[k.key] for k in ours}
    try:
        wal_bytes: int | None = os.stat(f"{db}-wal").st_size
    except OSError:
        wal_bytes = None
    replicas = []
    for client in clients:
        try:
            held = inventory(client)
        except StorageError as exc:
            replicas.append(ReplicaStatus(client.url, last_error=str(exc)))
            continue
        end = chain_end(held)
        behind = sorted((k for k in spooled if end is None or chain_order(k) > end), key=chain_order)
        lag = None
        if behind:
            lag = max(0.0, now - time_of(behind[0]) / 1e6)
        elif state is not None and end is not None and end[:2] == (state.generation, state.txid):
            lag = 0.0
        start, to = restorable_span(held) or (None, None)
        replicas.append(
            ReplicaStatus(
                client.url,
                generation=None if end is None else end[0],
                txid=None if end is None else end[1],
                lag_seconds=lag,
                backlog_objects=len(behind),
                backlog_bytes=sum(spooled[k] for k in behind),
                last_upload=last_write(held) / 1e6 if held else None,
                restorable_from_us=start,
                restorable_to_us=to,
            )
        )
    return DatabaseStatus(
        str(db),
        running=False,
        generation=None if state is None else state.generation,
        txid=None if state is None else state.txid,
        wal_bytes=wal_bytes,
        replicas=replicas,
    )
