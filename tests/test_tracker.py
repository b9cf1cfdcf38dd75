"""The tracker (sans-IO): each generation trigger and each checkpoint step, driven by a fake clock."""

from __future__ import annotations

import itertools

import pytest

from replicator.config import Settings
from replicator.lineage import NewGeneration, Reason
from replicator.state import WalPosition
from replicator.tracker import (
    IDLE_CHECKPOINT_AFTER,
    MISMATCHES_TOLERATED,
    SPOOL_RETRY,
    Action,
    CheckpointStep,
    Collect,
    Discontinuity,
    Tracker,
    Truncation,
)
from replicator.wal import WalHeader, WalIndexHeader

SETTINGS = Settings(sync_interval=1.0, min_checkpoint_pages=100, poll_interval=0.025)
LIFE = WalHeader(False, 4096, 7, (1, 2), (10, 20))
NEXT_LIFE = WalHeader(False, 4096, 8, (2, 9), (30, 40))


def index(frames: int, *, salt: tuple[int, int] = LIFE.salt, backfilled: int = 0) -> WalIndexHeader:
    return WalIndexHeader(frames, 4096, frames, 10, (frames, frames), salt, backfilled)


def at(frames: int, life: WalHeader = LIFE) -> WalPosition:
    return WalPosition(life.salt, life.checkpoint_seq, frames, (frames, frames) if frames else life.checksum)


def following(frames: int = 0, *, armed: bool = False) -> Tracker:
    tracker = Tracker(SETTINGS)
    tracker.follow(LIFE, at(frames), armed=armed)
    return tracker


def collect(tracker: Tracker, idx: WalIndexHeader) -> None:
    """What the edge does on CAPTURE: scan to the index's end, and the scan agrees."""
    assert tracker.plan_collect(idx, None) is Collect.SCAN
    assert tracker.scanned(idx, idx.max_frame, idx.frame_checksum)


# -- the schedule ----------------------------------------------------------------------------------------


def test_a_first_commit_after_a_quiet_spell_is_captured_at_once() -> None:
    tracker = following(armed=True)
    assert tracker.decide(index(3), now=100.0, unflushed=False) is Action.CAPTURE


def test_commits_within_the_sync_interval_wait_for_it() -> None:
    tracker = following()
    assert tracker.decide(index(3), now=100.0, unflushed=False) is Action.CAPTURE
    collect(tracker, index(3))
    assert tracker.decide(index(5), now=100.4, unflushed=False) is Action.NOTHING
    assert tracker.capture_not_before == pytest.approx(101.0)
    assert tracker.wake_at(100.4, unflushed=False) == pytest.approx(101.0)
    assert tracker.decide(index(5), now=101.0, unflushed=False) is Action.CAPTURE


def test_a_busy_apps_captures_keep_the_sync_intervals_beat_when_a_step_runs_late() -> None:
    tracker = following()
    assert tracker.decide(index(3), now=100.0, unflushed=False) is Action.CAPTURE
    collect(tracker, index(3))
    assert tracker.decide(index(5), now=101.03, unflushed=False) is Action.CAPTURE  # 30 ms late
    collect(tracker, index(5))
    tracker.decide(index(7), now=101.1, unflushed=False)
    assert tracker.wake_at(101.1, unflushed=False) == pytest.approx(102.0)  # not 102.03


def test_after_a_quiet_spell_the_beat_starts_again_at_the_next_commit() -> None:
    tracker = following()
    assert tracker.decide(index(3), now=100.0, unflushed=False) is Action.CAPTURE
    collect(tracker, index(3))
    assert tracker.decide(index(5), now=107.5, unflushed=False) is Action.CAPTURE
    collect(tracker, index(5))
    tracker.decide(index(7), now=107.6, unflushed=False)
    assert tracker.wake_at(107.6, unflushed=False) == pytest.approx(108.5)


def test_a_restart_seen_before_its_first_commit_lands_does_not_delay_that_commit() -> None:
    tracker = following(3, armed=True)
    assert tracker.decide(index(0, salt=NEXT_LIFE.salt), now=100.0, unflushed=False) is Action.CAPTURE
    assert tracker.plan_collect(index(0, salt=NEXT_LIFE.salt), NEXT_LIFE) is Collect.NEW_LIFE
    tracker.enter_life(NEXT_LIFE)
    assert tracker.decide(index(1, salt=NEXT_LIFE.salt), now=100.001, unflushed=False) is Action.CAPTURE


@pytest.mark.parametrize(
    ("tracker", "idx", "holds"),
    [
        (following(3), index(3), True),
        (following(3), index(4), False),
        (following(3), None, False),  # a torn read proves nothing
        (following(3, armed=True), index(0, salt=NEXT_LIFE.salt), True),  # a restart before its first commit
        (following(3), index(0, salt=NEXT_LIFE.salt), False),
        (following(3, armed=True), index(1, salt=NEXT_LIFE.salt), False),
    ],
)
def test_the_barrier_is_told_everything_is_collected_only_when_the_index_proves_it(
    tracker: Tracker, idx: WalIndexHeader | None, holds: bool
) -> None:
    assert tracker.holds(idx) is holds


