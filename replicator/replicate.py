"""The shipper: follows one database's WAL and ships every committed transaction to its replicas.

Theory of operation (docs/LIFECYCLE.md tells the same story for users):

* We hold a read transaction, the pin (sqlite.py). While it is held SQLite cannot restart the WAL past
  frames we have not read, with one exception: if the pin was taken when the WAL was wholly copied into the
  database file, SQLite hands us read lock 0, and the next write may restart the WAL once (no second time:
  lock 0 blocks every later checkpoint).
* So we move the pin only in `_repin`, under SQLite's write lock: nobody can commit, we capture everything
  up to the WAL's end, release and retake the pin. If the WAL was then wholly copied, we are "armed": the
  one restart that may follow continues our chain exactly where we stopped.
* Every poll (tens of ms) reads SQLite's own wal-index header (-shm): its salts and committed frame count
  say at once whether anything was committed and whether the WAL was restarted. A restart while armed is
  continuity; any other change of WAL life we cannot prove, and a new generation starts.
* Captured transactions become one segment per sync interval in the local spool (state.py), then the
  uploaders (uploader.py) put them on every replica.

Generation triggers (each is logged with its reason): no local state or local state that does not match
the database (first run, fresh container, lost or damaged state); database file replaced (new inode) or
page size changed; the WAL restarted or truncated while we were not running or without our pin;
the WAL's content disagreeing with SQLite's index; a replica holding objects of ours we never shipped or
a newer generation (another writer), or lacking the generation we continue (replica wiped or added).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from . import keys, segment, wal
from .batch import encode_batch, plan_batch, split_batches
from .errors import ReplicatorError, StorageError, TransientStorageError
from .keys import ObjectKey, SegmentKey, SnapshotKey
from .snapshot import build_overlay, write_snapshot
from .sqlite import Database, DatabaseBusy, FileIdentity, check_database_file
from .state import ShipperState, StateDir, WalPosition
from .storage import ReplicaClient
from .uploader import Hub, Uploader, inventory
from .walfile import WalFile

log = logging.getLogger(__name__)


class FinalSyncFailed(ReplicatorError):
    """Shutdown could not get everything committed onto every replica in time."""


@dataclass(frozen=True, slots=True)
class Settings:
    sync_interval: float = 1.0  # at most one segment (one PUT per replica) per interval while busy
    snapshot_interval: float = 24 * 3600.0
    retention: float = 24 * 3600.0
    min_checkpoint_pages: int = 1000  # our PASSIVE checkpoint runs once the WAL holds this many frames
    poll_interval: float = 0.025
    shutdown_timeout: float = 30.0
    compression_level: int = segment.DEFAULT_LEVEL
    lock_timeout_ms: int = 100  # longest we wait for, or hold off, the app's writers


def _now_us() -> int:
    return time.time_ns() // 1000


class Replicator:
    """Replicates one database to one or more replicas. `run()` blocks until `stop` is set."""

    def __init__(self, db_path: Path, clients: list[ReplicaClient], settings: Settings | None = None) -> None:
        self.db_path = Path(db_path).absolute()
        self.clients = clients
        self.settings = settings or Settings()
        self.state_dir = StateDir(self.db_path)
        self.hub = Hub(self.state_dir.spool)
        self.wal_file = WalFile(Path(f"{self.db_path}-wal"))
        self.db: Database | None = None
        self.state: ShipperState | None = None
        self.life: wal.WalHeader | None = None  # header of the WAL life our cursor is in
        self.cursor: WalPosition | None = None  # how far we have collected (state.wal: how far flushed)
        self.pending: list[wal.Transaction] = []  # collected, not yet in the spool
        self.armed = False  # a WAL restart now would continue our chain (see the module docstring)
        self._mismatches = 0
        self._checkpointing = False  # steps 1-2 of a checkpoint done, step 3 due
        self._last_news = 0.0  # when we last shipped (the loop polls faster while the app is writing)
        self._last_checkpoint = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        if not self._wait_for_database(stop):
            return
        inventories = self._open(stop)
        uploaders = [
            Uploader(
                self.hub,
                c,
                self.state_dir,
                inventories[c.url],
                check=self.replica_problem,
                retention_us=int(self.settings.retention * 1e6),
            )
            for c in self.clients
        ]
        self.hub.uploaders = uploaders
        for u in uploaders:
            u.start()
        try:
            self._loop(stop)
            try:
                self._capture()
            except _Discontinuity as exc:
                log.error("final capture: %s", exc)
        finally:
            deadline = time.monotonic() + self.settings.shutdown_timeout
            for u in uploaders:
                u.stop(deadline)
            for u in uploaders:
                u.join(max(0.0, deadline - time.monotonic()) + 1)
            self._close()
        behind = [(u.client.url, self.hub.backlog(u.position)) for u in uploaders]
        behind = [(url, n) for url, n in behind if n]
        if behind:
            detail = ", ".join(f"{url} ({n} objects behind)" for url, n in behind)
            raise FinalSyncFailed(
                f"final sync failed: {detail}; they stay in {self.state_dir.spool.root} and are sent on the next start"
            )
        log.info("stopped: every replica has everything committed (txid %d)", self.state.txid if self.state else 0)

    def _wait_for_database(self, stop: threading.Event) -> bool:
        said = False
        while not check_database_file(self.db_path):
            if not said:
                log.info("waiting for %s to be created", self.db_path)
                said = True
            if stop.wait(0.25):
                return False
        return True

    def _open(self, stop: threading.Event) -> dict[str, set[ObjectKey] | None]:
        """Open the database, check local state against it and the replicas, start or continue a generation."""
        while True:
            try:
                return self._try_open()
            except DatabaseBusy:  # the app is inside a write transaction: wait for it
                self._close()
                if stop.wait(0.05):
                    raise

    def _try_open(self) -> dict[str, set[ObjectKey] | None]:
        self.db = Database(self.db_path, lock_timeout_ms=self.settings.lock_timeout_ms)
        if self.db.ensure_wal_mode():
            log.info("switched %s to WAL mode (replication needs it)", self.db_path)
        self.db.pin()
        state = self.state_dir.load()
        reason = self._local_state_problem(state)
        inventories = {c.url: self._inventory(c) for c in self.clients}
        self._reconcile_spool(state)  # before the replica checks: a snapshot may still wait in the spool
        if reason is None:
            assert state is not None
            reason = next(
                (
                    p
                    for c in self.clients
                    if (h := inventories[c.url]) is not None and (p := self._problem_with(state, c, h))
                ),
                None,
            )
        if reason is None:
            assert state is not None and state.wal is not None
            self.state, self.cursor = state, state.wal
            self.life = self.wal_file.header()
            log.info("continuing generation %016x at txid %d", state.generation, state.txid)
            try:
                self._capture()
                self._repin()
            except _Discontinuity as exc:
                self._start_generation(str(exc))
        else:
            self._start_generation(reason, previous=state)
        return inventories

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.wal_file.close()

    def _local_state_problem(self, state: ShipperState | None) -> str | None:
        if state is None:
            return "no local state (first run, or a fresh disk)"
        identity = FileIdentity.of(self.db_path)
        if (state.device, state.inode) != (identity.device, identity.inode):
            return "the database file was replaced"
        assert self.db is not None
        if state.page_size != self.db.page_size():
            return "the page size changed"
        header = self.wal_file.header()
        if state.wal is None or header is None or header.salt != state.wal.salt:
            return "the WAL was restarted or truncated while the replicator was not running"
        if state.wal.frames:
            stored = self.wal_file.frame_header(header, state.wal.frames - 1)
            if stored.salt != header.salt or stored.checksum != state.wal.checksum:
                return "the WAL was rewritten while the replicator was not running"
        return None

    def _inventory(self, client: ReplicaClient) -> set[ObjectKey] | None:
        """What the replica holds (one LIST), or None if it cannot be reached right now."""
        try:
            return inventory(client)
        except TransientStorageError as exc:
            log.error("cannot reach %s (%s); replicating to the others meanwhile", client.url, exc)
            return None

    def replica_problem(self, client: ReplicaClient, held: set[ObjectKey]) -> str | None:
        """Why this replica's content does not fit our current chain, or None (asked by its uploader)."""
        return None if self.state is None else self._problem_with(self.state, client, held)

    def _problem_with(self, state: ShipperState, client: ReplicaClient, held: set[ObjectKey]) -> str | None:
        ours = keys.chain_order(SnapshotKey(state.generation, state.txid, 0))
        if any(k.generation > state.generation for k in held):
            return f"{client.url} holds a newer generation (another replicator writes there?)"
        mine = [k for k in held if k.generation == state.generation]
        if any(keys.chain_order(k) > ours for k in mine):
            return f"{client.url} holds transactions of ours that we never shipped"
        spooled = self.hub.has_snapshot(state.generation)  # filled by _reconcile_spool, which runs first
        if not spooled and not any(isinstance(k, SnapshotKey) for k in mine):
            return f"{client.url} does not hold the current generation (new or wiped replica)"
        return None

    def _reconcile_spool(self, state: ShipperState | None) -> None:
        """Drop what was captured but never recorded (a crash between spool write and state save)."""
        for info in self.state_dir.spool.list(keys.GENERATIONS):
            key = keys.parse(info.key)
            unrecorded = (
                state is not None
                and key.generation == state.generation
                and (keys.chain_order(key) > keys.chain_order(SnapshotKey(state.generation, state.txid, 0)))
            )
            if unrecorded:
                self.state_dir.spool.delete([info.key])
            else:
                self.hub.add(key)

    # -- the loop -------------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        last_ship = 0.0
        while not stop.is_set():
            try:
                due = time.monotonic() - last_ship >= self.settings.sync_interval
                if not self._replaced() and self._tick(due):
                    last_ship = time.monotonic()
                    self._last_news = last_ship
            except _Discontinuity as exc:
                self._start_generation(str(exc))
            except DatabaseBusy:
                pass  # the app holds the write lock: try again next poll
            except (ReplicatorError, OSError) as exc:
                log.error("replication error: %s", exc)
                stop.wait(1.0)
            # Poll fast while the app is writing; a third as often once it has been quiet for a second (each
            # wake-up costs more than the poll itself). A first commit after a quiet spell waits <= 3 polls.
            busy = time.monotonic() - self._last_news < 1.0
            stop.wait(self.settings.poll_interval * (1 if busy else 3))

    def _tick(self, due: bool) -> bool:
        """One poll. Returns True if it shipped (so the next segment waits a sync interval)."""
        assert self.db is not None
        index = self.db.read_index()
        news = self._has_news(index)
        shipped = False
        if self._checkpointing and (due or not news):
            self._repin(checkpoint=True)  # step 3 of the checkpoint, see _checkpoint
            self._checkpointing = False
            log.info(
                "checkpoint: WAL copied into the database%s",
                "; it restarts at the next write" if self.armed else " up to the app's oldest reader",
            )
            shipped = news
        elif news and due:
            if index is not None and index.max_frame >= self.settings.min_checkpoint_pages and self._checkpoint_due():
                self._checkpoint()
            else:
                self._capture()
            shipped = True
        if self.hub.snapshot_wanted:
            self.hub.snapshot_wanted = False
            log.info("a replica lacks the current generation: taking a snapshot for it")
            self._snapshot()
        else:
            self._maybe_snapshot()
        return shipped

    def _has_news(self, index: wal.WalIndexHeader | None) -> bool:
        if index is None:
            return False
        if self.cursor is None:
            return index.max_frame > 0
        return index.salt != self.cursor.salt or index.max_frame != self.cursor.frames

    def _replaced(self) -> bool:
        try:
            identity = FileIdentity.of(self.db_path)
        except FileNotFoundError:
            return False
        assert self.db is not None
        if identity == self.db.identity:
            return False
        log.info("%s was replaced by another file; reopening", self.db_path)
        self._close()
        self.db = Database(self.db_path, lock_timeout_ms=self.settings.lock_timeout_ms)
        self.db.ensure_wal_mode()
        self.db.pin()
        self._start_generation("the database file was replaced")
        return True

    # -- capture: collect (scan and verify) then flush (encode into the spool) ---------------------------

    def _capture(self) -> None:
        self._collect()
        self._flush()

    def _collect(self) -> None:
        """Take in every transaction SQLite's index says is committed beyond our cursor (cheap: a scan)."""
        assert self.db is not None
        index = self.db.read_index()
        cursor = self.cursor
        if index is None or (cursor is not None and index.salt == cursor.salt and index.max_frame == cursor.frames):
            return
        if cursor is None or index.salt != cursor.salt:
            header = self.wal_file.header()
            if header is None or header.salt != index.salt:
                return  # the WAL is being restarted right now; look again next poll
            if not self.armed:
                raise _Discontinuity("the WAL was restarted without our pin (another process checkpointed)")
            self._flush()  # what we hold belongs to the old life
            self.life, self.armed = header, False  # one restart at most: the next change is not ours
            cursor = self.cursor = WalPosition(header.salt, header.checkpoint_seq, 0, header.checksum)
        if index.max_frame < cursor.frames:
            raise _Discontinuity("the WAL shrank under our position")
        assert self.life is not None
        scanner = wal.FrameScanner(self.life, cursor.frames, cursor.checksum)
        transactions = list(self.wal_file.scan(scanner, index.max_frame))
        end = transactions[-1].checksum if transactions else cursor.checksum
        if scanner.committed_frames != index.max_frame or end != index.frame_checksum:
            self._mismatches += 1  # a torn read of the index can do this once; persisting, it is real
            if self._mismatches > 40:
                raise _Discontinuity("the WAL's content does not match SQLite's index")
            return
        self._mismatches = 0
        self.pending += transactions
        self.cursor = replace(cursor, frames=index.max_frame, checksum=end)

    def _flush(self) -> None:
        """Encode what was collected into the spool: one segment (unless huge), then record it."""
        assert self.state is not None
        if not self.pending:
            if self.cursor is not None and self.cursor != self.state.wal:
                self.state = replace(self.state, wal=self.cursor)
                self.state_dir.save(self.state)
            return
        assert self.life is not None
        for batch in split_batches(self.pending, self.life.frame_size):
            plan = plan_batch(batch)
            first = self.state.txid + 1
            now = _now_us()
            key = SegmentKey(self.state.generation, first, first + plan.transactions - 1, now)
            with self.state_dir.spool.writer(key.key) as out:
                encode_batch(
                    out,
                    self._read_pages,
                    self.life.page_size,
                    plan,
                    generation=self.state.generation,
                    first_txid=first,
                    time_us=now,
                    level=self.settings.compression_level,
                )
            last = batch[-1]
            position = WalPosition(self.life.salt, self.life.checkpoint_seq, last.end_frame, last.checksum)
            self.state = replace(self.state, txid=key.last_txid, db_size=plan.db_size, wal=position)
            self.state_dir.save(self.state)
            self.hub.add(key)
        self.pending = []

    def _read_pages(self, pairs: Sequence[tuple[int, int]]) -> list[bytes]:
        """Pages from WAL frames of our life, verified; from the database file if the WAL restarted since.

        A restart requires the whole life copied into the file first, and our pin (read lock 0 when armed)
        keeps anything newer out of it, so the file then holds exactly the versions the frames held.
        """
        if not pairs:
            return []
        assert self.life is not None and self.db is not None
        found = self.wal_file.read_verified(self.life, [frame for _, frame in pairs])
        size = self.life.page_size
        pages = []
        restarted: bool | None = None
        for pgno, frame in pairs:
            page = found[frame]
            if page is None:
                if restarted is None:
                    current = self.wal_file.header()
                    restarted = current is None or current.salt != self.life.salt
                if not restarted:
                    raise _Discontinuity(f"WAL frame {frame} no longer verifies although the WAL did not restart")
                page = self.db.read_file((pgno - 1) * size, size).ljust(size, b"\0")
            pages.append(page)
        return pages

    # -- pin, checkpoint, generations, snapshots -------------------------------------------------------

    def _repin(self, *, checkpoint: bool = False) -> None:
        """Under the write lock: collect to the end, move the pin there (checkpointing first if asked)."""
        assert self.db is not None
        with self.db.write_lock():
            self._collect()
            self.db.unpin()
            if checkpoint:
                self.db.checkpoint()
            self.db.pin()
            index = self.db.read_index()
            cursor = self.cursor
            self.armed = (
                index is not None
                and index.backfilled == index.max_frame
                and (cursor is None or (index.salt == cursor.salt and index.max_frame == cursor.frames))
            )
        self._flush()

    def _checkpoint_due(self) -> bool:
        return not self._checkpointing and time.monotonic() - self._last_checkpoint >= 1.0

    def _checkpoint(self) -> None:
        """Keep the WAL bounded in three short steps, never waiting on the app's readers (no RESTART).

        1 (now, under the write lock): collect to the end and pin there. 2 (now, no lock of ours): PASSIVE
        checkpoint, copying everything up to the pin. 3 (next tick, under the write lock): collect what came
        meanwhile, checkpoint that little, re-pin: armed if the whole WAL is in the database. Each step
        ships within its tick's one segment.
        """
        assert self.db is not None
        self._last_checkpoint = time.monotonic()
        self._collect()  # the bulk, before taking the lock
        self._repin()
        self.db.checkpoint()
        self._checkpointing = True

    def _start_generation(self, reason: str, previous: ShipperState | None = None) -> None:
        """A new lineage: position at the WAL's committed end, and a snapshot of the database there."""
        assert self.db is not None
        previous = previous or self.state
        generation = keys.new_generation_id()
        if previous is not None:
            generation = max(generation, previous.generation + 1)
        identity = FileIdentity.of(self.db_path)
        with self.db.write_lock():
            log.info("starting generation %016x: %s", generation, reason)
            self.life = self.wal_file.header()
            index = self.db.read_index()
            cursor: WalPosition | None = None
            db_size = self._file_db_size()
            if self.life is not None and index is not None and index.salt == self.life.salt:
                scanner = wal.FrameScanner(self.life)
                transactions = list(self.wal_file.scan(scanner, index.max_frame))
                checksum = transactions[-1].checksum if transactions else self.life.checksum
                cursor = WalPosition(self.life.salt, self.life.checkpoint_seq, scanner.committed_frames, checksum)
                if transactions:
                    db_size = transactions[-1].db_size
            self.db.unpin()
            self.db.pin()
            after = self.db.read_index()
            self.armed = after is not None and after.backfilled == after.max_frame == (cursor.frames if cursor else 0)
        self.cursor, self.pending, self._mismatches, self._checkpointing = cursor, [], 0, False
        self.state = ShipperState(
            generation=generation,
            txid=0,
            db_size=db_size,
            page_size=self.db.page_size(),
            device=identity.device,
            inode=identity.inode,
            wal=cursor,
            last_snapshot_us=0,
        )
        self._snapshot()

    def _file_db_size(self) -> int:
        """Pages in the database file itself (the state when the WAL holds nothing)."""
        assert self.db is not None
        head = self.db.read_file(0, 100)
        in_header = int.from_bytes(head[28:32], "big")
        if in_header and head[24:28] == head[92:96]:
            return in_header
        return self.db.file_size() // self.db.page_size()

    def _maybe_snapshot(self) -> None:
        assert self.state is not None
        due = _now_us() - self.state.last_snapshot_us >= self.settings.snapshot_interval * 1e6
        if due and self.state.txid > 0:
            self._snapshot()

    def _snapshot(self) -> None:
        """A snapshot at our flushed position (see snapshot.py for why the image is consistent)."""
        assert self.db is not None
        self._flush()
        assert self.state is not None
        now = _now_us()
        key = SnapshotKey(self.state.generation, self.state.txid, now)
        position = self.state.wal
        in_life = position is not None and self.life is not None and position.salt == self.life.salt
        overlay = build_overlay(self.wal_file, self.life, position.frames if position and in_life else 0)
        with self.state_dir.spool.writer(key.key) as out:
            header = write_snapshot(
                out,
                self.db.read_file,
                self._read_pages,
                overlay,
                db_size=self.state.db_size,
                page_size=self.state.page_size,
                generation=self.state.generation,
                txid=self.state.txid,
                time_us=now,
                level=self.settings.compression_level,
            )
        self.state = replace(self.state, last_snapshot_us=now)
        self.state_dir.save(self.state)
        self.hub.add(key)
        log.info(
            "snapshot of generation %016x at txid %d: %d pages (%.1f MB)",
            self.state.generation,
            self.state.txid,
            header.db_size,
            header.db_size * header.page_size / 1e6,
        )


class _Discontinuity(Exception):
    """The chain cannot be proven unbroken: the message is the reason a new generation starts."""


def run_all(replicators: list[Replicator], stop: threading.Event) -> list[str]:
    """Run several databases side by side; returns the errors of those whose final sync failed."""
    errors: list[str] = []

    def one(r: Replicator) -> None:
        try:
            r.run(stop)
        except (ReplicatorError, StorageError) as exc:
            errors.append(f"{r.db_path}: {exc}")
            stop.set()

    threads = [threading.Thread(target=one, args=(r,), name=f"replicate {r.db_path}") for r in replicators]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)
    return errors
