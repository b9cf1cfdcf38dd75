"""The local spool's bookkeeping: what each database has spooled for its replicas, and the process-wide cap.

Rules:
1. Objects are spooled in chain order (keys.chain_order) and deleted once every replica still served has
   them (`Outbox.collect`). While a replica is down, what waits for it stays on disk, never in memory.
2. Every spool of the process shares one `SpoolBudget`: the most bytes they may hold together
   (`--spool-limit`). Beyond it, the database whose spool holds the most that only unreachable replicas
   wait for drops exactly that (`Outbox.shed`), never what a reachable replica still needs. A replica
   that comes back then finds a gap in the spool where its chain would continue, and gets a fresh
   snapshot instead (uploader rule 2): its history has a hole the restore planner sees, its latest state
   none. The local disk stays bounded however long an outage lasts.
3. Objects a reachable replica is still taking are never dropped, so a slow replica or a snapshot larger
   than the limit can take the spool over it: that is said once, and nothing is lost.
4. Compacted segments (compactor.py) are extras, not links of the chain: each goes to every replica whose
   chain has reached its end in its generation, and is deleted once every replica still served has it or
   has moved on to a newer generation. They only speed restores up, so shedding drops them first.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from .keys import ObjectKey, SegmentKey, SnapshotKey, chain_order
from .lineage import Position
from .storage.base import ReplicaClient
from .storage.file import FileClient

log = logging.getLogger(__name__)
Head = tuple[int, int]  # (generation, txid): how far the capture loop has spooled


class Taker(Protocol):
    """What the outbox reads of each replica's uploader (uploader.py)."""

    client: ReplicaClient
    position: Position  # how far along the chain the replica has taken the spool
    held: set[ObjectKey] | None  # what the replica holds, None until it has answered a LIST
    refused: str | None  # no longer served
    failing_since: float | None  # unreachable since then


