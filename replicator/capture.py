"""The WAL edge of one database: carries out what the tracker decides, through apsw and the WAL file.

Rules:
1. `collect` takes in every transaction SQLite's index says is committed beyond the tracker's cursor (a
   scan that verifies each frame); `flush` encodes what was collected into segments, each committed to
   the spool together with the state that records it (the `commit` it is given: both, or neither).
   Transactions wait in `pending` between the two, and for as long as the spool refuses them.
2. A page is read from the WAL once: the frames a scan verified are kept for the encoder (walfile.py).
   A frame read again must verify again; one that no longer does is taken from the database file only if
   the WAL was restarted since (then the file holds exactly that version), else it is a discontinuity.
3. The pin moves only under SQLite's write lock (`repin`): nobody commits while we collect to the end and
   take the pin again there. A checkpoint is the tracker's three steps (tracker.py's rule 4).
4. Frames read after the database file went away could be another file's: `gone` is asked after every
   scan, and `FileGone` keeps none of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from . import wal
from .batch import BatchPlan, PageReader, encode_batch, plan_batch, split_batches
from .config import Settings
from .keys import ObjectKey, SegmentKey
from .lineage import NewGeneration, Reason
from .segment import Writable
from .snapshot import overlay_of
from .sqlite import Database
from .state import ShipperState, WalPosition
from .tally import Tally
from .tracker import Collect, Discontinuity, Tracker, Truncation
from .walfile import WalFile

log = logging.getLogger(__name__)

WAL_KEEP_BYTES = 4 << 20  # a quiet app's -wal file larger than this (after a burst) is cut to zero bytes

# Writes one object into the spool and the state that records it, both or neither (replicate.py).
Commit = Callable[[ObjectKey | None, Callable[[Writable], object] | None, ShipperState], None]


class FileGone(Exception):
    """The file we follow is no longer the app's database: the message says how."""


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class Start:
    """What a new generation starts from: computed under the write lock, committed with its snapshot."""

    life: wal.WalHeader | None
    cursor: WalPosition | None
    db_size: int
    armed: bool
    overlay: dict[int, int]  # the snapshot's WAL pages, from the same scan (snapshot.overlay_of)


