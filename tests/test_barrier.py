"""The durability barrier's rules (replicator/barrier.py), with the capture side and uploaders played by the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from replicator.barrier import Barrier, Position, Replica, WaitFailed, WaitTimeout

GEN = 0x10


class Replicas:
    """Uploader positions the test moves."""

    def __init__(self, *urls: str) -> None:
        self.held: dict[str, Position | None] = dict.fromkeys(urls)
        self.refused: dict[str, str] = {}

    def __call__(self) -> list[Replica]:
        return [Replica(url, held, self.refused.get(url)) for url, held in self.held.items()]


def waiting(barrier: Barrier, replicas: Replicas, **kw: object) -> tuple[threading.Thread, list[object]]:
    """A wait on its own thread; its result (a Position or the exception) lands in the list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(barrier.wait(replicas, **kw))  # type: ignore[arg-type]
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_a_position_is_reached_by_the_same_generation_at_or_beyond_it_or_any_later_generation() -> None:
    target = Position(GEN, 10)
    assert target.reached_by(Position(GEN, 10)) and target.reached_by(Position(GEN, 11))
    assert target.reached_by(Position(GEN + 1, 0))
    assert not target.reached_by(Position(GEN, 9)) and not target.reached_by(Position(GEN - 1, 99))


def test_a_wait_returns_once_the_head_it_was_given_is_on_every_replica() -> None:
    barrier, replicas = Barrier(), Replicas("a", "b")
    asked = threading.Event()
    barrier.on_ask = asked.set
    thread, out = waiting(barrier, replicas, timeout=5)
    asked.wait(5)
    barrier.caught_up(barrier.epoch(), Position(GEN, 7))
    replicas.held["a"] = Position(GEN, 7)
    barrier.progressed()
    time.sleep(0.05)
    assert out == []  # b does not hold it yet
    replicas.held["b"] = Position(GEN, 9)
    barrier.progressed()
    thread.join(5)
    assert out == [Position(GEN, 7)]


def test_a_step_that_began_before_the_wait_was_asked_cannot_answer_it() -> None:
    barrier, replicas = Barrier(), Replicas("a")
    replicas.held["a"] = Position(GEN, 7)
    early = barrier.epoch()  # a step already reading the index when the app asks
    thread, out = waiting(barrier, replicas, timeout=5)
    until(barrier.untargeted)
    barrier.caught_up(early, Position(GEN, 7))
    time.sleep(0.05)
    assert out == [] and barrier.untargeted()
    barrier.caught_up(barrier.epoch(), Position(GEN, 7))
    thread.join(5)
    assert out == [Position(GEN, 7)]


def test_a_wait_for_an_explicit_position_needs_no_step() -> None:
    barrier, replicas = Barrier(), Replicas("a")
    replicas.held["a"] = Position(GEN + 1, 0)
    assert barrier.wait(replicas, target=Position(GEN, 50), timeout=1) == Position(GEN, 50)


def test_a_wait_that_runs_out_of_time_names_the_replica_still_behind() -> None:
    barrier, replicas = Barrier(), Replicas("s3://up", "s3://down")
    replicas.held["s3://up"] = Position(GEN, 5)
    with pytest.raises(WaitTimeout, match=r"s3://down") as raised:
        barrier.wait(replicas, target=Position(GEN, 5), timeout=0.1)
    assert "s3://up" not in str(raised.value)


def test_a_wait_the_capture_side_never_answers_times_out_saying_so() -> None:
    with pytest.raises(WaitTimeout, match="could not be captured"):
        Barrier().wait(Replicas("a"), timeout=0.05)


def test_a_refused_replica_fails_the_wait_at_once() -> None:
    barrier, replicas = Barrier(), Replicas("a")
    replicas.refused["a"] = "another replicator writes there"
    with pytest.raises(WaitFailed, match="another replicator"):
        barrier.wait(replicas, target=Position(GEN, 1), timeout=5)


def test_closing_fails_every_waiter_and_every_later_wait() -> None:
    barrier, replicas = Barrier(), Replicas("a")
    thread, out = waiting(barrier, replicas)
    until(barrier.untargeted)
    barrier.close("the replicator stopped")
    thread.join(5)
    assert isinstance(out[0], WaitFailed) and not barrier.untargeted()
    with pytest.raises(WaitFailed, match="stopped"):
        barrier.wait(replicas, target=Position(GEN, 1))