def test_with_no_wal_when_the_generation_began_an_empty_index_holds_nothing_to_collect() -> None:
    tracker = Tracker(SETTINGS)
    tracker.follow(None, None, armed=False)
    assert tracker.holds(index(0)) and not tracker.holds(index(1))


def test_an_idle_armed_database_has_no_wake_up_of_its_own() -> None:
    tracker = following(armed=True)
    assert tracker.decide(index(0), now=100.0, unflushed=False) is Action.TRUNCATE_WAL  # a left-over large WAL
    tracker.truncated(Truncation.NOT_NEEDED, 100.0)
    assert tracker.decide(index(0), now=100.1, unflushed=False) is Action.NOTHING
    assert tracker.wake_at(100.1, unflushed=False) is None


def test_a_wal_reaching_the_checkpoint_size_is_checkpointed_in_two_actions() -> None:
    tracker = following(50)
    assert tracker.decide(index(150), now=100.0, unflushed=False) is Action.CHECKPOINT
    collect(tracker, index(150))  # steps 1-2 collect to the end first
    tracker.checkpoint_started(100.0, quiet=False)
    assert tracker.step is CheckpointStep.COPIED
    assert tracker.wake_at(100.0, unflushed=False) == pytest.approx(100.0 + SETTINGS.poll_interval)
    assert tracker.decide(index(150), now=100.03, unflushed=False) is Action.FINISH_CHECKPOINT
    tracker.repinned(index(150, backfilled=150))
    assert tracker.checkpoint_finished() is False
    assert tracker.step is CheckpointStep.NONE


def test_step_three_waits_for_the_sync_interval_while_commits_keep_coming() -> None:
    tracker = following(50)
    tracker.decide(index(150), now=100.0, unflushed=False)
    collect(tracker, index(150))
    tracker.checkpoint_started(100.0, quiet=False)
    assert tracker.decide(index(160), now=100.5, unflushed=False) is Action.NOTHING
    assert tracker.wake_at(100.5, unflushed=False) == pytest.approx(101.0)  # no polling meanwhile
    assert tracker.decide(index(170), now=101.0, unflushed=False) is Action.FINISH_CHECKPOINT


def test_size_driven_checkpoints_run_at_most_once_a_second() -> None:
    tracker = following(50)
    assert tracker.decide(index(150), now=100.0, unflushed=False) is Action.CHECKPOINT
    tracker.checkpoint_started(100.0, quiet=False)
    tracker.checkpoint_finished()
    collect(tracker, index(150))
    assert tracker.decide(index(300), now=101.0, unflushed=False) is Action.CHECKPOINT
    tracker.checkpoint_started(100.999, quiet=False)
    tracker.checkpoint_finished()
    collect(tracker, index(300))
    assert tracker.decide(index(400), now=102.0, unflushed=False) is Action.CHECKPOINT


def test_a_quiet_app_gets_an_idle_checkpoint_after_the_quiet_spell() -> None:
    tracker = following()
    tracker.decide(index(3), now=100.0, unflushed=False)
    collect(tracker, index(3))
    assert tracker.decide(index(3), now=100.1, unflushed=False) is Action.NOTHING
    assert tracker.wake_at(100.1, unflushed=False) == pytest.approx(100.0 + IDLE_CHECKPOINT_AFTER)
    assert tracker.decide(index(3), now=100.0 + IDLE_CHECKPOINT_AFTER, unflushed=False) is Action.IDLE_CHECKPOINT
    tracker.checkpoint_started(100.2, quiet=True)
    tracker.repinned(index(3, backfilled=3))
    assert tracker.checkpoint_finished() is True
    assert tracker.armed


def test_idle_checkpoints_back_off_while_an_app_reader_keeps_the_wal() -> None:
    tracker = following(3)
    times = []
    now = 100.0
    while len(times) < 4:
        if tracker.decide(index(3), now=now, unflushed=False) is Action.IDLE_CHECKPOINT:
            times.append(now)
            tracker.checkpoint_started(now, quiet=True)
            tracker.repinned(index(3, backfilled=1))  # a reader kept the rest
            tracker.checkpoint_finished()
        now += 0.25
    gaps = [round(b - a) for a, b in itertools.pairwise(times)]
    assert gaps == [2, 4, 8]


