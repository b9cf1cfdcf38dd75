"""The durability barrier: wait until what the app has committed is durably on every replica.

Rules:
1. A wait is asked (`ask`), then given its target by the capture side: the first step that *starts after*
   the ask and finds everything SQLite calls committed captured into the spool says "the head is here"
   (`caught_up`). Everything the app committed before it asked is at or before that head. A wait for an
   explicit txid has that target at once.
2. The target is met once every replica's uploader holds a chain reaching it: the same generation at that
   txid or beyond, or a later generation (a generation starts from a snapshot of the database taken after
   the target was set, so it holds everything the target does). An uploader's position moves only when a
   replica acknowledged a PUT (S3), or the file is fsynced and renamed (a directory): durable.
3. Waiting forces nothing: the capture side steps at once for the ask (reading SQLite's index costs
   microseconds), but a busy database is still captured once per sync interval and an idle one at its
   first commit, as always. A wait rides that cadence and adds no upload.
4. Every waiter ends: met, timed out (`WaitTimeout`), or failed (`WaitFailed`: the replicator stopped or a
   replica refused our uploads). Nothing here knows threads other than the one condition variable.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .errors import ReplicatorError


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A point in a database's replicated history."""

    generation: int
    txid: int

    def reached_by(self, held: Position) -> bool:
        """Rule 2: whether a replica whose chain ends at `held` holds everything up to this position."""
        return held.generation > self.generation or (held.generation == self.generation and held.txid >= self.txid)

    def __str__(self) -> str:
        return f"generation {self.generation:016x}, txid {self.txid}"


class WaitTimeout(ReplicatorError):
    """The replicas did not reach the position in time (nothing is lost: it is still being shipped)."""


class WaitFailed(ReplicatorError):
    """The position cannot be reached: the replicator stopped, or a replica refuses our uploads."""


@dataclass(frozen=True, slots=True)
class Replica:
    """What the barrier needs to know of one replica's uploader."""

    url: str
    held: Position | None  # where its proven chain ends; None before it is known
    refused: str | None


@dataclass(eq=False)
class _Waiter:
    ticket: int
    target: Position | None = None


class Barrier:
    """The waits on one database (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tickets = itertools.count(1)
        self._waiting: list[_Waiter] = []
        self._closed: str | None = None
        self.on_ask: Callable[[], None] = lambda: None  # wakes the capture side (replicate.py)

    def epoch(self) -> int:
        """Taken by the capture side as a step starts: the asks that `caught_up` may then answer (rule 1)."""
        with self._cond:
            return next(self._tickets)

    def caught_up(self, epoch: int, head: Position) -> None:
        """Everything committed before the step that took `epoch` is spooled, up to `head`."""
        with self._cond:
            for waiter in self._waiting:
                if waiter.target is None and waiter.ticket < epoch:
                    waiter.target = head
            self._cond.notify_all()

    def untargeted(self) -> bool:
        """Some wait still needs `caught_up`: the capture side looks again a poll later."""
        with self._cond:
            return any(w.target is None for w in self._waiting)

    def progressed(self) -> None:
        """An uploader's position moved, or it was refused: the waiters look again."""
        with self._cond:
            self._cond.notify_all()

    def close(self, why: str) -> None:
        """The replicator lets go: every waiter fails with `why` (later waits too)."""
        with self._cond:
            self._closed = why
            self._cond.notify_all()

    def wait(
        self,
        replicas: Callable[[], Iterable[Replica]],
        *,
        target: Position | None = None,
        timeout: float | None = None,
    ) -> Position:
        """Block until every replica `replicas()` names holds what was committed before the call (or `target`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            waiter = _Waiter(next(self._tickets), target=target)
            self._waiting.append(waiter)
        if target is None:
            self.on_ask()
        try:
            with self._cond:
                while True:
                    if self._closed is not None:
                        raise WaitFailed(self._closed)
                    if waiter.target is not None and self._met(waiter.target, list(replicas())):
                        return waiter.target
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise WaitTimeout(self._late(waiter.target, list(replicas()), timeout))
                    self._cond.wait(left)
        finally:
            with self._cond:
                self._waiting.remove(waiter)

    @staticmethod
    def _met(target: Position, replicas: list[Replica]) -> bool:
        for replica in replicas:
            if replica.refused is not None:
                raise WaitFailed(f"{replica.url} refuses our uploads: {replica.refused}")
        return all(r.held is not None and target.reached_by(r.held) for r in replicas)

    @staticmethod
    def _late(target: Position | None, replicas: list[Replica], timeout: float | None) -> str:
        if target is None:
            return f"what was committed could not be captured within {timeout:g}s (the database is busy or locked)"
        behind = [r.url for r in replicas if r.held is None or not target.reached_by(r.held)]
        return f"not on {', '.join(behind)} within {timeout:g}s ({target}); it is still being shipped"
