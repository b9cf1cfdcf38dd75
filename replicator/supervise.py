"""`replicate --exec`: run the app as our child, so that nothing it commits is lost when it stops.

Why a supervisor: in a container the platform signals PID 1 only, and when PID 1 exits the kernel kills
everything else at once. With `replicator replicate … & exec app`, the app is PID 1 and its last commits
die with us before the final upload. As the parent we outlive the app by construction.

Order of events (docs/DEPLOY.md tells users the same):
1. For each database that does not exist: restore it from the first replica that holds data (a replica
   without data is a first boot: the app starts with a new database). A replica that fails is an error,
   and the app is not started: starting it on an empty file would fork its history. A directory of
   databases (`--dir`) that holds none is restored whole the same way (restore_directory_if_empty).
2. Start replicating: the state-directory lock is taken (a second replicator is refused here, before the
   app starts), and each database is being followed, or waited for if the app creates it.
3. Start the child. Signals we receive (TERM, INT, HUP, QUIT, USR1, USR2) are passed on to it; none of
   them stops replication by itself.
4. When the child exits, for any reason: stop (the grace period ends at once if nothing else has the
   database open), ship everything it committed, and exit with its code (128+N if signal N killed it),
   or non-zero if the final upload failed. If replication fails while the child runs, the child is sent
   SIGTERM and we exit non-zero once it has gone.
As PID 1 (a container without an init), we also reap orphaned grandchildren.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import directory
from .config import DirectoryConfig
from .rebuild import (
    ReplicaEmpty,
    RestoreError,
    RestorePlan,
    apply_plan,
    leave_state,
    list_replica,
    output_exists,
    plan_restore,
)
from .replicate import Replicator
from .storage import ReplicaClient
from .store import Store

log = logging.getLogger(__name__)

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a supervised run ended: the child's exit code, and replication's failures."""

    child_code: int
    failures: list[tuple[Path, BaseException]]


def restore_if_missing(db: Path, clients: Sequence[ReplicaClient]) -> RestorePlan | None:
    """Restore `db` from the first replica holding data, unless it exists; None if nothing was restored."""
    if output_exists(db):
        return None
    for client in clients:
        try:
            listing = list_replica(client)
            plan = plan_restore(listing.objects, sizes=listing.sizes, now_us=time.time_ns() // 1000)
        except ReplicaEmpty:
            continue
        db.parent.mkdir(parents=True, exist_ok=True)
        leave_state(db, plan, apply_plan(client, plan, db))
        log.info("restored %s from %s: generation %016x, txid %d", db, client.url, plan.generation, plan.txid)
        return plan
    log.info("%s does not exist and no replica holds data: the app starts with a new database", db)
    return None


def restore_directory_if_empty(config: DirectoryConfig) -> int:
    """A directory of databases that holds none (a fresh disk) is restored whole from the first replica that
    holds any; returns how many. A directory with databases is left alone: a tenant deleted on purpose keeps
    its replica (store.py), and must not come back at the next boot."""
    if directory.scan(config):
        return 0
    for url in config.replicas:
        done = directory.restore_all(url, config.dir, if_db_not_exists=True)
        if done.failed:
            name, exc = done.failed[0]
            raise RestoreError(f"{url}: cannot restore {name} into {config.dir}: {exc}")
        if done.restored:
            log.info("restored %d databases into %s from %s", len(done.restored), config.dir, url)
            return len(done.restored)
    log.info("%s holds no databases and no replica holds any: the app starts with none", config.dir)
    return 0


def exit_code_of(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Supervisor:
    """Runs `command` as the child while the store follows its databases (see the module docstring)."""

    def __init__(self, store: Store, command: Sequence[str]) -> None:
        self.store = store
        self.replicators: list[Replicator] = store.replicators
        self.command = list(command)
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self._failures: list[tuple[Path, BaseException]] = []
        self._replication = threading.Thread(target=self._replicate, name="replication")

    def run(self) -> Outcome:
        for r in self.replicators:
            restore_if_missing(r.db_path, r.clients)
        for tenants in self.store.directories:
            restore_directory_if_empty(tenants)
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED}
        try:
            self._replication.start()
            if not self._wait_until_following() or self.stopping:
                self.store.stop()
                self._replication.join()
                return Outcome(0, self._failures)
            # Its own process group: a Ctrl-C in a terminal reaches it once, through us, not twice.
            self.child = subprocess.Popen(self.command, process_group=0)
            log.info("started the app (PID %d): %s", self.child.pid, " ".join(self.command))
            code = self._wait_for_child()
            log.info("the app exited with code %d; shipping what it committed", code)
            self.store.stop()
            self._replication.join()
            return Outcome(code, self._failures)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _replicate(self) -> None:
        self._failures.extend(self.store.run())

    def _wait_until_following(self) -> bool:
        """Step 2: every database followed (or waited for); False if replication failed first."""
        while not all(r.following.wait(0.05) for r in self.replicators):
            if not self._replication.is_alive():
                return False
        return True

    def _forward(self, sig: int, _frame: object) -> None:
        if self.child is not None and self.child.returncode is None:
            try:
                os.kill(self.child.pid, sig)
            except ProcessLookupError:
                pass
        elif sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True  # before the app started: just stop
            self.store.stop()

    def _wait_for_child(self) -> int:
        """The child's exit code; reaps orphans as PID 1; stops the child if replication fails."""
        assert self.child is not None
        told = False
        while True:
            status = self._reap()
            if status is not None:
                return status
            if not self._replication.is_alive() and not told:
                log.error("replication failed while the app runs: stopping the app (SIGTERM)")
                self.child.send_signal(signal.SIGTERM)
                told = True
            time.sleep(0.05)

    def _reap(self) -> int | None:
        """The child's exit code once it has exited. As PID 1, every other dead process is reaped too."""
        assert self.child is not None
        if os.getpid() != 1:
            code = self.child.poll()
            return None if code is None else (128 - code if code < 0 else code)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            if pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                return exit_code_of(status)
            log.debug("reaped orphan PID %d", pid)