def test_a_large_wal_is_cut_once_quiet_and_backs_off_while_busy() -> None:
    tracker = following(3, armed=True)
    tracker.decide(index(3), now=100.0, unflushed=False)  # the left-over check of `follow`
    tracker.truncated(Truncation.BUSY, 100.0)
    assert tracker.decide(index(3), now=100.5, unflushed=False) is Action.NOTHING
    assert tracker.wake_at(100.5, unflushed=False) == pytest.approx(102.0)
    assert tracker.decide(index(3), now=102.0, unflushed=False) is Action.TRUNCATE_WAL
    tracker.truncated(Truncation.DONE, 102.0)
    assert tracker.decide(index(3), now=103.0, unflushed=False) is Action.NOTHING


def test_no_checkpoint_runs_while_the_spool_fails_and_the_flush_is_retried() -> None:
    tracker = following(50)
    tracker.spool_failed(100.0)
    assert tracker.decide(index(50), now=100.1, unflushed=True) is Action.NOTHING
    assert tracker.wake_at(100.1, unflushed=True) == pytest.approx(100.0 + SPOOL_RETRY)
    assert tracker.decide(index(50), now=100.0 + SPOOL_RETRY, unflushed=True) is Action.FLUSH
    assert tracker.decide(index(50), now=105.0, unflushed=False) is Action.NOTHING  # flushed: no idle checkpoint
    tracker.spool_failing = False
    assert tracker.decide(index(50), now=105.0, unflushed=False) is Action.IDLE_CHECKPOINT


def test_a_generation_the_spool_refused_is_retried_after_a_pause() -> None:
    tracker = following()
    tracker.generation_wanted = NewGeneration(Reason.NO_STATE)
    tracker.spool_failed(100.0)
    assert tracker.decide(index(9), now=100.1, unflushed=False) is Action.NOTHING
    assert tracker.decide(index(9), now=100.0 + SPOOL_RETRY, unflushed=False) is Action.RETRY_GENERATION


# -- continuity: the generation triggers while following ---------------------------------------------------


def test_a_restart_we_armed_for_continues_in_the_new_life() -> None:
    tracker = following(3, armed=True)
    assert tracker.plan_collect(index(2, salt=NEXT_LIFE.salt), NEXT_LIFE) is Collect.NEW_LIFE
    tracker.enter_life(NEXT_LIFE)
    assert tracker.cursor == at(0, NEXT_LIFE) and not tracker.armed


def test_a_restart_without_our_pin_is_a_new_generation() -> None:
    tracker = following(3)
    with pytest.raises(Discontinuity) as raised:
        tracker.plan_collect(index(2, salt=NEXT_LIFE.salt), NEXT_LIFE)
    assert raised.value.cause.reason is Reason.WAL_RESTARTED


def test_only_one_restart_is_ours() -> None:
    tracker = following(3, armed=True)
    tracker.enter_life(NEXT_LIFE)
    third = WalHeader(False, 4096, 9, (3, 3), (1, 1))
    with pytest.raises(Discontinuity):
        tracker.plan_collect(index(1, salt=third.salt), third)


def test_a_restart_in_progress_is_looked_at_again() -> None:
    tracker = following(3, armed=True)
    assert tracker.plan_collect(index(1, salt=NEXT_LIFE.salt), LIFE) is Collect.LATER


def test_a_wal_shorter_than_our_position_is_a_new_generation() -> None:
    with pytest.raises(Discontinuity) as raised:
        following(10).plan_collect(index(4), None)
    assert raised.value.cause.reason is Reason.WAL_SHRANK


def test_a_wal_disagreeing_with_the_index_is_tolerated_a_while_then_a_new_generation() -> None:
    tracker = following(3)
    for _ in range(MISMATCHES_TOLERATED):
        assert not tracker.scanned(index(5), 4, (4, 4))
    with pytest.raises(Discontinuity) as raised:
        tracker.scanned(index(5), 4, (4, 4))
    assert raised.value.cause.reason is Reason.WAL_DISAGREES


def test_an_agreeing_scan_moves_the_cursor_and_forgives_earlier_torn_reads() -> None:
    tracker = following(3)
    assert not tracker.scanned(index(5), 4, (4, 4))
    assert tracker.scanned(index(5), 5, (5, 5))
    assert tracker.cursor == at(5)
    assert tracker.plan_collect(index(5), None) is Collect.NOTHING


@pytest.mark.parametrize(
    ("idx", "armed"),
    [
        (index(5, backfilled=5), True),
        (index(5, backfilled=4), False),  # an app reader kept a frame from being copied
        (index(6, backfilled=6), False),  # a commit we have not collected
    ],
)
def test_the_pin_arms_only_when_everything_collected_is_copied(idx: WalIndexHeader, armed: bool) -> None:
    tracker = following(5)
    tracker.repinned(idx)
    assert tracker.armed is armed


def test_a_reason_reads_as_its_detail_when_it_has_one() -> None:
    assert str(NewGeneration(Reason.NO_STATE)) == Reason.NO_STATE.value
    assert str(NewGeneration(Reason.OTHER_WRITER, "s3://b/x holds ...")) == "s3://b/x holds ..."
