"""Whether a chain is unbroken, as pure checks with typed reasons: what a replica provably holds of our
chain (over a listing), and whether local state still describes the database (over what its files say).

Rules:
1. A replica holds generation G up to txid T only if it holds a snapshot of G and an unbroken run of
   shipped (level-0) segments from that snapshot to T (restore.plan_restore's rule, checked before we
   claim anything).
2. Objects of ours that we never shipped (a newer generation, or txids beyond ours) mean another writer:
   the replica is not ours to continue.
3. An upload must continue the replica's chain: a segment starts right after the replica's position,
   or it is a snapshot (a base that needs nothing before it). Anything else would ship a gap as if it were
   continuous; the replica gets a fresh snapshot instead.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .history import overlaps
from .keys import ObjectKey, SegmentKey, SnapshotKey, chain_order
from .state import ShipperState
from .wal import FrameHeader, WalHeader


class Reason(enum.Enum):
    """Why a new generation starts (docs/LIFECYCLE.md has the table)."""

    NO_STATE = "no local state (first run, or a fresh disk)"
    FILE_REPLACED = "the database file was replaced"
    FILE_GONE = "the database file was deleted or replaced while we followed it"
    PAGE_SIZE = "the page size changed"
    WAL_RESTARTED_OFFLINE = "the WAL was restarted or truncated while the replicator was not running"
    WAL_REWRITTEN_OFFLINE = "the WAL was rewritten while the replicator was not running"
    RESTORED_FILE_CHANGED = "the database file changed since it was restored"
    NOT_SEALED = "the restored generation was not sealed by its last writer on every replica"
    OTHER_WRITER = "a replica holds objects of ours that we never shipped (another writer)"
    WAL_RESTARTED = "the WAL was restarted without our pin (another process checkpointed)"
    WAL_SHRANK = "the WAL shrank under our position"
    WAL_DISAGREES = "the WAL's content does not match SQLite's index"
    FRAME_CHANGED = "a WAL frame no longer verifies although the WAL did not restart"


@dataclass(frozen=True, slots=True)
class NewGeneration:
    """A typed reason with the detail that makes its log line useful (which replica, which file)."""

    reason: Reason
    detail: str = ""

    def __str__(self) -> str:
        return self.detail or self.reason.value


@dataclass(frozen=True, slots=True)
class LocalFacts:
    """What the database's files say at start-up (read by the edge, replicate.py)."""

    device: int
    inode: int
    page_size: int
    wal: WalHeader | None  # the WAL file's header, if it has a valid one
    last_frame: FrameHeader | None  # the WAL's frame at the state's position - 1, if it has one


def local_state_problem(state: ShipperState | None, facts: LocalFacts) -> NewGeneration | None:
    """Whether local state still describes the database: None, or why a new generation starts.

    A restore's state (no WAL position, a digest) passes here: its digest and seal are checked by the edge.
    """
    if state is None:
        return NewGeneration(Reason.NO_STATE)
    if (state.device, state.inode) != (facts.device, facts.inode):
        return NewGeneration(Reason.FILE_REPLACED)
    if state.page_size != facts.page_size:
        return NewGeneration(Reason.PAGE_SIZE)
    if state.wal is None:
        return None if state.restored_digest is not None else NewGeneration(Reason.WAL_RESTARTED_OFFLINE)
    if facts.wal is None or facts.wal.salt != state.wal.salt:
        return NewGeneration(Reason.WAL_RESTARTED_OFFLINE)
    if state.wal.frames:
        last = facts.last_frame
        if last is None or last.salt != facts.wal.salt or last.checksum != state.wal.checksum:
            return NewGeneration(Reason.WAL_REWRITTEN_OFFLINE)
    return None


Position = tuple[int, int, int]  # keys.chain_order of the last object a replica holds in an unbroken chain
NOTHING: Position = (-1, -1, -1)


class ReplicaProblem(enum.Enum):
    """Why a replica's content does not fit our chain. The first two mean another writer."""

    NEWER_GENERATION = "holds a newer generation (another replicator writes there?)"
    UNSHIPPED = "holds transactions of ours that we never shipped (another replicator writes there?)"
    NO_GENERATION = "does not hold the current generation (a new, wiped or re-created replica)"
    BROKEN_CHAIN = "is missing objects of the current generation (some were deleted?)"

    @property
    def other_writer(self) -> bool:
        return self in (ReplicaProblem.NEWER_GENERATION, ReplicaProblem.UNSHIPPED)


