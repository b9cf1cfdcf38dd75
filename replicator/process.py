"""The API's `Replicator`: the same engine as `replicator replicate`, in a child process this object supervises.

Why a child and never threads in the app's process: apsw links its own SQLite while the app's `sqlite3`
uses the system's, and POSIX locks belong to the process, so two SQLite libraries in one process neither
see each other's locks nor survive each other's `close()` of the file (SQLite documents it as a corruption
hazard; measured here: the app's own checkpoints restarted the WAL under our pin, 5 generations in 20 s).

Rules:
1. The child is `python -m replicator_cli replicate DB URL... --option value...`, in a session of its own
   (a terminal's Ctrl-C reaches the app, which then stops us in order).
2. A lifeline pipe ties the child to this object: closing it (`stop`, or this process ending in any way,
   kill -9 included, since the kernel closes it) makes the child ship what is committed and exit. No orphan
   replicator outlives its app.
3. The child's log lines go to the `replicator` logger at their own level, so they land in the app's logs.
4. `start` returns once the child answers on the database's control socket (its own PID in the answer)
   and follows the database (or waits for the app to create it); a child that exits first (a bad URL,
   another replicator running) raises with its one error line.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from . import control
from .barrier import Position
from .errors import ConfigError, ReplicatorError
from .state import StateDir

if TYPE_CHECKING:
    from .report import DatabaseStatus

log = logging.getLogger("replicator")

LIFELINE_ENV = "REPLICATOR_LIFELINE"  # the descriptor the child reads; end of file means stop (rule 2)
# Settings a Replicator takes, as keyword arguments, and the replicate option each one becomes.
SETTINGS = (
    "sync_interval",
    "snapshot_interval",
    "retention",
    "min_checkpoint_pages",
    "shutdown_timeout",
    "shutdown_grace",
    "verify_interval",
    "spool_limit",
    "compaction",
    "stall_after",
    "metrics_addr",
)
_DURATIONS = {"retention", "stall_after", *(n for n in SETTINGS if n.endswith(("_interval", "_timeout", "_grace")))}
_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")


class ReplicatorExited(ReplicatorError):
    """The replicator's child process ended (or never started) without being asked to, or failed to stop."""


class Replicator:
    """Replicates `db` to every URL in `urls` until `stop()` (see the module docstring).

        with replicator.Replicator("/data/app.db", "s3://bucket/app", sync_interval="1s") as r:
            ...                      # the app runs; r.wait() after a commit that must not be lost

    Settings are replicate's options as keyword arguments (`sync_interval="1s"`, `retention="72h"`,
    `compaction="none"`...); numbers of seconds work for durations.
    """

    def __init__(self, db: str | os.PathLike[str], urls: str | Sequence[str], **settings: str | int | float) -> None:
        self.db = Path(db).resolve()
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ConfigError("a Replicator needs at least one replica URL")
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown setting {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
        self.settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._reader: threading.Thread | None = None
        self._last_error: str | None = None

    def argv(self) -> list[str]:
        """The child's command line (rule 1)."""
        options = []
        for name, value in self.settings.items():
            seconds = name in _DURATIONS and isinstance(value, int | float)
            options += [f"--{name.replace('_', '-')}", f"{value}s" if seconds else str(value)]
        command = [sys.executable, "-m", "replicator_cli", "replicate", "--log-format", "text"]  # read by _forward
        return [*command, str(self.db), *self.urls, *options]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start the child and return once it answers (rule 4)."""
        if self._process is not None:
            raise ReplicatorError(f"the Replicator of {self.db} was started already")
        read_end, self._lifeline = os.pipe()
        try:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(read_end,),
                env={**os.environ, LIFELINE_ENV: str(read_end)},
                start_new_session=True,
            )
        finally:
            os.close(read_end)
        assert self._process.stderr is not None
        self._reader = threading.Thread(target=self._forward, args=(self._process.stderr,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        socket = StateDir(self.db).control
        while True:
            if self._process.poll() is not None:
                self._reader.join(timeout=5)
                self._close_lifeline()
                raise ReplicatorExited(self._exit_message("could not start"))
            try:
                status = control.request(socket, {"op": "status"}, timeout=5)
                if status.get("pid") == self._process.pid and status.get("following"):
                    return
            except control.NotRunning:
                pass
            if time.monotonic() >= deadline:
                self.stop(timeout=10)
                raise ReplicatorExited(f"the replicator of {self.db} did not start within {timeout:g}s")
            time.sleep(0.02)

    def wait(self, txid: int | None = None, timeout: float | None = None) -> Position:
        """The durability barrier (`replicator.wait`): everything committed before the call (or up to `txid`)
        is durably on every replica when it returns."""
        from .api import wait

        if not self.running:
            raise ReplicatorExited(self._exit_message("is not running"))
        try:
            return wait(self.db, txid=txid, timeout=timeout)
        except control.NotRunning:
            if not self.running:
                raise ReplicatorExited(self._exit_message("stopped")) from None
            raise

    def status(self) -> DatabaseStatus:
        """Where the database and each replica are (replicator.status)."""
        if not self.running:
            raise ReplicatorExited(self._exit_message("is not running"))
        from .api import status

        return status(self.db)

    def stop(self, timeout: float = 60.0) -> None:
        """Ship everything committed and stop; raises ReplicatorExited if the final upload failed (the
        child's error line says what is missing) or the child did not end within `timeout`."""
        process = self._process
        if process is None:
            return
        self._close_lifeline()
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise ReplicatorExited(f"the replicator of {self.db} did not stop within {timeout:g}s; killed") from None
        finally:
            if self._reader is not None:
                self._reader.join(timeout=5)
        if code != 0:
            raise ReplicatorExited(self._exit_message("failed to stop cleanly"))

    def __enter__(self) -> Replicator:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _close_lifeline(self) -> None:
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    def _forward(self, stream: IO[bytes]) -> None:
        """Rule 3."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            match = _LINE.match(line)
            level, message = (match.group(1), match.group(2)) if match else ("ERROR", line.removeprefix("error: "))
            if level in ("ERROR", "CRITICAL"):
                self._last_error = message
            log.log(logging.getLevelNamesMapping()[level], "%s", message)
        stream.close()

    def _exit_message(self, what: str) -> str:
        code = self._process.returncode if self._process is not None else None
        why = f": {self._last_error}" if self._last_error else ""
        return f"the replicator of {self.db} {what} (exit code {code}){why}"


def follow_lifeline(stop: Callable[[], None]) -> None:
    """In the child (rule 2): call `stop` once the lifeline `LIFELINE_ENV` names is closed by the parent."""
    fd = os.environ.pop(LIFELINE_ENV, None)
    if fd is None:
        return

    def follow() -> None:
        try:
            while os.read(int(fd), 1):
                pass
        except OSError:
            pass
        log.info("the app that started this replicator let go of it (or ended): stopping")
        stop()

    threading.Thread(target=follow, name="lifeline", daemon=True).start()
