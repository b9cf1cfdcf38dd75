"""Moving spooled objects to the replicas: one Uploader per replica, stepped on that replica's own pool
(store.py), so a slow or dead replica holds up no other.

Rules:
1. What a replica holds is learnt from the replica, never assumed: one LIST when it is first reached, and
   again after any failed request or failed probe. Its position is the end of the chain it provably holds
   (lineage.prove_chain); a replica that belongs to another database or writer is refused.
2. Objects go in chain order (keys.chain_order), and each must continue the replica's chain
   (lineage.continues). Where the next one would not (the replica is new, was wiped or re-created, or
   lost objects), the replica gets the next spooled snapshot instead, and the capture loop is asked for
   one if none is spooled: a gap is never shipped as if it were continuous. Compacted segments go once
   the chain is shipped up to their end (spool.py rule 4); they never move the replica's position.
3. A spooled object is deleted only once every replica still served has it.
4. While a replica is down, its uploader retries with capped backoff forever; what waits for it stays in
   the spool on disk, never in memory. Idle, an uploader has no wake-up of its own: the outbox wakes it
   for news, and retention only when something can have aged out of the window.
5. While uploads flow, a replica is probed right after the first upload and then at most once per verify
   interval: one LIST from where the last probe (or check) left off (keys.past_segments), which shows a
   wiped prefix or a re-created bucket (the snapshot our chain hangs from is gone) and a second live
   writer (a newer generation, or objects of our generation we never shipped: an overlapping deploy, or
   two copies restored from one seal). The second is refused loudly, naming both generations: what we
   ship next would not be restorable. Idle, it costs nothing.
6. Stopping: drain the spool, then prove from a fresh LIST that the replica holds the chain up to the
   head; only a proven replica counts as having everything.
7. Retention runs here, from the inventory of what this replica holds (kept current by our own
   uploads): it costs requests only when there is something to delete.
8. An unexpected exception in a step is logged once with its traceback and kept in `crashed` (store.py):
   the capture side turns it into a failure of the database. Nothing dies quietly.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

from . import keys, ownership
from .errors import StorageError
from .history import restorable_span, time_of
from .keys import ObjectKey, SnapshotKey, chain_order
from .lineage import NOTHING, ChainProof, Position, base_snapshot, continues, probe, prove_chain
from .retention import next_change, plan_retention
from .spool import Head, Outbox
from .storage import ReplicaClient

log = logging.getLogger(__name__)
PROBE_LIMIT = 1000  # keys in one probe LIST: one request on S3


def inventory(client: ReplicaClient) -> set[ObjectKey]:
    """Every object of ours a replica holds (one LIST); foreign keys are logged and ignored."""
    ours, foreign = keys.parse_listing(o.key for o in client.list(keys.GENERATIONS))
    if foreign:
        log.warning(
            "%s holds %d objects that are not ours (e.g. %s); ignoring them", client.url, len(foreign), foreign[0]
        )
    return set(ours)


_WAIT = object()  # "nothing to send until the capture loop spools a snapshot"
_SOON = 0.2  # seconds: how soon to look again when waiting for the capture side


class Uploader:
    """Moves one database's spool to one replica, one `step` at a time (store.py runs the steps on a pool).

    `step` does at most one request's worth of work and says when it is next due: None means "when the
    outbox has news" (`Outbox.on_news`). `lock` keeps two threads from stepping it at once.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: ReplicaClient,
        database: str,
        held: set[ObjectKey] | None,
        *,
        retention_us: int,
        verify_interval: float = 30.0,
        takeover: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.database = database
        self.held = held  # what the replica holds; None until it has answered a LIST
        self.position: Position = NOTHING
        self.refused: str | None = None
        self.crashed: BaseException | None = None  # set by whoever stepped it (rule 8)
        self.proven: Head | None = None  # set when stopping: what a fresh LIST proved the replica holds
        self.on_progress: Callable[[], None] = lambda: None  # position moved or refused (barrier.py)
        self.done = False  # refused, proven after `stop`, or out of time: no more steps
        self.failing_since: float | None = None
        self.last_error: str | None = None  # the latest failed request's message (report.py)
        self.last_upload: float | None = None  # clock() of the last upload the replica acknowledged
        self.last_progress: float | None = None  # the same, time.monotonic(): the watchdog's progress
        self.retention_us = retention_us
        self.verify_interval = verify_interval
        self.clock = clock
        self.lock = threading.Lock()
        self._takeover = takeover
        self._checked = False  # position is known from a listing
        self._asked = False  # a snapshot was requested for this replica and has not arrived yet
        self._backoff = 1.0
        self._retention_at: float | None = 0.0  # wall-clock time retention may next delete something
        self._last_probe = 0.0
        self._probe_from: Head = (-1, 0)  # (generation, txid) the next probe lists from: the last one's end
        self._deadline: float | None = None  # set when stopping: keep draining until then
        self._window: tuple[int, tuple[int, int] | None] | None = None  # restorable()'s: (id(held), window)

    def stop(self, deadline: float) -> None:
        """Drain, prove (rule 6) and be done by `deadline` (time.monotonic())."""
        self._deadline = deadline
        self.outbox.notify()

    def restorable(self) -> tuple[int, int] | None:
        """The restorable window of what the replica holds (report.py): worked out from the whole listing only
        after it was read anew or something was deleted; our own uploads extend it (`_extend_window`)."""
        held = self.held
        if held is None:
            return None
        if self._window is None or self._window[0] != id(held):
            self._window = (id(held), restorable_span(set(held)))  # a copy: the upload thread may add meanwhile
        return self._window[1]

    def _extend_window(self, key: ObjectKey) -> None:
        cached = self._window
        if cached is None or cached[1] is None:
            self._window = None  # a first snapshot: worked out whole at the next look
            return
        start, end = cached[1]
        if isinstance(key, SnapshotKey):
            start = min(start, key.time_us)
        self._window = (cached[0], (start, max(end, time_of(key))))

    @property
    def behind(self) -> int:
        return self.outbox.waiting(self.position)[0]

    def _expired(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def step(self) -> float | None:
        """One request's worth of work (see the class docstring). Unexpected exceptions propagate (rule 8)."""
        with self.lock:
            if self.done or self.refused or self._expired():
                self.done = True
                return None
            try:
                wake = self._step()
            except (StorageError, OSError) as exc:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                self._checked = False  # rule 1: whatever happened, look at the replica before going on
                self.held = None
                self.last_error = str(exc)
                log.error("upload to %s failed: %s; retrying in %.0fs", self.client.url, exc, self._backoff)
                wake = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, 30.0)
                if self._deadline is not None:
                    wake = min(wake, self._deadline)
                return wake
            except (ownership.ReplicaOwnedElsewhere, ownership.CorruptOwnerRecord) as exc:
                self.refused = str(exc)
                log.error("not uploading to %s: %s", self.client.url, exc)
            if self.refused:
                self.done = True
                self.on_progress()
            return None if self.done else wake

    def _step(self) -> float | None:
        now = time.monotonic()
        if not self._checked:
            if self.outbox.head is None:  # no generation spooled yet (e.g. a full disk at start)
                return now + _SOON
            self._check(self.held)
            self._recovered()
            return now
        key = self._next()
        if key is None and (extra := self.outbox.next_extra(self.position, self.held or set())) is not None:
            self._send(extra)  # a compacted segment, once the chain is shipped (spool.py rule 4)
            return now
        if key is None and self._deadline is not None:
            if self._prove():
                self.done = True
                return None
            return now
        if key is None or key is _WAIT:
            if key is None:
                self._maybe_apply_retention()
            if self._deadline is not None:
                return now + 0.1
            if self._retention_at is None:
                return None
            return now + max(0.0, self._retention_at - self.clock())
        assert isinstance(key, SnapshotKey | keys.SegmentKey)
        self._send(key)
        self._recovered()
        return now

    def _recovered(self) -> None:
        self._backoff = 1.0
        if self.failing_since is not None:
            log.info("replica %s is reachable again", self.client.url)
            self.failing_since = None

    # -- what to send ---------------------------------------------------------------------------------

    def _check(self, held: set[ObjectKey] | None) -> None:
        """Learn what the replica holds (rule 1) and where its chain ends."""
        if held is None:
            held = inventory(self.client)
            ownership.claim(self.client, self.database, takeover=self._takeover)
        self._takeover = False
        head = self.outbox.head
        assert head is not None
        proof = prove_chain(held, *head)
        if proof.problem is not None and proof.problem.other_writer:
            self.refused = f"{self.client.url} {proof.problem.value}"
            log.error("not uploading to %s: it %s", self.client.url, proof.problem.value)
            return
        if proof.problem is not None and not held and self.position == NOTHING:
            log.info("%s holds nothing yet: it gets a first snapshot", self.client.url)  # a first run, a new bucket
        elif proof.problem is not None:
            log.warning("%s %s: it gets a fresh snapshot", self.client.url, proof.problem.value)
        self.held, self.position, self._checked = held, proof.end, True
        self._probe_from = proof.end[:2]
        self.on_progress()

    def _next(self) -> ObjectKey | object | None:
        """The next object that continues the replica's chain (rule 2), _WAIT, or None if all is sent."""
        key = self.outbox.next_after(self.position)
        head = self.outbox.head
        behind = head is not None and self.position[:2] < head
        if (key is None and not behind) or (key is not None and continues(self.position, key)):
            return key
        snapshot = self.outbox.next_snapshot_after(self.position)
        if snapshot is not None:
            return snapshot
        if not self._asked:
            log.info("%s: the spool cannot continue its chain; asking for a snapshot to restart it", self.client.url)
            self._asked = True
            self.outbox.request_snapshot()
        return _WAIT

    def _send(self, key: ObjectKey) -> None:
        if isinstance(key, SnapshotKey) and key.generation != self.position[0]:
            ownership.claim(self.client, self.database)  # a generation starts here: is it still ours?
        try:
            with open(self.outbox.spool.path(key.key), "rb") as f:
                self.client.put(key.key, f)
        except FileNotFoundError:
            if self.outbox.has(key):
                raise
            return  # dropped from a full spool while we were down (spool.py's rule 2): `_next` sees the gap
        self.last_upload, self.last_progress = self.clock(), time.monotonic()
        assert self.held is not None
        self.held.add(key)
        self._extend_window(key)
        if isinstance(key, keys.SegmentKey) and key.level > 0:
            self.outbox.collect()
            return  # not a link of the chain: the position stays
        self.position = chain_order(key)
        self._asked = False
        self.on_progress()
        self.outbox.collect()
        if isinstance(key, SnapshotKey):
            self._apply_retention()
        self._probe()

    def _probe(self) -> None:
        """Rule 5: is the replica still ours alone, and does it still hold the snapshot its chain hangs from?"""
        if self.clock() - self._last_probe < self.verify_interval:
            return
        self._last_probe = self.clock()
        assert self.held is not None
        generation, txid, _ = self.position
        since = self._probe_from[1] if self._probe_from[0] == generation else 0
        start = keys.past_segments(generation, since)
        names = [o.key for o in self.client.list(keys.GENERATIONS, start_after=start, limit=PROBE_LIMIT)]
        listed, _ = keys.parse_listing(names)
        base = base_snapshot(self.held, generation)
        found = probe(listed, generation, self.held, base, complete=len(names) < PROBE_LIMIT)
        if found is None:
            self._probe_from = (generation, txid)
            return
        if found.problem.other_writer:
            self.refused = f"another replicator writes generation {found.generation:016x} there"
            log.error(
                "SECOND WRITER on %s: while this replicator ships generation %016x (txid %d), another one ships "
                "generation %016x (txid %d): two live replicators of %s (an overlapping deploy, or a second "
                "instance?). A restore takes only one of them; nothing more is shipped there from here. Stop one "
                "of them (docs/DEPLOY.md)",
                self.client.url,
                generation,
                txid,
                found.generation,
                found.txid,
                self.database,
            )
            return
        log.warning(
            "%s no longer holds the snapshot its chain hangs from (wiped or re-created?); checking it", self.client.url
        )
        self._checked, self.held = False, None

    def _prove(self) -> bool:
        """Rule 6: True once a fresh LIST shows the replica holds the whole chain up to the head."""
        head = self.outbox.head
        if head is None:
            return True  # nothing was ever captured: nothing to prove
        held = inventory(self.client)
        proof: ChainProof = prove_chain(held, *head)
        if proof.problem is None and proof.txid == head[1]:
            self.proven = head
            return True
        log.warning(
            "%s does not hold the chain up to txid %d (%s); sending what it lacks",
            self.client.url,
            head[1],
            proof.problem.value if proof.problem else f"it ends at txid {proof.txid}",
        )
        self._check(held)
        return False

    def _maybe_apply_retention(self) -> None:
        if self._retention_at is not None and self.clock() >= self._retention_at:
            self._apply_retention()

    def _apply_retention(self) -> None:
        """Rule 7; also works out when retention could next delete something (idle, it wakes only then)."""
        if self.held is None or self.refused:
            return
        now_us = int(self.clock() * 1_000_000)
        doomed = plan_retention(self.held, now_us, self.retention_us)
        next_us = next_change(self.held, now_us, self.retention_us)
        self._retention_at = None if next_us is None else next_us / 1e6
        if not doomed:
            return
        try:
            # In the plan's order: one request per run of one generation's snapshots or segments, so the
            # store never sees a generation's segments go before its snapshots (see retention.py).
            for _, run in itertools.groupby(doomed, key=lambda k: (k.generation, isinstance(k, SnapshotKey))):
                batch = list(run)
                self.client.delete(k.key for k in batch)
                self.held.difference_update(batch)
                self._window = None
        except StorageError as exc:
            log.error("retention on %s failed: %s; will retry", self.client.url, exc)
            return
        log.info("retention: deleted %d objects from %s", len(doomed), self.client.url)
