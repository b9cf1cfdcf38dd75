"""What a replica provably holds of our chain, from its listing alone (replicator/lineage.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator import keys
from replicator.keys import ObjectKey, SegmentKey, SnapshotKey, chain_order
from replicator.lineage import (
    NOTHING,
    LocalFacts,
    Reason,
    ReplicaProblem,
    continues,
    local_state_problem,
    probe,
    prove_chain,
)
from replicator.rebuild import ReplicaEmpty, RestoreError, plan_restore
from replicator.state import ShipperState, WalPosition
from replicator.storage import MemoryClient
from replicator.wal import FrameHeader, WalHeader

G = 5
# Our chain in generation G, shipped up to txid 9: snapshots at 0 and 6, segments 1-3, 4-6, 7-9.
CHAIN: list[ObjectKey] = [
    SnapshotKey(G, 0, 0),
    SegmentKey(G, 1, 3, 10),
    SegmentKey(G, 4, 6, 20),
    SnapshotKey(G, 6, 25),
    SegmentKey(G, 7, 9, 30),
]


def test_a_whole_chain_is_proven_to_its_end() -> None:
    proof = prove_chain(CHAIN, G, 9)
    assert proof.problem is None and proof.txid == 9


def test_an_older_generation_beside_ours_does_not_matter() -> None:
    proof = prove_chain([SnapshotKey(G - 1, 0, 0), SegmentKey(G - 1, 1, 50, 5), *CHAIN], G, 9)
    assert proof.problem is None and proof.txid == 9


def test_a_replica_without_our_generation_needs_a_snapshot() -> None:
    proof = prove_chain([SnapshotKey(G - 1, 0, 0)], G, 9)
    assert proof.problem is ReplicaProblem.NO_GENERATION and proof.end == NOTHING
    assert not proof.problem.other_writer


def test_segments_without_a_snapshot_prove_nothing() -> None:
    """A re-created bucket that received segments only (the old bug): not restorable, so not proven."""
    proof = prove_chain([k for k in CHAIN if isinstance(k, SegmentKey)], G, 9)
    assert proof.problem is ReplicaProblem.NO_GENERATION and proof.txid is None


def test_a_missing_segment_is_a_broken_chain_proven_only_up_to_the_gap() -> None:
    held = [k for k in CHAIN if k != SegmentKey(G, 7, 9, 30)] + [SegmentKey(G, 9, 9, 31)]
    proof = prove_chain(held, G, 9)
    assert proof.problem is ReplicaProblem.BROKEN_CHAIN and proof.txid == 6


def test_a_newer_generation_means_another_writer() -> None:
    proof = prove_chain([*CHAIN, SnapshotKey(G + 1, 0, 40)], G, 9)
    assert proof.problem is ReplicaProblem.NEWER_GENERATION and proof.problem.other_writer


def test_transactions_we_never_shipped_mean_another_writer() -> None:
    proof = prove_chain([*CHAIN, SegmentKey(G, 10, 12, 40)], G, 9)
    assert proof.problem is ReplicaProblem.UNSHIPPED and proof.problem.other_writer


def test_compacted_segments_are_neither_a_fork_nor_a_chain_of_their_own() -> None:
    levelled = [*CHAIN, SegmentKey(G, 1, 6, 20, level=1), SegmentKey(G, 1, 9, 30, level=2)]
    proof = prove_chain(levelled, G, 9)
    assert proof.problem is None and proof.txid == 9
    without_shipped_tail = [k for k in levelled if k != SegmentKey(G, 7, 9, 30)]
    assert prove_chain(without_shipped_tail, G, 9).txid == 6  # a replica's chain is what was shipped


def test_a_compacted_segment_reaching_past_what_we_shipped_means_another_writer() -> None:
    proof = prove_chain([*CHAIN, SegmentKey(G, 1, 12, 40, level=1)], G, 9)
    assert proof.problem is ReplicaProblem.UNSHIPPED


def test_only_the_next_segment_or_a_snapshot_continues_a_chain() -> None:
    at = chain_order(SegmentKey(G, 4, 6, 20))
    assert continues(at, SegmentKey(G, 7, 9, 30))
    assert not continues(at, SegmentKey(G, 8, 9, 30))  # a gap
    assert not continues(at, SegmentKey(G, 5, 9, 30))  # an overlap
    assert not continues(at, SegmentKey(G + 1, 1, 2, 30))  # another generation's segment
    assert continues(at, SnapshotKey(G, 6, 25))
    assert continues(at, SnapshotKey(G + 1, 0, 40))
    assert not continues(at, SnapshotKey(G, 3, 15))  # would move the replica back
    assert continues(NOTHING, SnapshotKey(G, 0, 0)) and not continues(NOTHING, SegmentKey(G, 1, 3, 10))


@given(st.lists(st.booleans(), min_size=len(CHAIN), max_size=len(CHAIN)))
def test_what_is_proven_is_exactly_what_restore_would_restore(keep: list[bool]) -> None:
    """Rule 1: a proof without a problem claims exactly what plan_restore finds in the same listing."""
    held = [k for k, kept in zip(CHAIN, keep, strict=True) if kept]
    proof = prove_chain(held, G, 9)
    try:
        plan = plan_restore(held)
    except (ReplicaEmpty, RestoreError):
        assert proof.problem is not None
        return
    if proof.problem is None:
        assert proof.txid == plan.txid


def probed(held: list[ObjectKey], generation: int = G, txid: int = 9) -> list[ObjectKey]:
    """What a probe LIST returns from a replica holding `held` (keys.past_segments, as the uploader lists)."""
    client = MemoryClient()
    for k in held:
        client.put(k.key, b"")
    start = keys.past_segments(generation, txid)
    return [keys.parse(o.key) for o in client.list(keys.GENERATIONS, start_after=start)]


def test_a_generation_two_writers_continued_is_never_proven() -> None:
    theirs = SegmentKey(G, 7, 8, 31)  # a second copy restored at txid 6 shipped its own 7-8
    assert prove_chain([*CHAIN, theirs], G, 9).problem is ReplicaProblem.UNSHIPPED


def test_a_probe_of_our_own_chain_finds_nothing_wrong() -> None:
    assert probe(probed(CHAIN, txid=0), G, CHAIN, SnapshotKey(G, 6, 25)) is None


def test_a_probe_lists_only_what_came_after_the_last_probe() -> None:
    assert probed(CHAIN, txid=6) == [SegmentKey(G, 7, 9, 30), SnapshotKey(G, 0, 0), SnapshotKey(G, 6, 25)]


def test_a_probe_names_a_newer_generation_and_how_far_it_reached() -> None:
    theirs = [SnapshotKey(G + 3, 0, 40), SegmentKey(G + 3, 1, 12, 50)]
    found = probe(probed([*CHAIN, *theirs]), G, CHAIN, SnapshotKey(G, 6, 25))
    assert found is not None
    assert (found.problem, found.generation, found.txid) == (ReplicaProblem.NEWER_GENERATION, G + 3, 12)


def test_a_probe_spots_transactions_of_our_generation_that_we_never_shipped() -> None:
    found = probe(probed([*CHAIN, SegmentKey(G, 10, 11, 40)]), G, CHAIN, SnapshotKey(G, 6, 25))
    assert found is not None and found.problem is ReplicaProblem.UNSHIPPED and found.txid == 11


def test_a_probe_spots_another_writer_continuing_from_the_same_txid_as_ours() -> None:
    """Two copies restored from one seal (txid 6): the other's segment starts where ours does."""
    theirs = SegmentKey(G, 7, 8, 31)
    found = probe(probed([*CHAIN, theirs], txid=6), G, CHAIN, SnapshotKey(G, 6, 25))
    assert found is not None and found.problem is ReplicaProblem.UNSHIPPED


