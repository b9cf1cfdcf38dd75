"""Following one database's WAL, sans-IO: given what SQLite's files say and the time, what to do next.

Rules:
1. Everything that decides how we follow the WAL lives here; nothing here reads a file, takes a lock or
   looks at a clock. The edge (capture.py, driven by replicate.py) passes in what it observed (SQLite's
   wal-index header, the WAL header, what a scan found) and `now`, carries out the action returned, and
   reports back.
2. The position: `cursor` is how far we have collected in WAL life `life`. `armed` says a WAL restart now
   continues our chain: the pin holds read lock 0 and everything committed was collected (replicate.py's
   docstring says why exactly one such restart is ours).
3. A restart we did not arm for, a WAL shorter than our position, or content that keeps disagreeing with
   SQLite's index is a `Discontinuity` with a typed `Reason`: the edge starts a new generation.
4. A checkpoint is three steps (CheckpointStep): collect and pin at the end (write lock), a PASSIVE copy
   up to the pin (no lock of ours), then, one poll later, collect what came meanwhile, copy it and re-pin
   (write lock). Steps 1-2 are one action, step 3 another, so the app's writers never wait on a copy.
5. `wake_at` says when the database needs looking at again if its files stay quiet; None means only a file
   event (a commit) can give it work. An idle database therefore costs nothing between events.
"""

from __future__ import annotations

import enum
from dataclasses import replace

from .config import Settings
from .lineage import NewGeneration, Reason
from .state import WalPosition
from .wal import WalHeader, WalIndexHeader

IDLE_CHECKPOINT_AFTER = 0.2  # seconds without a commit before we empty the WAL (replicate.py's docstring)
CHECKPOINT_EVERY = 1.0  # at most one size-driven checkpoint per second
MAX_BACKOFF = 60.0  # longest wait between idle checkpoints (or WAL cuts) that an app reader keeps failing
MISMATCHES_TOLERATED = 40  # polls in a row where the WAL disagrees with the index before it is a discontinuity
SPOOL_RETRY = 0.25  # seconds between attempts to write the spool while it fails


class Discontinuity(Exception):
    """The chain cannot be proven unbroken: a new generation starts, for `cause`."""

    def __init__(self, cause: NewGeneration | Reason) -> None:
        self.cause = cause if isinstance(cause, NewGeneration) else NewGeneration(cause)
        super().__init__(str(self.cause))


class Action(enum.Enum):
    NOTHING = "nothing"
    RETRY_GENERATION = "retry the generation start the spool refused"
    FINISH_CHECKPOINT = "checkpoint step 3: collect, copy the rest, re-pin"
    CHECKPOINT = "checkpoint steps 1-2: the WAL is large"
    CAPTURE = "collect what is committed and flush it into the spool"
    FLUSH = "write what waited for the spool"
    IDLE_CHECKPOINT = "checkpoint steps 1-2: the app is quiet, empty the WAL"
    TRUNCATE_WAL = "cut the quiet app's -wal file back, if it is large"


class CheckpointStep(enum.Enum):
    NONE = "no checkpoint in progress"
    COPIED = "steps 1-2 done: step 3 is due"


class Truncation(enum.Enum):
    """What became of a TRUNCATE_WAL action."""

    NOT_NEEDED = "the file is small"
    DONE = "cut to zero bytes"
    BUSY = "an app reader kept it"


class Collect(enum.Enum):
    """What a look at the WAL's committed end asks of the edge."""

    NOTHING = "nothing new"
    LATER = "the WAL is being restarted right now: look again next poll"
    NEW_LIFE = "an armed restart: flush what we hold, then continue in the new life (see `enter_life`)"
    SCAN = "scan frames from `cursor` to the index's end"


