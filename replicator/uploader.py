"""Moving spooled objects to the replicas: one thread per replica, so a slow or dead one holds up no other.

Rules:
1. Objects go to a replica in chain order (keys.chain_order), each exactly once, and a replica's position
   is saved (state.py) only after its PUT succeeded: a crash re-sends at most the one object in flight.
2. A spooled object is deleted only once every replica has it.
3. While a replica is down, its uploader retries with capped backoff forever; what waits for it stays in
   the spool on disk, never in memory.
4. Retention runs here, from the inventory of what this replica holds (built by one LIST at start-up and
   kept current by our own uploads): it costs requests only when there is something to delete.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Callable

from . import keys
from .errors import StorageError
from .keys import ObjectKey, SnapshotKey, chain_order
from .retention import plan_retention
from .state import StateDir
from .storage import ReplicaClient
from .storage.file import FileClient

log = logging.getLogger(__name__)
Position = tuple[int, int, int]
NOTHING: Position = (-1, -1, -1)


def inventory(client: ReplicaClient) -> set[ObjectKey]:
    """Every object of ours a replica holds (one LIST); foreign keys are logged and ignored."""
    ours, foreign = keys.parse_listing(o.key for o in client.list(keys.GENERATIONS))
    if foreign:
        log.warning(
            "%s holds %d objects that are not ours (e.g. %s); ignoring them", client.url, len(foreign), foreign[0]
        )
    return set(ours)


class Hub:
    """What the capture loop has spooled, and how far each replica has taken it."""

    def __init__(self, spool: FileClient) -> None:
        self.spool = spool
        self.cond = threading.Condition()
        self._orders: list[Position] = []  # sorted: the chain order of each spooled object
        self._keys: dict[Position, ObjectKey] = {}
        self.uploaders: list[Uploader] = []
        self.snapshot_wanted = False  # set by an uploader whose replica lacks the current generation

    def has_snapshot(self, generation: int) -> bool:
        with self.cond:
            return any(isinstance(k, SnapshotKey) and k.generation == generation for k in self._keys.values())

    def add(self, key: ObjectKey) -> None:
        order = chain_order(key)
        with self.cond:
            if order not in self._keys:
                bisect.insort(self._orders, order)
            self._keys[order] = key
            self.cond.notify_all()

    def next_after(self, position: Position) -> ObjectKey | None:
        with self.cond:
            i = bisect.bisect_right(self._orders, position)
            return self._keys[self._orders[i]] if i < len(self._orders) else None

    def backlog(self, position: Position) -> int:
        with self.cond:
            return len(self._orders) - bisect.bisect_right(self._orders, position)

    def collect(self) -> None:
        """Delete spooled objects every replica has."""
        with self.cond:
            if not self.uploaders:
                return
            low = min(u.position for u in self.uploaders)
            cut = bisect.bisect_right(self._orders, low)
            done = [self._keys.pop(order) for order in self._orders[:cut]]
            del self._orders[:cut]
        if done:
            self.spool.delete(k.key for k in done)


class Uploader(threading.Thread):
    def __init__(
        self,
        hub: Hub,
        client: ReplicaClient,
        state_dir: StateDir,
        inventory: set[ObjectKey] | None,
        *,
        check: Callable[[ReplicaClient, set[ObjectKey]], str | None],
        retention_us: int,
        retention_check_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name=f"upload {client.url}", daemon=True)
        self.hub = hub
        self.client = client
        self.state_dir = state_dir
        self.inventory = inventory  # None until the replica has answered a LIST
        self.check = check
        self.refused: str | None = None
        self.position = state_dir.load_replica(client.url) or NOTHING
        self.retention_us = retention_us
        self.retention_check_s = retention_check_s
        self.clock = clock
        self.failing_since: float | None = None
        self._deadline: float | None = None  # set when stopping: keep draining until then
        self._wake = threading.Event()

    def next_object(self) -> ObjectKey | None:
        return self.hub.next_after(self.position)

    def stop(self, deadline: float) -> None:
        self._deadline = deadline
        with self.hub.cond:
            self.hub.cond.notify_all()
        self._wake.set()

    def run(self) -> None:
        backoff = 1.0
        last_retention = 0.0
        while True:
            key = self.next_object()
            if key is None:
                if self._deadline is not None:
                    return
                if self.clock() - last_retention >= self.retention_check_s:
                    last_retention = self.clock()
                    self._apply_retention()
                with self.hub.cond:
                    if self.next_object() is None and self._deadline is None:
                        self.hub.cond.wait(timeout=self.retention_check_s)
                continue
            if self._deadline is not None and time.monotonic() > self._deadline:
                return
            try:
                if self.inventory is None:
                    self._discover()
                if self.refused:
                    return
                self._upload(key)
            except (StorageError, OSError) as exc:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.error("upload to %s failed: %s; retrying in %.0fs", self.client.url, exc, backoff)
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            if self.failing_since is not None:
                log.info("replica %s is reachable again", self.client.url)
                self.failing_since = None
            if isinstance(key, SnapshotKey):
                self._apply_retention()
                last_retention = self.clock()

    def _discover(self) -> None:
        """First contact with a replica that was unreachable at start-up: the checks start-up would have made."""
        held = inventory(self.client)
        problem = self.check(self.client, held)
        if problem and "does not hold the current generation" in problem:
            self.hub.snapshot_wanted = True
        elif problem:
            self.refused = problem
            log.error("not uploading to %s: %s", self.client.url, problem)
        self.inventory = held

    def _upload(self, key: ObjectKey) -> None:
        with open(self.hub.spool.path(key.key), "rb") as f:
            self.client.put(key.key, f)
        self.position = chain_order(key)
        self.state_dir.save_replica(self.client.url, self.position)
        assert self.inventory is not None
        self.inventory.add(key)
        self.hub.collect()

    def _apply_retention(self) -> None:
        if self.inventory is None or self.refused:
            return
        doomed = plan_retention(self.inventory, int(self.clock() * 1_000_000), self.retention_us)
        if not doomed:
            return
        try:
            # In the plan's order: one request per run of one generation's snapshots or segments, so the
            # store never sees a generation's segments go before its snapshots (see retention.py).
            for _, run in itertools.groupby(doomed, key=lambda k: (k.generation, isinstance(k, SnapshotKey))):
                batch = list(run)
                self.client.delete(k.key for k in batch)
                self.inventory.difference_update(batch)
        except StorageError as exc:
            log.error("retention on %s failed: %s; will retry", self.client.url, exc)
            return
        log.info("retention: deleted %d objects from %s", len(doomed), self.client.url)