@dataclass(frozen=True, slots=True)
class ChainProof:
    """How far a replica provably holds generation `generation`, and what is wrong with it, if anything."""

    generation: int
    end: Position  # NOTHING if it holds no snapshot of the generation
    problem: ReplicaProblem | None

    @property
    def txid(self) -> int | None:
        """The last transaction restorable from this replica in the generation, or None."""
        return None if self.end == NOTHING else self.end[1]


def prove_chain(held: Iterable[ObjectKey], generation: int, txid: int) -> ChainProof:
    """Check a replica's objects against our chain: generation `generation`, shipped up to `txid`."""
    items = list(held)
    if any(k.generation > generation for k in items):
        return ChainProof(generation, NOTHING, ReplicaProblem.NEWER_GENERATION)
    mine = [k for k in items if k.generation == generation]
    if any(beyond(k, generation, txid) for k in mine) or _forked(mine):
        return ChainProof(generation, NOTHING, ReplicaProblem.UNSHIPPED)
    snapshots = [k for k in mine if isinstance(k, SnapshotKey)]
    if not snapshots:
        return ChainProof(generation, NOTHING, ReplicaProblem.NO_GENERATION)
    base = max(snapshots, key=chain_order)
    end: Position = chain_order(base)
    # The chain is what was shipped; compacted segments only speed restores up.
    shipped = [k for k in mine if isinstance(k, SegmentKey) and k.level == 0]
    starts = {k.first_txid: k for k in shipped}
    while (seg := starts.get(end[1] + 1)) is not None:
        end = chain_order(seg)
    past_gap = any(k.last_txid > end[1] for k in shipped)
    return ChainProof(generation, end, ReplicaProblem.BROKEN_CHAIN if past_gap else None)


@dataclass(frozen=True, slots=True)
class ProbeFinding:
    """What a probe found wrong, with the generation and txid it saw where another writer is the cause."""

    problem: ReplicaProblem
    generation: int  # the other writer's generation (ours for UNSHIPPED), or ours
    txid: int  # the furthest txid it saw of that generation


def probe(
    listed: Iterable[ObjectKey],
    generation: int,
    held: Collection[ObjectKey],
    base: SnapshotKey | None,
    *,
    complete: bool = True,
) -> ProbeFinding | None:
    """Judge a listing of part of generation `generation` and everything after it (keys.past_segments).

    Everything of our generation in it must be something we know the replica holds (`held`: what it listed
    when we checked it, and what we uploaded since): another writer continuing our generation from the
    same point (two copies restored from one seal) shows up as segments we never shipped, even at txids we
    shipped too. No newer generation may exist (rule 2), and the snapshot our chain hangs from must still
    be there, unless the listing was cut short before it could show it (not `complete`).
    """
    items = list(listed)
    newer = [k for k in items if k.generation > generation]
    if newer:
        theirs = max(k.generation for k in newer)
        return ProbeFinding(ReplicaProblem.NEWER_GENERATION, theirs, _reach(k for k in newer if k.generation == theirs))
    unshipped = [k for k in items if k.generation == generation and k not in held]
    if unshipped:
        return ProbeFinding(ReplicaProblem.UNSHIPPED, generation, _reach(unshipped))
    if base is not None and complete and base not in items:
        return ProbeFinding(ReplicaProblem.BROKEN_CHAIN, generation, base.txid)
    return None


def _forked(keys: Iterable[ObjectKey]) -> bool:
    """Whether two segments of one generation and level cover a txid both: two writers continued it from one
    point."""
    return bool(overlaps(k for k in keys if isinstance(k, SegmentKey)))


def _reach(found: Iterable[ObjectKey]) -> int:
    return max(chain_order(k)[1] for k in found)


def beyond(key: ObjectKey, generation: int, txid: int) -> bool:
    """Whether `key` is of `generation` and reaches past `txid`: something a chain that ends there never held."""
    return key.generation == generation and chain_order(key) > chain_order(SnapshotKey(generation, txid, 0))


def continues(position: Position, key: ObjectKey) -> bool:
    """Whether uploading `key` to a replica at `position` keeps its chain unbroken (rule 3)."""
    generation, txid, _ = position
    if isinstance(key, SnapshotKey):
        return key.generation > generation or (key.generation == generation and key.txid >= txid)
    return key.generation == generation and key.first_txid == txid + 1


def base_snapshot(held: Iterable[ObjectKey], generation: int) -> SnapshotKey | None:
    """The newest snapshot of `generation` a replica holds: the object its chain hangs from."""
    snapshots = [k for k in held if isinstance(k, SnapshotKey) and k.generation == generation]
    return max(snapshots, key=chain_order, default=None)
