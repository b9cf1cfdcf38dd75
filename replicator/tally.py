"""Counts by key, added to from the threads that do the work and read by another (a metrics scrape, `status`)."""

from __future__ import annotations

import threading
from collections.abc import Hashable


class Tally:
    """A thread-safe counter: `add` from anywhere, `counts()` for a consistent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Hashable, int] = {}

    def add(self, key: Hashable, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def counts(self) -> dict[Hashable, int]:
        with self._lock:
            return dict(self._counts)
