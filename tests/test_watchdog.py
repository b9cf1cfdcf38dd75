"""The stall watchdog's rules (watchdog.py), on an injected clock."""

from __future__ import annotations

from replicator.config import Settings
from replicator.watchdog import Change, Watchdog


def test_a_replica_pending_without_progress_stalls_after_the_limit() -> None:
    dog = Watchdog(after=10)
    assert dog.observe(100.0, pending=True, progress=None) is None
    assert dog.due() == 110.0
    assert dog.observe(109.9, pending=True, progress=None) is None
    assert dog.observe(110.0, pending=True, progress=None) is Change.STALLED
    assert dog.stalled and dog.stalled_since == 100.0


def test_a_stall_is_told_once_however_often_it_is_looked_at() -> None:
    dog = Watchdog(after=10)
    dog.observe(0.0, pending=True, progress=None)
    changes = [dog.observe(float(t), pending=True, progress=None) for t in range(10, 100)]
    assert changes.count(Change.STALLED) == 1 and changes.count(Change.RECOVERED) == 0
    assert dog.due() is None


def test_progress_while_pending_restarts_the_count() -> None:
    dog = Watchdog(after=10)
    dog.observe(0.0, pending=True, progress=None)
    assert dog.observe(8.0, pending=True, progress=7.5) is None
    assert dog.due() == 17.5
    assert dog.observe(16.0, pending=True, progress=7.5) is None
    assert dog.observe(17.5, pending=True, progress=7.5) is Change.STALLED


def test_an_idle_replica_never_stalls() -> None:
    dog = Watchdog(after=10)
    assert all(dog.observe(float(t), pending=False, progress=None) is None for t in range(0, 1000, 7))
    assert dog.due() is None and not dog.stalled


def test_progress_ends_a_stall_once() -> None:
    dog = Watchdog(after=10)
    dog.observe(0.0, pending=True, progress=None)
    dog.observe(10.0, pending=True, progress=None)
    assert dog.observe(30.0, pending=True, progress=29.0) is Change.RECOVERED
    assert dog.observe(31.0, pending=True, progress=29.0) is None
    assert not dog.stalled and dog.due() == 39.0


def test_a_stall_ends_when_nothing_is_pending_any_more() -> None:
    dog = Watchdog(after=10)
    dog.observe(0.0, pending=True, progress=None)
    dog.observe(12.0, pending=True, progress=None)
    assert dog.observe(13.0, pending=False, progress=None) is Change.RECOVERED


def test_a_second_stall_is_told_again() -> None:
    dog = Watchdog(after=10)
    dog.observe(0.0, pending=True, progress=None)
    dog.observe(10.0, pending=True, progress=None)
    dog.observe(11.0, pending=True, progress=11.0)
    assert dog.observe(21.0, pending=True, progress=11.0) is Change.STALLED


def test_the_default_limit_is_ten_sync_intervals_and_at_least_ten_seconds() -> None:
    assert Settings(sync_interval=1.0).stall_seconds == 10.0
    assert Settings(sync_interval=0.1).stall_seconds == 10.0
    assert Settings(sync_interval=5.0).stall_seconds == 50.0
    assert Settings(sync_interval=5.0, stall_after=3.0).stall_seconds == 3.0