def test_a_probe_notices_the_snapshot_our_chain_hangs_from_is_gone() -> None:
    found = probe(probed(CHAIN[:3]), G, CHAIN, SnapshotKey(G, 6, 25))
    assert found is not None and found.problem is ReplicaProblem.BROKEN_CHAIN


def test_a_probe_cut_short_by_its_limit_does_not_call_the_snapshot_gone() -> None:
    assert probe([], G, CHAIN, SnapshotKey(G, 6, 25), complete=False) is None


# -- local state against what the database's files say (the start-up generation triggers) ------------------

_LIFE = WalHeader(False, 4096, 3, (7, 8), (1, 2))
_STATE = ShipperState(5, 10, 4, 4096, 1, 100, WalPosition((7, 8), 3, 6, (60, 61)), 0)
_FACTS = LocalFacts(1, 100, 4096, _LIFE, FrameHeader(2, 4, (7, 8), (60, 61)))


@pytest.mark.parametrize(
    ("state", "facts", "reason"),
    [
        (_STATE, _FACTS, None),
        (None, _FACTS, Reason.NO_STATE),
        (_STATE, replace(_FACTS, inode=101), Reason.FILE_REPLACED),
        (_STATE, replace(_FACTS, page_size=8192), Reason.PAGE_SIZE),
        (_STATE, replace(_FACTS, wal=None), Reason.WAL_RESTARTED_OFFLINE),
        (_STATE, replace(_FACTS, wal=replace(_LIFE, salt=(9, 9))), Reason.WAL_RESTARTED_OFFLINE),
        (_STATE, replace(_FACTS, last_frame=FrameHeader(2, 4, (7, 8), (0, 0))), Reason.WAL_REWRITTEN_OFFLINE),
        (_STATE, replace(_FACTS, last_frame=None), Reason.WAL_REWRITTEN_OFFLINE),
        (replace(_STATE, wal=None), _FACTS, Reason.WAL_RESTARTED_OFFLINE),
        (replace(_STATE, wal=None, restored_digest="ab"), _FACTS, None),  # the edge checks digest and seal
    ],
)
def test_local_state_against_the_files(state: ShipperState | None, facts: LocalFacts, reason: Reason | None) -> None:
    found = local_state_problem(state, facts)
    assert (found.reason if found else None) is reason