class SpoolBudget:
    """The bytes every spool of the process may hold together (rule 2); thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._used = 0
        self._outboxes: set[Outbox] = set()
        self._over_said = False
        self._relieving = False

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def join(self, outbox: Outbox) -> None:
        with self._lock:
            self._outboxes.add(outbox)

    def leave(self, outbox: Outbox) -> None:
        """The database is no longer followed: its spool (if any is left) is not ours to drop any more."""
        with self._lock:
            self._outboxes.discard(outbox)

    def changed(self, delta: int) -> None:
        """A spool grew or shrank by `delta` bytes; beyond the limit, shed (rule 2) until back under it."""
        with self._lock:
            self._used += delta
            if self._used <= self.limit:
                self._over_said = False
                return
            if self._relieving:
                return  # another call is shedding already (possibly this thread's, further up)
            self._relieving = True
            outboxes = list(self._outboxes)
        try:
            for outbox in sorted(outboxes, key=lambda o: o.sheddable, reverse=True):
                if self.used <= self.limit or not outbox.sheddable:
                    break
                outbox.shed()
        finally:
            with self._lock:
                self._relieving = False
                still_over = self._used > self.limit
                said, self._over_said = self._over_said, self._over_said or still_over
        if still_over and not said:
            log.warning(
                "the spool holds %.1f MB, over its limit of %.1f MB, but every replica it waits for is "
                "reachable (a slow replica, or a snapshot larger than the limit): nothing is dropped",
                self.used / 1e6,
                self.limit / 1e6,
            )


class Outbox:
    """What the capture loop has spooled, how far each replica has taken it, and what replicas ask of it."""

    def __init__(self, spool: FileClient, budget: SpoolBudget | None = None, *, database: str = "") -> None:
        self.spool = spool
        self.database = database
        self.budget = budget
        self._lock = threading.Lock()
        self._orders: list[Position] = []  # sorted: the chain order of each spooled object
        self._keys: dict[Position, ObjectKey] = {}
        self._sizes: dict[Position, int] = {}
        self._extras: dict[SegmentKey, int] = {}  # compacted segments, with their sizes (rule 4)
        self.uploaders: Sequence[Taker] = []
        self._head: Head | None = None
        self._snapshot_wanted = False
        self.on_request: Callable[[], None] = lambda: None  # wakes the capture side (store.py) for a request
        self.on_news: Callable[[], None] = lambda: None  # wakes the uploaders (store.py): something to send
        if budget is not None:
            budget.join(self)

    def close(self) -> None:
        if self.budget is not None:
            self.budget.leave(self)

    def notify(self) -> None:
        self.on_news()

    @property
    def head(self) -> Head | None:
        with self._lock:
            return self._head

    def set_head(self, generation: int, txid: int) -> None:
        with self._lock:
            self._head = (generation, txid)
        self.on_news()

    def request_snapshot(self) -> None:
        """Asked by an uploader whose replica needs a new base: the capture loop takes one soon."""
        with self._lock:
            self._snapshot_wanted = True
        self.on_request()

    def snapshot_requested(self) -> bool:
        with self._lock:
            return self._snapshot_wanted

    def take_snapshot_request(self) -> bool:
        with self._lock:
            wanted, self._snapshot_wanted = self._snapshot_wanted, False
            return wanted

    def has(self, key: ObjectKey) -> bool:
        """Whether an object of this key's position (its chain order) is spooled; a compacted segment, which
        shares its position with the shipped segment that ends where it does, is looked up among the extras."""
        if isinstance(key, SegmentKey) and key.level > 0:
            with self._lock:
                return key in self._extras
        return self.key_at(chain_order(key)) is not None

    def key_at(self, order: Position) -> ObjectKey | None:
        with self._lock:
            return self._keys.get(order)

    def add(self, key: ObjectKey, size: int) -> None:
        """`key` is in the spool now, `size` bytes of it."""
        order = chain_order(key)
        with self._lock:
            if order not in self._keys:
                bisect.insort(self._orders, order)
            self._keys[order] = key
            delta = size - self._sizes.get(order, 0)
            self._sizes[order] = size
        if self.budget is not None:
            self.budget.changed(delta)
        self.on_news()

    def add_extra(self, key: SegmentKey, size: int) -> None:
        """A compacted segment is in the spool now (rule 4)."""
        with self._lock:
            delta = size - self._extras.get(key, 0)
            self._extras[key] = size
        if self.budget is not None:
            self.budget.changed(delta)
        self.on_news()

    def next_extra(self, position: Position, held: set[ObjectKey]) -> SegmentKey | None:
        """The first compacted segment a replica at `position`, holding `held`, should get (rule 4)."""
        generation, txid, _ = position
        with self._lock:
            due = [k for k in self._extras if k.generation == generation and k.last_txid <= txid and k not in held]
        return min(due, key=lambda k: (k.last_txid, k.level), default=None)

    def next_after(self, position: Position) -> ObjectKey | None:
        with self._lock:
            i = bisect.bisect_right(self._orders, position)
            return self._keys[self._orders[i]] if i < len(self._orders) else None

    def next_snapshot_after(self, position: Position) -> SnapshotKey | None:
        with self._lock:
            start = bisect.bisect_right(self._orders, position)
            found = (self._keys[o] for o in self._orders[start:] if o[2] == 1)
            return next((k for k in found if isinstance(k, SnapshotKey)), None)

    def waiting(self, position: Position) -> tuple[int, int, ObjectKey | None]:
        """What a replica at `position` has yet to take: objects, bytes, and the first of them."""
        with self._lock:
            behind = self._orders[bisect.bisect_right(self._orders, position) :]
            first = self._keys[behind[0]] if behind else None
            return len(behind), sum(self._sizes[o] for o in behind), first

    def collect(self) -> None:
        """Delete spooled objects every replica still served has (rules 1 and 4)."""
        served = [u for u in self.uploaders if not u.refused]
        if served:
            self._drop(min(u.position for u in served))
            self._drop_extras(served)

    def _drop_extras(self, wanting: Sequence[Taker]) -> None:
        """Delete the compacted segments none of `wanting` still needs (rule 4)."""

        def needs(u: Taker, key: SegmentKey) -> bool:
            return u.position[0] <= key.generation and (u.held is None or key not in u.held)

        with self._lock:
            done = [k for k in self._extras if not any(needs(u, k) for u in wanting)]
            size = sum(self._extras.pop(k) for k in done)
        if done:
            self.spool.delete(k.key for k in done)
            if self.budget is not None:
                self.budget.changed(-size)

    @property
    def sheddable(self) -> int:
        """Bytes that only unreachable replicas wait for (rule 2)."""
        cut = self._shed_point()
        if cut is None:
            return 0
        with self._lock:
            return sum(self._sizes[o] for o in self._orders[: self._cut(cut)]) + sum(self._extras.values())

    def shed(self) -> None:
        """Rule 2: drop what only unreachable replicas wait for (they get a fresh snapshot when back).

        An uploader may be sending one of these objects right now: a file it has open stays readable, and
        one it has not opened yet is skipped (uploader.py's `_send`)."""
        cut = self._shed_point()
        if cut is None:
            return
        self._drop_extras([u for u in self.uploaders if not u.refused and u.failing_since is None])
        dropped, size = self._drop(cut)
        if dropped:
            failing = [u.client.url for u in self.uploaders if not u.refused and u.failing_since is not None]
            log.warning(
                "the spool is over its limit of %.1f MB: dropped %d objects (%.1f MB) of %s that only %s, "
                "unreachable, waited for; it gets a fresh snapshot when it is back",
                self.budget.limit / 1e6 if self.budget else 0,
                dropped,
                size / 1e6,
                self.database,
                ", ".join(failing),
            )

    def _shed_point(self) -> Position | None:
        """Everything up to here only unreachable replicas wait for; None if a reachable one needs it all."""
        served = [u for u in self.uploaders if not u.refused]
        if not any(u.failing_since is not None for u in served):
            return None
        reachable = [u.position for u in served if u.failing_since is None]
        if reachable:
            return min(reachable)
        with self._lock:
            return self._orders[-1] if self._orders else None

    def _cut(self, position: Position) -> int:
        return bisect.bisect_right(self._orders, position)

    def _drop(self, position: Position) -> tuple[int, int]:
        """Delete every spooled object up to `position` (in chain order): (how many, bytes)."""
        with self._lock:
            cut = self._cut(position)
            done = [self._keys.pop(order) for order in self._orders[:cut]]
            size = sum(self._sizes.pop(order) for order in self._orders[:cut])
            del self._orders[:cut]
        if done:
            self.spool.delete(k.key for k in done)
            if self.budget is not None:
                self.budget.changed(-size)
        return len(done), size