class Tracker:
    """One database's position in its WAL and the schedule of what to do (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.life: WalHeader | None = None
        self.cursor: WalPosition | None = None
        self.armed = False
        self.step = CheckpointStep.NONE
        self.generation_wanted: NewGeneration | None = None  # a generation start the spool could not take yet
        self.spool_failing = False
        self._quiet_checkpoint = False
        self._mismatches = 0
        self._index: WalIndexHeader | None = None  # the last index observed
        self._last_ship = float("-inf")
        self._last_news = float("-inf")
        self._last_checkpoint = float("-inf")
        self._idle_wait = 1.0
        self._retry_at = 0.0
        self._truncate_due = False  # the app wrote since the -wal file was last looked at
        self._truncate_at = 0.0
        self._truncate_wait = 1.0

    # -- position -------------------------------------------------------------------------------------

    def follow(self, life: WalHeader | None, cursor: WalPosition | None, *, armed: bool) -> None:
        """Start from a known position: a new generation's start, or local state that was proven."""
        self.life, self.cursor, self.armed = life, cursor, armed
        self.step, self._mismatches = CheckpointStep.NONE, 0
        self._truncate_due = True  # a WAL left large by an earlier run is cut back too

    def lose(self) -> None:
        """The file went away: nothing we hold describes the next one."""
        self.follow(None, None, armed=False)

    @property
    def capture_not_before(self) -> float:
        """Commits seen before then wait for the sync interval anyway, so a commit's file event needs no look
        at the database before then (store.py's rule 2)."""
        return self._last_ship + self.settings.sync_interval

    def has_news(self, index: WalIndexHeader | None) -> bool:
        if index is None:
            return False
        if self.cursor is None:
            return index.max_frame > 0
        return index.salt != self.cursor.salt or index.max_frame != self.cursor.frames

    def plan_collect(self, index: WalIndexHeader | None, header: WalHeader | None) -> Collect:
        """Rule 3 for one look at the committed end. `header` is the WAL file's, needed only on a new life."""
        cursor = self.cursor
        if index is None or (cursor is not None and index.salt == cursor.salt and index.max_frame == cursor.frames):
            return Collect.NOTHING
        if cursor is None or index.salt != cursor.salt:
            if header is None or header.salt != index.salt:
                return Collect.LATER
            if not self.armed:
                raise Discontinuity(Reason.WAL_RESTARTED)
            return Collect.NEW_LIFE
        if index.max_frame < cursor.frames:
            raise Discontinuity(Reason.WAL_SHRANK)
        return Collect.SCAN

    def holds(self, index: WalIndexHeader | None) -> bool:
        """Whether everything `index` calls committed has been collected (the durability barrier's question).

        No index (a torn read) proves nothing: the barrier asks again a poll later. An index with no frames
        committed holds nothing to collect where we had no WAL, or where an armed restart is under way."""
        cursor = self.cursor
        if index is None:
            return False
        if cursor is None or index.salt != cursor.salt:
            return index.max_frame == 0 and (cursor is None or self.armed)
        return index.max_frame <= cursor.frames

    def enter_life(self, header: WalHeader) -> None:
        """An armed restart happened: our chain continues at frame 0 of the new life, once (rule 2)."""
        self.life, self.armed = header, False
        self.cursor = WalPosition(header.salt, header.checkpoint_seq, 0, header.checksum)

    def scanned(self, index: WalIndexHeader, committed_frames: int, end_checksum: tuple[int, int]) -> bool:
        """A scan up to the index's end finished: True if it agrees with the index (the cursor moves there).

        A torn read of the index can disagree once; a disagreement that persists is a discontinuity.
        """
        assert self.cursor is not None
        if committed_frames != index.max_frame or end_checksum != index.frame_checksum:
            self._mismatches += 1
            if self._mismatches > MISMATCHES_TOLERATED:
                raise Discontinuity(Reason.WAL_DISAGREES)
            return False
        self._mismatches = 0
        self.cursor = replace(self.cursor, frames=index.max_frame, checksum=end_checksum)
        return True

    def repinned(self, index: WalIndexHeader | None) -> None:
        """The pin moved (under the write lock, everything collected): armed if the WAL is wholly copied."""
        cursor = self.cursor
        self.armed = (
            index is not None
            and index.backfilled == index.max_frame
            and (cursor is None or (index.salt == cursor.salt and index.max_frame == cursor.frames))
        )

    # -- the schedule ---------------------------------------------------------------------------------

    def decide(self, index: WalIndexHeader | None, now: float, *, unflushed: bool) -> Action:
        """The one action for this poll. `unflushed`: collected transactions wait for the spool."""
        self._index = index
        if self.generation_wanted is not None:
            return Action.RETRY_GENERATION if now >= self._retry_at else Action.NOTHING
        news = self.has_news(index)
        due = now - self._last_ship >= self.settings.sync_interval
        if self.step is CheckpointStep.COPIED and (due or not news):
            if news:
                self._shipped(now)
            return Action.FINISH_CHECKPOINT
        if news and due:
            assert index is not None
            if index.max_frame > 0:
                self._shipped(now)
            # else a restart shows its new WAL life before the first commit in it lands: entering the life costs
            # no beat, so that commit is captured the moment it lands (not a sync interval later)
            if index.max_frame >= self.settings.min_checkpoint_pages and self._checkpoint_due(now):
                return Action.CHECKPOINT
            return Action.CAPTURE
        if unflushed and now >= self._retry_at:
            return Action.FLUSH
        quiet = now - self._last_news >= IDLE_CHECKPOINT_AFTER
        if news or not quiet or self.spool_failing:
            return Action.NOTHING
        if not self.armed and now - self._last_checkpoint >= self._idle_wait:
            self._idle_wait = min(self._idle_wait * 2, MAX_BACKOFF)  # reset once a checkpoint leaves us armed
            return Action.IDLE_CHECKPOINT
        if self.armed and self._truncate_due and now >= self._truncate_at:
            return Action.TRUNCATE_WAL
        return Action.NOTHING

    def _shipped(self, now: float) -> None:
        """A capture is under way. A busy app's captures keep to the sync interval's beat (a step that ran
        late does not delay the next one); after a quiet spell the beat starts again now."""
        sync = self.settings.sync_interval
        self._last_ship = self._last_ship + sync if now - self._last_ship < 2 * sync else now
        self._last_news = now
        self._truncate_due = True

    def _checkpoint_due(self, now: float) -> bool:
        return not self.spool_failing and now - self._last_checkpoint >= CHECKPOINT_EVERY

    def checkpoint_started(self, now: float, *, quiet: bool) -> None:
        self._last_checkpoint, self._quiet_checkpoint, self.step = now, quiet, CheckpointStep.COPIED

    def checkpoint_finished(self) -> bool:
        """Step 3 is done; returns whether the checkpoint was a quiet app's (logged more quietly)."""
        self.step = CheckpointStep.NONE
        if self.armed:
            self._idle_wait = 1.0
        return self._quiet_checkpoint

    def truncated(self, outcome: Truncation, now: float) -> None:
        if outcome is Truncation.BUSY:
            self._truncate_wait = min(self._truncate_wait * 2, MAX_BACKOFF)
            self._truncate_at = now + self._truncate_wait
            return
        self._truncate_due, self._truncate_wait = False, 1.0

    def spool_failed(self, now: float) -> None:
        self.spool_failing, self._retry_at = True, now + SPOOL_RETRY

    def wake_at(self, now: float, *, unflushed: bool) -> float | None:
        """When to look again if no file event comes first (rule 5); None: only an event brings work."""
        poll = self.settings.poll_interval
        if self.generation_wanted is not None or (unflushed and self.spool_failing):
            return max(self._retry_at, now + poll)
        if self.has_news(self._index):  # also ends a checkpoint (step 3) while the app keeps committing
            return max(self._last_ship + self.settings.sync_interval, now + poll)
        if self.step is CheckpointStep.COPIED:
            return now + poll
        if self.spool_failing:
            return None
        quiet_at = self._last_news + IDLE_CHECKPOINT_AFTER
        if not self.armed:
            return max(quiet_at, self._last_checkpoint + self._idle_wait, now + poll)
        if self._truncate_due:
            return max(quiet_at, self._truncate_at, now + poll)
        return None
