"""The stall watchdog: a replica that has commits to take and takes none of them for too long (sans-IO).

Rules:
1. A replica is *pending* while its chain ends before the local head (what was captured and spooled).
   Progress is an upload the replica acknowledged (a PUT answered, a file renamed into place), compacted
   segments included: a large object that takes long to send is still one upload.
2. It is *stalled* once it has been pending for `after` seconds with no progress: counted from the later
   of the moment it became pending and its last progress. An idle replica (nothing pending) never stalls.
3. Each stall is told once when it starts and once when it ends (progress, or nothing pending any more),
   so a warning line, an event and a counter follow the stall rather than every look at it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Change(enum.Enum):
    STALLED = "stalled"
    RECOVERED = "recovered"


@dataclass(slots=True)
class Watchdog:
    """One replica's watchdog. `observe` with the time (time.monotonic()) at each look."""

    after: float  # seconds
    waiting_since: float | None = None  # pending since then, with no progress after it
    stalled_since: float | None = None  # set while stalled: when the wait that became a stall began
    _progress: float | None = None  # the last progress seen

    def observe(self, now: float, *, pending: bool, progress: float | None) -> Change | None:
        """Rule 2 and 3: `progress` is when the replica last acknowledged an upload (None: never)."""
        if progress != self._progress:
            self._progress = progress
            self.waiting_since = progress if pending else None
        if not pending:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now
        if self.stalled_since is not None and self.waiting_since != self.stalled_since:
            self.stalled_since = None
            return Change.RECOVERED
        if self.waiting_since is not None and self.stalled_since is None and now - self.waiting_since >= self.after:
            self.stalled_since = self.waiting_since
            return Change.STALLED
        return None

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    def due(self) -> float | None:
        """When a look could find a new stall (None: not pending, or stalled already)."""
        if self.waiting_since is None or self.stalled_since is not None:
            return None
        return self.waiting_since + self.after