class Capture:
    """Reads one database's WAL for its tracker and turns what it read into spooled segments (rules above)."""

    def __init__(
        self,
        wal_file: WalFile,
        tracker: Tracker,
        settings: Settings,
        *,
        state: Callable[[], ShipperState | None],
        commit: Commit,
        gone: Callable[[], str | None],
    ) -> None:
        self.wal_file = wal_file
        self.tracker = tracker
        self.settings = settings
        self.pending: list[wal.Transaction] = []  # collected, not yet in the spool
        self.checkpoints = Tally()  # by result: complete, partial (an app reader held it back), truncated, busy
        self._state = state
        self._commit = commit
        self._gone = gone

    def unflushed(self) -> bool:
        """Collected transactions wait for the spool."""
        state = self._state()
        return bool(self.pending) or (state is not None and self.tracker.cursor != state.wal)

    def capture(self, db: Database, index: wal.WalIndexHeader | None = None) -> None:
        self.collect(db, index)
        self.flush(db)

    def collect(self, db: Database, index: wal.WalIndexHeader | None = None) -> None:
        """Rule 1's first half (cheap: a scan)."""
        tracker = self.tracker
        if index is None:
            index = db.read_index()
        new_life = index is not None and (tracker.cursor is None or index.salt != tracker.cursor.salt)
        header = self.wal_file.header() if new_life else None
        plan = tracker.plan_collect(index, header)
        if plan is Collect.NOTHING or plan is Collect.LATER:
            return
        if plan is Collect.NEW_LIFE:
            self._check_gone()  # the new WAL life is another file's (the app replaced the database)
            self.flush(db)  # what we hold belongs to the old life
            assert header is not None
            tracker.enter_life(header)
        cursor, life = tracker.cursor, tracker.life
        assert index is not None and cursor is not None and life is not None
        scanner = wal.FrameScanner(life, cursor.frames, cursor.checksum)
        transactions = list(self.wal_file.scan(scanner, index.max_frame))
        self._check_gone()  # rule 4
        end = transactions[-1].checksum if transactions else cursor.checksum
        if tracker.scanned(index, scanner.committed_frames, end):
            self.pending += transactions

    def record_armed_restart(self, db: Database) -> None:
        """Before the pin goes: the app's commit may have restarted the WAL since our last look (our read lock 0
        lets exactly one restart through, and it continues our chain at frame 0 of the new life). Record that
        position, without its frames, so that the next run continues there instead of taking the new life for a
        restart made while nobody watched (a needless generation)."""
        tracker = self.tracker
        index = db.read_index()
        if self.pending or not tracker.armed or index is None or self._gone() is not None:
            return
        if tracker.cursor is not None and index.salt == tracker.cursor.salt:
            return  # no restart: the position we recorded holds
        header = self.wal_file.header()
        if tracker.plan_collect(index, header) is Collect.NEW_LIFE:
            assert header is not None
            tracker.enter_life(header)
            self.flush(db)  # nothing pending: the position alone

    def _check_gone(self) -> None:
        if (gone := self._gone()) is not None:
            raise FileGone(gone)

    def flush(self, db: Database) -> None:
        """Rule 1's second half: one segment (unless huge), each with its state."""
        state = self._state()
        assert state is not None
        cursor = self.tracker.cursor
        if not self.pending:
            if cursor is not None and cursor != state.wal:
                self._commit(None, None, replace(state, wal=cursor))
            return
        life = self.tracker.life
        assert life is not None
        for batch in list(split_batches(self.pending, life.frame_size)):
            state = self._state()
            assert state is not None
            plan = plan_batch(batch)
            first = state.txid + 1
            key = SegmentKey(state.generation, first, first + plan.transactions - 1, now_us())
            last = batch[-1]
            position = WalPosition(life.salt, life.checkpoint_seq, last.end_frame, last.checksum)
            after = replace(state, txid=key.last_txid, db_size=plan.db_size, wal=position)
            self._commit(key, self._segment_writer(db, life, plan, key), after)
            self.pending = self.pending[len(batch) :]

    def _segment_writer(
        self, db: Database, life: wal.WalHeader, plan: BatchPlan, key: SegmentKey
    ) -> Callable[[Writable], object]:
        def write(out: Writable) -> object:
            return encode_batch(
                out,
                self.page_reader(db, life),
                life.page_size,
                plan,
                generation=key.generation,
                first_txid=key.first_txid,
                time_us=key.last_time_us,
                level=self.settings.compression_level,
            )

        return write

    def page_reader(self, db: Database, life: wal.WalHeader) -> PageReader:
        """Rule 2: pages from WAL frames of `life`, verified; from the database file if that life was
        restarted since. A restart requires the whole life copied into the file first, and our pin (read
        lock 0 when armed) keeps anything newer out of it. We read the WAL file we opened (walfile.py):
        another file at the path is never taken for a restart."""

        def read(pairs: Sequence[tuple[int, int]]) -> list[bytes]:
            if not pairs:
                return []
            found = self.wal_file.read_verified(life, [frame for _, frame in pairs])
            size = life.page_size
            pages = []
            restarted: bool | None = None
            for pgno, frame in pairs:
                page = found[frame]
                if page is None:
                    if restarted is None:
                        current = self.wal_file.header()
                        restarted = current is None or current.salt != life.salt
                    if not restarted:
                        detail = f"WAL frame {frame} no longer verifies although the WAL did not restart"
                        raise Discontinuity(NewGeneration(Reason.FRAME_CHANGED, detail))
                    page = db.read_file((pgno - 1) * size, size).ljust(size, b"\0")
                pages.append(page)
            return pages

        return read

    # -- the pin and the checkpoint (rule 3) ------------------------------------------------------------

    def repin(self, db: Database, *, checkpoint: bool = False) -> None:
        """Under the write lock: collect to the end, move the pin there (checkpointing first if asked)."""
        with db.write_lock():
            self.collect(db)
            db.unpin()
            if checkpoint:
                db.checkpoint()
            db.pin()
            self.tracker.repinned(db.read_index())
        self.flush(db)

    def checkpoint(self, db: Database, now: float, *, quiet: bool) -> None:
        """Keep the WAL bounded in three short steps, never waiting on the app's readers (no RESTART).

        1 (now, under the write lock): collect to the end and pin there. 2 (now, no lock of ours): PASSIVE
        checkpoint, copying everything up to the pin. 3 (a poll later, `finish_checkpoint`): collect what
        came meanwhile, checkpoint that little, re-pin: armed if the whole WAL is in the database. Each
        step ships within its poll's one segment.
        """
        self.collect(db)  # the bulk, before taking the lock
        self.repin(db)
        db.checkpoint()
        self.tracker.checkpoint_started(now, quiet=quiet)

    def finish_checkpoint(self, db: Database) -> None:
        self.repin(db, checkpoint=True)
        quiet = self.tracker.checkpoint_finished()
        self.checkpoints.add("complete" if self.tracker.armed else "partial")
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "checkpoint: WAL copied into the database%s",
            "; it restarts at the next write" if self.tracker.armed else " up to the app's oldest reader",
        )

    def truncate_wal(self, db: Database, now: float) -> None:
        """After a burst, give the -wal file's space back (sqlite.py's truncate_wal): the WAL is wholly in the
        database and we hold read lock 0, so the app's next commit starts a life that continues our chain."""
        state = self._state()
        assert state is not None
        size = db.wal_size()
        if size <= WAL_KEEP_BYTES:
            self.tracker.truncated(Truncation.NOT_NEEDED, now)
            return
        if not db.truncate_wal():
            self.tracker.truncated(Truncation.BUSY, now)  # an app reader is still on the WAL
            self.checkpoints.add("busy")
            return
        self.tracker.truncated(Truncation.DONE, now)
        self.checkpoints.add("truncated")
        log.info("the app is quiet: cut %s-wal from %.1f MB to 0 (its size after a burst)", db.path, size / 1e6)
        self._commit(None, None, replace(state, wal=None, restored_digest=None))

    # -- where a new generation starts -------------------------------------------------------------------

    def starting_point(self, db: Database) -> Start:
        """Under the write lock: the WAL's committed end, and the pin moved there."""
        life = self.wal_file.header()
        index = db.read_index()
        cursor: WalPosition | None = None
        overlay: dict[int, int] = {}
        size = file_db_size(db)
        if life is not None and index is not None and index.salt == life.salt:
            scanner = wal.FrameScanner(life)
            transactions = list(self.wal_file.scan(scanner, index.max_frame))
            checksum = transactions[-1].checksum if transactions else life.checksum
            cursor = WalPosition(life.salt, life.checkpoint_seq, scanner.committed_frames, checksum)
            if transactions:
                size = transactions[-1].db_size
            overlay = overlay_of(transactions)
        db.unpin()
        db.pin()
        after = db.read_index()
        armed = after is not None and after.backfilled == after.max_frame == (cursor.frames if cursor else 0)
        return Start(life, cursor, size, armed, overlay)


def file_db_size(db: Database) -> int:
    """Pages in the database file itself (the state when the WAL holds nothing)."""
    head = db.read_file(0, 100)
    in_header = int.from_bytes(head[28:32], "big")
    if in_header and head[24:28] == head[92:96]:
        return in_header
    return db.file_size() // db.page_size()
