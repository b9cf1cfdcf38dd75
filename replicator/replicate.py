"""The shipper: follows one database's WAL and ships every committed transaction to its replicas.

This module holds one database's life: opening it, proving local state at start-up (lineage.py), starting
generations and taking snapshots, letting go of a deleted or replaced file, and the final proof. What to
do when is tracker.py's (sans-IO); reading the WAL and carrying out the checkpoint steps, capture.py's;
what is spooled for whom, spool.py's; moving it to the replicas, uploader.py's; many databases side by
side, store.py's.

Theory of operation (docs/LIFECYCLE.md tells the same story for users):

* We hold a read transaction, the pin (sqlite.py). While it is held SQLite cannot restart the WAL past
  frames we have not read, with one exception: if the pin was taken when the WAL was wholly copied into the
  database file, SQLite hands us read lock 0, and the next write may restart the WAL once (no second time:
  lock 0 blocks every later checkpoint).
* So we move the pin only in `Capture.repin` (capture.py), under SQLite's write lock: nobody can commit,
  we capture everything up to the WAL's end, release and retake the pin. If the WAL was then wholly
  copied, we are "armed": the one restart that may follow continues our chain exactly where we stopped.
* Every poll (tens of ms) reads SQLite's own wal-index header (-shm): its salts and committed frame count
  say at once whether anything was committed and whether the WAL was restarted. A restart while armed is
  continuity; any other change of WAL life we cannot prove, and a new generation starts.
* Captured transactions become one segment per sync interval in the local spool (state.py), then the
  uploaders (uploader.py) put them on every replica. A segment and the state that records it are written
  together or not at all (`_commit`): if the local disk is full, the transactions wait in memory (their
  pages stay in the pinned WAL) and are written the moment it has room again.
* Once the app has been quiet for a moment we checkpoint and stay armed, so the WAL is empty whenever the
  app is idle: an app that then closes its database and deletes or replaces the file sees exactly what it
  would see without us. We notice such a file within a poll, let go of it (close everything), remove its
  stale WAL as SQLite's last close would, and start a new generation when a database is there again.
* What we report as shipped at the end is what each replica proved to hold (uploader.py, rule 6).

Generation triggers (each is logged with its reason): no local state or local state that does not match
the database (first run, fresh container, lost or damaged state); database file replaced or deleted, or
page size changed; the WAL restarted or truncated while we were not running or without our pin; the WAL's
content disagreeing with SQLite's index; a replica holding objects of ours we never shipped or a newer
generation (another writer). A replica that merely lacks the generation (new, wiped, re-created) gets a
snapshot of the current one instead. A file just restored (state.record_restored) continues its
generation without a snapshot when it is byte for byte what the restore wrote and every replica's last
writer sealed the generation exactly there (ownership.py); anything else is a new generation.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import apsw

from . import keys, ownership, wal
from .barrier import Barrier, Position, Replica, WaitFailed
from .capture import Capture, FileGone, now_us
from .compactor import Compactor
from .config import Settings
from .control import ControlServer
from .errors import ReplicatorError, StorageError, TransientStorageError
from .history import format_time
from .keys import ObjectKey, SegmentKey, SnapshotKey
from .lineage import NOTHING, LocalFacts, NewGeneration, Reason, beyond, local_state_problem, prove_chain
from .report import DatabaseStatus, ReplicaStatus, replica_status
from .segment import Writable
from .snapshot import build_overlay, write_snapshot
from .spool import Outbox, SpoolBudget
from .sqlite import (
    Database,
    DatabaseBusy,
    ExclusiveHolder,
    ExclusiveLockingMode,
    FileIdentity,
    StaleWal,
    check_database_file,
    exclusive_mode_holder,
    remove_stale_wal,
)
from .state import ShipperState, StateDir, digest
from .storage import ReplicaClient
from .tally import Tally
from .tracker import Action, Discontinuity, Tracker
from .uploader import Uploader, inventory
from .walfile import WalFile
from .watchdog import Change, Watchdog

log = logging.getLogger(__name__)

EXCLUSIVE_UNCERTAIN_AFTER = 15.0  # an EXCLUSIVE lock with no journal written lasting this long is the pragma
DELETED = "deleted"  # _gone_reason's word for a database file that is gone from its path
WAITING_POLL = 1.0  # while the database (or its directory) does not exist: a file event usually comes first


class FinalSyncFailed(ReplicatorError):
    """Shutdown could not get everything committed onto every replica in time."""


class SpoolWriteFailed(ReplicatorError):
    """The local spool or state could not be written (typically: the disk is full)."""


class WorkerCrashed(ReplicatorError):
    """An upload step died of an unexpected exception (logged with its traceback where it happened)."""


class Replicator:
    """Replicates one database to one or more replicas, one `step` at a time (store.py drives the steps).

    `step` does what is due and says when it is next due; `finish` ships what is left and proves it; `abandon`
    lets go after a failure. Only one thread steps a Replicator at a time.
    """

    def __init__(
        self,
        db_path: Path,
        clients: list[ReplicaClient],
        settings: Settings | None = None,
        *,
        takeover: bool = False,
        budget: SpoolBudget | None = None,
    ) -> None:
        # SQLite follows symlinks and keeps the WAL beside the target: so must everything we derive.
        self.db_path = Path(db_path).resolve()
        self.clients = clients
        self.settings = settings or Settings()
        self.takeover = takeover
        self.state_dir = StateDir(self.db_path)
        self.outbox = Outbox(self.state_dir.spool, budget, database=str(self.db_path))
        self.compactor = (
            Compactor(
                self.state_dir.path / "cache",
                self.state_dir.spool,
                self.settings.compaction,
                on_built=self.outbox.add_extra,
                zstd_level=self.settings.compression_level,
            )
            if self.settings.compaction
            else None
        )
        if self.compactor is not None:
            self.compactor.on_done = self._step_soon
        self.uploaders: list[Uploader] = []
        self.db: Database | None = None
        self.wal_file = WalFile(Path(f"{self.db_path}-wal"))  # opened lazily, once per open database
        self.state: ShipperState | None = None
        self.tracker = Tracker(self.settings)
        self.capture = Capture(
            self.wal_file,
            self.tracker,
            self.settings,
            state=lambda: self.state,
            commit=self._commit,
            gone=self._gone_reason,
        )
        self.halted = False  # set by `step` once stopping is due: `finish` comes next
        self.fingerprint: tuple[tuple[int, int, int] | None, ...] = ()  # files_fingerprint() as a step began
        self.on_uploaders: Callable[[], None] = lambda: None  # the store schedules them (store.py)
        self.control: ControlServer | None = None  # set by the store: serves our socket while we hold the lock
        self.following = threading.Event()  # set once the database is followed, or waited for (supervise.py)
        self.barrier = Barrier()
        self.barrier.on_ask = self._step_soon
        self.generations = Tally()  # generations started, by reason (report.py)
        self.last_error: str | None = None  # the latest problem of the capture side (report.py)
        self._watchdogs: list[Watchdog] = []  # one per uploader (watchdog.py)
        self._stalls = Tally()  # stalls begun, by replica URL
        self._locked = False
        self._waiting_said = False  # "waiting for ... to be created" was logged
        self._open_delay = 0.05  # backoff while the app holds its lock
        self._exclusive: tuple[ExclusiveHolder, float] | None = None  # (holder, first seen): if it lasts
        self._gone: NewGeneration | None = None  # why we let go of the file: the next generation's reason
        self._spool_trouble: str | None = None  # the spool write that keeps failing, said once
        self._stop_seen: float | None = None  # when we were told to stop (the grace period runs from there)
        self._captured_us = 0  # when the final capture read the WAL: the final line's "up to"
        self._seals: dict[str, ownership.Seal | None] = {}  # per replica URL: where its last writer stopped
        self._salvaging = False  # capturing a deleted file's last transactions (_salvage)

    @property
    def poke(self) -> Callable[[], None]:
        """Called (from any thread) when this database has work that no file event announces."""
        return self.outbox.on_request

    @poke.setter
    def poke(self, callback: Callable[[], None]) -> None:
        self.outbox.on_request = callback

    def files_fingerprint(self) -> tuple[tuple[int, int, int] | None, ...]:
        """What the database and WAL files look like from outside (stat): the store's sweep steps a database
        only if this changed since its last step, so that a sweep of a thousand idle databases is cheap."""
        seen: list[tuple[int, int, int] | None] = []
        for path in (self.db_path, self.wal_file.path):
            try:
                st = os.stat(path)
            except OSError:
                seen.append(None)
            else:
                seen.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(seen)

    @property
    def capture_not_before(self) -> float:
        """When a commit could next be captured (tracker.capture_not_before); -inf while not following."""
        return self.tracker.capture_not_before if self.db is not None else float("-inf")

    def wait(self, txid: int | None = None, timeout: float | None = None) -> Position:
        """The durability barrier (barrier.py): returns once every replica holds what the app committed before
        the call (or `txid` of the current generation); raises WaitTimeout or WaitFailed. Any thread."""
        target = None
        if txid is not None:
            state = self.state
            if state is None:
                raise WaitFailed(f"{self.db_path} has no replicated history yet")
            target = Position(state.generation, txid)
        return self.barrier.wait(self._replicas, target=target, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """Where this database and each replica are (control.py's status request), as JSON. Any thread."""
        return self.report().to_json()

    def report(self) -> DatabaseStatus:
        """Where this database and each replica are (report.py). Any thread."""
        state = self.state
        try:
            wal_bytes: int | None = os.stat(self.wal_file.path).st_size
        except OSError:
            wal_bytes = None
        uploaders, dogs, stalls = self.uploaders, self._watchdogs, self._stalls.counts()
        if uploaders and len(dogs) == len(uploaders):
            replicas = [
                replica_status(u, dog, self.outbox, stalls.get(u.client.url, 0))
                for u, dog in zip(uploaders, dogs, strict=True)
            ]
        else:
            replicas = [ReplicaStatus(c.url) for c in self.clients]
        return DatabaseStatus(
            str(self.db_path),
            running=True,
            pid=os.getpid(),
            following=self.following.is_set(),  # the database is followed, or waited for until created
            generation=None if state is None else state.generation,
            txid=None if state is None else state.txid,
            wal_bytes=wal_bytes,
            last_error=self.last_error,
            generations={str(k): n for k, n in self.generations.counts().items()},
            checkpoints={str(k): n for k, n in self.capture.checkpoints.counts().items()},
            replicas=replicas,
        )

    def _replicas(self) -> list[Replica]:
        uploaders = self.uploaders
        if not uploaders:
            return [Replica(c.url, None, None) for c in self.clients]
        return [
            Replica(u.client.url, None if u.position == NOTHING else Position(*u.position[:2]), u.refused)
            for u in uploaders
        ]

    def _caught_up(self, epoch: int, index: wal.WalIndexHeader | None) -> None:
        """Tell the barrier where the head is, if everything `index` calls committed is spooled."""
        state = self.state
        if state is None or self._unflushed() or self.tracker.generation_wanted is not None:
            return
        if self.tracker.holds(index):
            self.barrier.caught_up(epoch, Position(state.generation, state.txid))

    # -- driven by the store --------------------------------------------------------------------------

    def step(self, *, stopping: bool = False) -> float | None:
        """Do what is due; returns when (time.monotonic()) it is next due, None if only a file event can tell.

        Sets `halted` when `stopping` and it is time to finish (at once, or after the grace period).
        """
        try:
            return self._step(stopping)
        finally:
            self.wal_file.forget()  # the frames this step scanned and kept: encoded by now, or read again

    def _step(self, stopping: bool) -> float | None:
        now = time.monotonic()
        self.fingerprint = self.files_fingerprint()
        if stopping and self._halting(now):
            self.halted = True
            return None
        if not self._locked and not self._lock():
            return now + WAITING_POLL
        if self.db is None:
            wake = self._attach(now)
            if self.db is None:
                return wake
        try:
            wake = self._follow(now)
        except FileGone as gone:
            if str(gone) == DELETED:
                self._salvage()
            self._let_go(str(gone))
            wake = now
        if self._stop_seen is not None:  # the grace period: follow closely until the app lets go
            return now + self.settings.poll_interval
        return wake

    def finish(self) -> None:
        """Capture what is committed, drain every replica, prove what they hold, and report it; then let go."""
        try:
            try:
                self._finish()
            except BaseException:
                self._drain_quietly()  # what was captured still goes out; the failure is the news
                raise
        finally:
            self._release()

    def abandon(self) -> None:
        """After a failure: ship what was captured if we can, and let go of everything."""
        try:
            self._drain_quietly()
        finally:
            self._release()

    def _step_soon(self) -> None:
        """From any thread (a compaction finished, a wait was asked): the store steps us again soon."""
        self.outbox.on_request()  # whatever the store set it to by now

    def _release(self) -> None:
        self.barrier.close(f"the replicator of {self.db_path} stopped")
        if self.compactor is not None:
            self.compactor.stop()
        self.outbox.close()
        self._close()
        if self._locked:
            if self.control is not None:
                self.control.remove(self.state_dir.control)
            self.state_dir.unlock()
            self._locked = False

    def _lock(self) -> bool:
        """One replicator per database (state.py's lock), once the database's directory exists."""
        if not self.db_path.parent.is_dir():
            self._waiting(self.db_path.parent)
            return False
        check_database_file(self.db_path)  # refuse a file that is not SQLite before creating anything beside it
        self.state_dir.lock()
        self._locked = True
        if self.control is not None:
            self.control.add(self.state_dir.control, self)
        self._waiting_said = False
        return True

    def _waiting(self, what: Path) -> None:
        if not self._waiting_said:
            log.info("waiting for %s to be created", what)
            self._waiting_said = True
        self.following.set()  # the app may be started: it is the one to create it

    def _attach(self, now: float) -> float | None:
        """Open the database once it exists, and (the first time) start an uploader per replica.

        Returns when to try again if it could not (the app holds its lock, or there is no database yet).
        """
        if not check_database_file(self.db_path):
            self._waiting(self.db_path)
            return now + WAITING_POLL
        listings = self._list_replicas() if not self.uploaders else None
        if not self._open(now, listings):
            return now + self._open_delay
        if not self.uploaders:
            assert listings is not None
            self._start_uploaders(listings)
        self.following.set()
        return now

    def _list_replicas(self) -> dict[str, set[ObjectKey] | None]:
        """What each replica holds (one LIST), checking it belongs to this database; None if unreachable.

        Claiming takes the last writer's seal off each replica (ownership.py): what it said is in _seals.
        """
        listings: dict[str, set[ObjectKey] | None] = {}
        for client in self.clients:
            try:
                listings[client.url] = inventory(client)
                self._seals[client.url] = ownership.claim(client, str(self.db_path), takeover=self.takeover)
            except TransientStorageError as exc:
                log.error("cannot reach %s (%s); replicating to the others meanwhile", client.url, exc)
                listings[client.url] = None
        return listings

    def _start_uploaders(self, listings: dict[str, set[ObjectKey] | None]) -> None:
        self.uploaders = [
            Uploader(
                self.outbox,
                c,
                str(self.db_path),
                listings[c.url],
                retention_us=int(self.settings.retention * 1e6),
                verify_interval=self.settings.verify_interval,
                takeover=self.takeover,
            )
            for c in self.clients
        ]
        self._watchdogs = [Watchdog(self.settings.stall_seconds) for _ in self.uploaders]
        for u in self.uploaders:
            u.on_progress = self._progressed
        self.outbox.uploaders = self.uploaders
        self.on_uploaders()

    def _progressed(self) -> None:
        """An uploader moved (any thread): wake the waits, and look at a stall it may have ended."""
        self.barrier.progressed()
        if any(dog.stalled for dog in self._watchdogs):
            self._step_soon()

    def _watch(self, now: float) -> float | None:
        """The stall watchdog (watchdog.py) over every replica: tell each stall once as it begins and once as
        it ends; returns when to look again for one that may begin."""
        head = self.outbox.head
        due: list[float] = []
        for u, dog in zip(self.uploaders, self._watchdogs, strict=True):
            change = dog.observe(now, pending=head is not None and u.position[:2] < head, progress=u.last_progress)
            event = {"database": str(self.db_path), "replica": u.client.url} if change is not None else {}
            if change is Change.STALLED:
                self._stalls.add(u.client.url)
                assert head is not None and dog.stalled_since is not None
                log.warning(
                    "replica %s is stalled: no upload for %.0fs while it lacks what was captured up to "
                    "generation %016x, txid %d (%s)",
                    u.client.url,
                    now - dog.stalled_since,
                    *head,
                    u.refused or u.last_error or "no error reported",
                    extra={**event, "event": "replica_stalled"},
                )
            elif change is Change.RECOVERED:
                log.info("replica %s is no longer stalled", u.client.url, extra={**event, "event": "replica_recovered"})
            if (at := dog.due()) is not None:
                due.append(at)
        return min(due, default=None)

    def _open(self, now: float, listings: dict[str, set[ObjectKey] | None] | None) -> bool:
        """Open the database; False while the app holds its lock (a migration can take seconds)."""
        try:
            self._try_open(listings)
        except DatabaseBusy:
            self._close()
        except (OSError, apsw.Error):
            self._close()
            if self.db_path.exists():
                raise
            return False  # deleted while we opened it: waited for again (or finished, store.py)
        else:
            self._open_delay, self._exclusive = 0.05, None
            return True
        holder = exclusive_mode_holder(self.db_path)
        if holder is None or self._exclusive is None or self._exclusive[0] != holder:
            self._exclusive = None if holder is None else (holder, now)
        elif now - self._exclusive[1] >= (1.0 if holder.certain else EXCLUSIVE_UNCERTAIN_AFTER):
            raise ExclusiveLockingMode(
                f"PID {holder.pid} holds {self.db_path} with PRAGMA locking_mode=EXCLUSIVE, which lets no "
                "other process read it; replication needs the default locking mode: remove that pragma "
                "from the app"
            )
        if self._open_delay == 0.05:
            log.info(
                "waiting for %s: the app holds its lock (a write in rollback-journal mode, or a migration); "
                "retrying until it lets go",
                self.db_path,
            )
        self._open_delay = min(self._open_delay * 2, 1.0)
        return False

    def _try_open(self, listings: dict[str, set[ObjectKey] | None] | None) -> None:
        self.db = Database(self.db_path, lock_timeout_ms=self.settings.lock_timeout_ms)
        if self.db.ensure_wal_mode():
            log.info("switched %s to WAL mode (replication needs it)", self.db_path)
        self.db.pin()
        state = self.state_dir.load()
        cause = self._gone or self._local_state_problem(state)
        self._reconcile_spool(state)
        if self.compactor is not None and state is not None and cause is None:
            self.compactor.start(state.generation)  # what the cache holds from the last run, if it continues
        if cause is None and listings is not None:
            assert state is not None
            cause = next((p for c in self.clients if (p := self._other_writer(state, c, listings[c.url]))), None)
        if cause is None and state is not None and state.wal is None:
            # The seal first: it costs nothing more, while the digest reads the whole file.
            cause = self._unsealed(state, listings) or self._restored_problem(state)
        if cause is None:
            assert state is not None
            self.state = state
            life = self.wal_file.header() if state.wal is not None else None
            # Restored: what the WAL holds came after txid (_restored_problem), so a restart continues it.
            self.tracker.follow(life, state.wal, armed=state.wal is None)
            self.outbox.set_head(state.generation, state.txid)
            how = "" if state.wal is not None else " (the restored file; no new snapshot needed)"
            log.info("continuing generation %016x at txid %d%s", state.generation, state.txid, how)
            try:
                self.capture.capture(self.db)
                self.capture.repin(self.db)
            except Discontinuity as exc:
                self._begin_generation(exc.cause)
            except SpoolWriteFailed as exc:
                self._spool_failed(exc)  # the loop writes it once there is room
        else:
            self._begin_generation(cause, previous=state)
        self._gone = None

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.wal_file.close()

    def _local_state_problem(self, state: ShipperState | None) -> NewGeneration | None:
        """lineage.local_state_problem over what the files say now."""
        assert self.db is not None
        identity = FileIdentity.of(self.db_path)
        header = self.wal_file.header()
        frames = state.wal.frames if state is not None and state.wal is not None else 0
        ours = header is not None and state is not None and state.wal is not None and header.salt == state.wal.salt
        last = self.wal_file.frame_header(header, frames - 1) if ours and header is not None and frames else None
        facts = LocalFacts(identity.device, identity.inode, self.db.page_size(), header, last)
        return local_state_problem(state, facts)

    def _restored_problem(self, state: ShipperState) -> NewGeneration | None:
        """Whether a restore's state (no WAL position) still describes the file: its digest says so.

        We hold the pin. If the WAL is empty, the pin holds read lock 0, which no checkpoint can pass: the file
        cannot change while we read it. If the app has written meanwhile, the file equal to the restored one
        means nothing was copied into it, so every committed frame in the WAL came after txid: the chain
        continues from the WAL's first frame (armed). A torn read can only disagree: a new generation.
        """
        assert self.db is not None
        if digest(self.db.read_file, self.db.file_size()) != state.restored_digest:
            return NewGeneration(Reason.RESTORED_FILE_CHANGED)
        return None

    def _unsealed(self, state: ShipperState, listings: dict[str, set[ObjectKey] | None] | None) -> NewGeneration | None:
        """A restored file continues its generation only where every replica's last writer stopped cleanly
        exactly there (ownership.py's seal): otherwise that writer may still be shipping the generation."""
        for client in self.clients:
            if listings is None or listings.get(client.url) is None:
                detail = f"{client.url} could not be asked whether generation {state.generation:016x} ended there"
                return NewGeneration(Reason.NOT_SEALED, detail)
            if self._seals.get(client.url) != (state.generation, state.txid):
                return NewGeneration(
                    Reason.NOT_SEALED,
                    f"restored generation {state.generation:016x} at txid {state.txid}, but {client.url} does not "
                    "show that its writer stopped cleanly there (still running, or it crashed)",
                )
        return None

    def _other_writer(
        self, state: ShipperState, client: ReplicaClient, held: set[ObjectKey] | None
    ) -> NewGeneration | None:
        """A replica holding objects of ours we never shipped: another writer, so a new lineage for us."""
        if held is None:
            return None
        problem = prove_chain(held, state.generation, state.txid).problem
        if problem is None or not problem.other_writer:
            return None
        return NewGeneration(Reason.OTHER_WRITER, f"{client.url} {problem.value}")

    def _reconcile_spool(self, state: ShipperState | None) -> None:
        """Queue what the spool holds; drop what was captured but never recorded (a crash or a full disk
        between spool write and state save), and any second copy of one position."""
        for info in self.state_dir.spool.list(keys.GENERATIONS):
            key = keys.parse(info.key)
            unrecorded = state is not None and beyond(key, state.generation, state.txid)
            if isinstance(key, SegmentKey) and key.level > 0:  # compacted: sent where useful (spool.py rule 4)
                if unrecorded or state is None or key.generation != state.generation:
                    self.state_dir.spool.delete([info.key])
                else:
                    self.outbox.add_extra(key, info.size)
            elif unrecorded or self.outbox.key_at(keys.chain_order(key)) not in (None, key):
                self.state_dir.spool.delete([info.key])
            else:
                self.outbox.add(key, info.size)

    # -- following ------------------------------------------------------------------------------------

    def _follow(self, now: float) -> float | None:
        """One look at the database: do what the tracker says is due, and say when to look again."""
        self._check_uploaders()
        assert self.db is not None
        epoch = self.barrier.epoch()  # before the index is read: the waits asked so far (barrier.py rule 1)
        try:
            gone = self._gone_reason()
            if gone is not None:
                raise FileGone(gone)
            index = self._act(now)
            self._spool_recovered()
            self._caught_up(epoch, index)
        except Discontinuity as exc:
            self._begin_generation(exc.cause)
        except DatabaseBusy:
            return now + self.settings.poll_interval  # the app holds the write lock: try again next poll
        except SpoolWriteFailed as exc:
            self._spool_failed(exc)
        except apsw.Error:
            if self._gone_reason() is None:
                raise  # not the file going away under us: a real failure, with its traceback
            return now
        except ReplicatorError as exc:
            log.error("replication error: %s", exc)
            self.last_error = str(exc)
            return now + 1.0
        now = time.monotonic()
        wake = self.tracker.wake_at(now, unflushed=self._unflushed())
        for soon in (now + self.settings.poll_interval if self.barrier.untargeted() else None, self._watch(now)):
            if soon is not None:
                wake = soon if wake is None else min(wake, soon)
        if wake is None:
            self.db.release_writer()  # idle until a commit: its memory is better spent on busy databases
        return self._snapshot_wake(now, wake)

    def _snapshot_wake(self, now: float, wake: float | None) -> float | None:
        """The tracker's answer, or sooner for a snapshot that is due or was asked for, or for compaction."""
        if self.outbox.snapshot_requested():
            return now
        due: list[float] = []
        if self.state is not None and self.state.txid > 0:
            due.append(self.state.last_snapshot_us + self.settings.snapshot_interval * 1e6)
        if self.compactor is not None and self.compactor.wake_us is not None:
            due.append(self.compactor.wake_us)
        for due_us in due:
            at = now + max(0.0, (due_us - now_us()) / 1e6)
            wake = at if wake is None else min(wake, at)
        return wake

    def _halting(self, now: float) -> bool:
        """Whether to stop following, once told to stop: when the app has closed the database, or the grace
        period is over. An app signalled with us (a container stop) often commits its shutdown work a few
        ms later: that commit is shipped too."""
        if self._stop_seen is None:
            self._stop_seen = now
            if self.db is None or self.settings.shutdown_grace <= 0 or not self.db.opened_elsewhere():
                return True
            log.info(
                "stopping: following %s for up to %gs more while the app still has it open",
                self.db_path,
                self.settings.shutdown_grace,
            )
        if now - self._stop_seen >= self.settings.shutdown_grace:
            return True
        return self.db is None or not self.db.opened_elsewhere()

    def _check_uploaders(self) -> None:
        for u in self.uploaders:
            if u.crashed is not None:
                raise WorkerCrashed(f"the upload thread for {u.client.url} died: {u.crashed!r}")

    def _gone_reason(self) -> str | None:
        """Why the file we follow is no longer the app's database, or None while it is."""
        assert self.db is not None
        if self._salvaging:
            return None
        if self.db.gone():
            try:
                FileIdentity.of(self.db_path)
            except FileNotFoundError:
                return DELETED
            return "replaced by another file"
        if self.wal_file.swapped():
            return "left without its WAL (the -wal file was deleted or replaced)"
        return None

    def _act(self, now: float) -> wal.WalIndexHeader | None:
        """Carry out the tracker's action for this poll, then a snapshot that is due or was asked for.

        Returns SQLite's index as read before acting: what the app had committed by then."""
        db = self.db
        assert db is not None
        tracker = self.tracker
        index = db.read_index()
        action = tracker.decide(index, now, unflushed=self._unflushed())
        if action is Action.RETRY_GENERATION:
            assert tracker.generation_wanted is not None
            self._begin_generation(tracker.generation_wanted)
            return index
        if action is Action.FINISH_CHECKPOINT:
            self.capture.finish_checkpoint(db)
        elif action is Action.CHECKPOINT or action is Action.IDLE_CHECKPOINT:
            self.capture.checkpoint(db, now, quiet=action is Action.IDLE_CHECKPOINT)
        elif action is Action.CAPTURE:
            self.capture.capture(db, index)
        elif action is Action.FLUSH:
            self.capture.flush(db)  # the spool has room again: ship what waited, without waiting for a commit
        elif action is Action.TRUNCATE_WAL:
            self.capture.truncate_wal(db, now)
        if self.outbox.take_snapshot_request():
            log.info("a replica needs a new base: taking a snapshot for it")
            try:
                self._snapshot()
            except BaseException:
                self.outbox.request_snapshot()  # not lost: asked again next step
                raise
        else:
            self._maybe_snapshot()
        if self.compactor is not None and self.compactor.due(now_us()):
            self.compactor.start_run(now_us())
        return index

    def _unflushed(self) -> bool:
        """Captured transactions wait for the spool (never after letting go of a file: its pages went with it)."""
        return self.db is not None and self.capture.unflushed()

    # -- the local spool: written whole or not at all, retried while the disk is full ----------------------

    def _commit(self, key: ObjectKey | None, write: Callable[[Writable], object] | None, state: ShipperState) -> None:
        """Write one object into the spool and the state that records it: both, or neither."""
        if key is not None and write is not None:
            try:
                with self.state_dir.spool.writer(key.key) as out:
                    write(out)
            except (StorageError, OSError) as exc:
                where = self.state_dir.spool.root
                raise SpoolWriteFailed(f"cannot write {key.key} into {where}: {_why(exc)}") from None
        try:
            self.state_dir.save(state)
        except OSError as exc:
            if key is not None:
                try:
                    self.state_dir.spool.delete([key.key])
                except StorageError:
                    pass  # never recorded: the next start drops it (_reconcile_spool)
            raise SpoolWriteFailed(f"cannot save {self.state_dir.path / 'state.json'}: {_why(exc)}") from None
        self.state = state
        if key is not None:
            if self.compactor is not None and key.generation != self.compactor.generation:
                self.compactor.start(key.generation)  # a new generation: what the cache holds is of no use
            if self.compactor is not None and isinstance(key, SegmentKey):
                self.compactor.add(key)  # before the outbox has it: an upload may let the spool's copy go at once
            self.outbox.add(key, self.state_dir.spool.path(key.key).stat().st_size)
        self.outbox.set_head(state.generation, state.txid)

    def _spool_failed(self, exc: SpoolWriteFailed) -> None:
        if self._spool_trouble is None:
            log.error(
                "%s; holding %d captured transactions in memory (their pages stay in the pinned WAL) and "
                "retrying until there is room",
                exc,
                len(self.capture.pending),
            )
        self._spool_trouble = self.last_error = str(exc)
        self.tracker.spool_failed(time.monotonic())
        if self.compactor is not None:
            self.compactor.shed()  # compaction is an optimisation: the spool comes first

    def _spool_recovered(self) -> None:
        if self._spool_trouble is None or self._unflushed() or self.tracker.generation_wanted is not None:
            return
        log.info("the spool is writable again; everything captured is queued for the replicas")
        self._spool_trouble = None
        self.tracker.spool_failing = False

    # -- generations and snapshots ----------------------------------------------------------------------

    def _begin_generation(self, cause: NewGeneration, previous: ShipperState | None = None) -> None:
        """Start a new generation; if its snapshot cannot be written yet, retry it from the loop."""
        try:
            self._start_generation(cause, previous)
        except SpoolWriteFailed as exc:
            self.tracker.generation_wanted = cause
            self._spool_failed(exc)
            return
        self.tracker.generation_wanted = None

    def _start_generation(self, cause: NewGeneration, previous: ShipperState | None = None) -> None:
        """A new lineage: position at the WAL's committed end, and a snapshot of the database there."""
        assert self.db is not None
        previous = previous or self.state
        generation = keys.new_generation_id()
        if previous is not None:
            generation = max(generation, previous.generation + 1)
        identity = FileIdentity.of(self.db_path)
        with self.db.write_lock():
            start = self.capture.starting_point(self.db)
        now = now_us()
        state = ShipperState(
            generation=generation,
            txid=0,
            db_size=start.db_size,
            page_size=self.db.page_size(),
            device=identity.device,
            inode=identity.inode,
            wal=start.cursor,
            last_snapshot_us=now,
        )
        if self.tracker.generation_wanted != cause:
            log.info("starting generation %016x: %s", generation, cause)
        self._write_snapshot(state, start.life, now, start.overlay)  # one scan of the WAL, not two
        self.generations.add(cause.reason.name.lower())
        self.tracker.follow(start.life, start.cursor, armed=start.armed)
        self.capture.pending = []

    def _maybe_snapshot(self) -> None:
        assert self.state is not None
        due = now_us() - self.state.last_snapshot_us >= self.settings.snapshot_interval * 1e6
        if due and self.state.txid > 0:
            self._snapshot()

    def _snapshot(self) -> None:
        """A snapshot at our flushed position, unless one of that very position is spooled already."""
        assert self.db is not None
        self.capture.flush(self.db)
        assert self.state is not None
        now = now_us()
        if self.outbox.has(SnapshotKey(self.state.generation, self.state.txid, now)):
            return
        self._write_snapshot(replace(self.state, last_snapshot_us=now), self.tracker.life, now)

    def _write_snapshot(
        self, state: ShipperState, life: wal.WalHeader | None, now: int, overlay: dict[int, int] | None = None
    ) -> None:
        """Spool the snapshot of `state`'s position (see snapshot.py for why the image is consistent).

        `overlay`: the WAL pages up to that position, when the caller has just scanned them."""
        assert self.db is not None
        db = self.db
        key = SnapshotKey(state.generation, state.txid, now)
        if overlay is None:
            position = state.wal
            in_life = position is not None and life is not None and position.salt == life.salt
            overlay = build_overlay(self.wal_file, life, position.frames if position and in_life else 0)
        read_pages = self.capture.page_reader(db, life) if life is not None else (lambda pairs: [])

        def write(out: Writable) -> None:
            write_snapshot(
                out,
                db.read_file,
                read_pages,
                overlay,
                db_size=state.db_size,
                page_size=state.page_size,
                generation=state.generation,
                txid=state.txid,
                time_us=now,
                level=self.settings.compression_level,
            )

        self._commit(key, write, state)
        log.info(
            "snapshot of generation %016x at txid %d: %d pages (%.1f MB)",
            state.generation,
            state.txid,
            state.db_size,
            state.db_size * state.page_size / 1e6,
        )

    # -- letting go of a deleted or replaced file ---------------------------------------------------------

    def _salvage(self) -> None:
        """The app deleted its database: what it committed last is still in the files we hold open (an
        unlinked file stays readable through its descriptors, and ours were all opened while it was the
        app's), so it is captured before we let go: a deleted tenant's replica ends where the tenant did."""
        assert self.db is not None
        self._salvaging = True
        try:
            self.capture.capture(self.db)
        except (Discontinuity, SpoolWriteFailed, DatabaseBusy, apsw.Error, OSError) as exc:
            log.warning("%s was deleted; its last transactions could not be captured: %s", self.db_path, exc)
        finally:
            self._salvaging = False

    def _let_go(self, why: str) -> None:
        """Close everything we hold on the old file, and clear its stale WAL as SQLite's last close would."""
        armed, life = self.tracker.armed, self.tracker.life
        salt = life.salt if life is not None else None
        log.warning("%s was %s: letting go of it; replication resumes with a new generation", self.db_path, why)
        self._close()
        self.tracker.lose()
        self.capture.pending = []
        stale = remove_stale_wal(self.db_path, salt)
        if stale is StaleWal.IN_USE and not armed:
            log.error(
                "%s was %s moments after a commit, while its WAL still held pages not yet copied into the file, "
                "and the app opened the new file before the replicator could let go: the app's connections may "
                "read pages of the old database until they are all closed. Let the app be idle for a moment "
                "(or stop the replicator) before deleting or replacing the database (docs/LIFECYCLE.md)",
                self.db_path,
                why,
            )
        self._gone = NewGeneration(Reason.FILE_GONE, f"the database file was {why}")

    # -- stopping -------------------------------------------------------------------------------------

    def _finish(self) -> None:
        deadline = time.monotonic() + self.settings.shutdown_timeout
        if not self._locked and not self._lock():
            return  # stopped while the database's directory does not exist: nothing to ship
        # Stopped before we could open it: it still gets shipped, in time.
        while self.db is None and self._gone is None and time.monotonic() < deadline:
            if not check_database_file(self.db_path):
                break
            self._attach(time.monotonic())
            if self.db is None:
                time.sleep(min(self._open_delay, max(0.0, deadline - time.monotonic())))
        self._captured_us = now_us()
        if self.db is not None:
            epoch = self.barrier.epoch()
            try:
                index = self.db.read_index()
            except OSError:
                index = None  # proves nothing (tracker.holds)
            self._final_capture(deadline)
            self.wal_file.forget()
            self._caught_up(epoch, index)
        self._drain(deadline)
        if self.db is not None and self.state is not None:
            try:
                self.capture.record_armed_restart(self.db)
            except SpoolWriteFailed:
                pass  # the next run cannot prove the restart and starts a new generation: safe
        self._report()

    def _drain_quietly(self) -> None:
        try:
            self._drain(time.monotonic() + self.settings.shutdown_timeout)
        except BaseException:
            log.exception("while stopping after a failure")

    def _drain(self, deadline: float) -> None:
        """Let every uploader empty the spool and prove its replica, serving their snapshot requests."""
        for u in self.uploaders:
            u.stop(deadline)
        while not all(u.done for u in self.uploaders) and time.monotonic() < deadline + 1:
            self._check_uploaders()
            if self.db is not None and self.outbox.take_snapshot_request():
                try:
                    self._snapshot()
                except (SpoolWriteFailed, DatabaseBusy, Discontinuity) as exc:
                    log.error("snapshot for a replica failed: %s", exc)
                    self.outbox.request_snapshot()
                finally:
                    self.wal_file.forget()
            time.sleep(0.05)
        self._check_uploaders()

    def _final_capture(self, deadline: float) -> None:
        while True:
            try:
                gone = self._gone_reason()
                if gone == DELETED:
                    self._salvage()
                if gone is not None:
                    return
                wanted = self.tracker.generation_wanted
                if wanted is not None:
                    self._begin_generation(wanted)
                if self.tracker.generation_wanted is None:
                    assert self.db is not None
                    self.capture.capture(self.db)
                    return
            except Discontinuity as exc:
                self._begin_generation(exc.cause)
            except SpoolWriteFailed as exc:
                self._spool_failed(exc)
            except DatabaseBusy:
                pass
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def _report(self) -> None:
        """The last line says what each replica proved to hold (uploader rule 6), or raises naming what not."""
        head = self.outbox.head
        if head is None and not self.db_path.exists():
            log.info("stopped: nothing to replicate (%s does not exist)", self.db_path)
            return
        problems = []
        if head is None:
            problems.append(f"nothing of {self.db_path} was captured")
        if self.tracker.generation_wanted is not None or self._unflushed():
            problems.append(f"the last transactions could not be written to the local spool ({self._spool_trouble})")
        for u in self.uploaders:
            if u.proven is not None and u.proven == head:
                continue
            if u.refused:
                problems.append(f"{u.client.url} (refused: {u.refused})")
            else:
                problems.append(f"{u.client.url} ({u.behind} objects behind)")
        if problems:
            raise FinalSyncFailed(
                f"final sync failed: {', '.join(problems)}; they stay in {self.state_dir.spool.root} and are "
                "sent on the next start"
            )
        assert head is not None
        if self._gone is not None:
            log.info(
                "stopped: %s is gone (%s); every replica holds its history up to generation %016x, txid %d",
                self.db_path,
                self._gone,
                *head,
            )
            return
        self._seal(head)
        log.info(
            "stopped: every replica of %s has everything committed up to %s (generation %016x, txid %d)",
            self.db_path,
            format_time(self._captured_us),
            *head,
        )

    def _seal(self, head: tuple[int, int]) -> None:
        """Tell the next writer (a redeploy's restored copy) that this generation stopped here, proven."""
        for client in self.clients:
            try:
                ownership.seal(client, str(self.db_path), head)
            except ReplicatorError as exc:
                log.warning("%s: could not record the clean stop (%s); a restored copy starts afresh", client.url, exc)


def _why(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, StorageError) and isinstance(exc.__cause__, OSError) else exc
    return (cause.strerror if isinstance(cause, OSError) else None) or str(cause)
