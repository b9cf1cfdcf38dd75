"""Running the real thing in tests: the app (apps/writer.py) and `replicator replicate`, each a process."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from replicator import keys
from replicator.config import DatabaseConfig, DirectoryConfig, Settings, database_from_environment, read_config
from replicator.keys import ObjectKey, SnapshotKey
from replicator.rebuild import apply_plan, list_replica, plan_restore, restore
from replicator.storage import ReplicaClient

WRITER = Path(__file__).parent / "apps" / "writer.py"
_RUNNING: list[subprocess.Popen[Any]] = []
P = TypeVar("P", bound="subprocess.Popen[Any]")


def started(proc: P) -> P:
    """Remember a process so that `stop_leftovers` ends it if its test fails before stopping it."""
    _RUNNING.append(proc)
    return proc


def stop_leftovers() -> None:
    """Kill (by PID) every process a test started and left running; conftest calls it after each test."""
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@dataclass
class Writer:
    """The app: a separate process writing numbered rows with stdlib sqlite3."""

    db: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, count: int, *, rate: float = 200.0, start: int = 1, **options: int | str) -> Writer:
        extra = [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]
        args = [sys.executable, str(WRITER), str(self.db), "--rate", str(rate), "--count", str(count)]
        self.proc = started(subprocess.Popen([*args, "--start", str(start), "--log", str(self.log), *extra]))
        return self

    def wait(self, timeout: float = 120) -> None:
        assert self.proc is not None
        assert self.proc.wait(timeout) == 0
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.wait()

    def committed(self) -> list[tuple[int, float]]:
        """(id, commit time) of every row the app saw committed."""
        if not self.log.exists():
            return []
        rows = []
        for line in self.log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                rows.append((int(parts[0]), float(parts[1])))
        return rows


@dataclass
class Replicator:
    """`replicator replicate` as users run it: its own process, apsw inside, stopped by signal."""

    db: Path
    urls: Sequence[str]
    options: Sequence[str] = ("--sync-interval", "200ms")
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self, *, ready_timeout: float = 30) -> Replicator:
        """Start it and wait until it has said something (its signal handlers are in place by then)."""
        target = [str(self.db), *self.urls] if self.urls else []  # else -c, or the environment
        cmd = [sys.executable, "-m", "replicator_cli", "replicate", *target, *self.options]
        self.log = self.db.parent / f"replicator-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = started(
                subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
            )
        deadline = time.monotonic() + ready_timeout
        while not any(said in self.output for said in (" INFO ", '"level": "info"')) and self.proc.poll() is None:
            assert time.monotonic() < deadline, f"replicator did not start:\n{self.output}"
            time.sleep(0.02)
        return self

    @property
    def output(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

    def wait_for(self, text: str, timeout: float = 30) -> None:
        """Until its output says `text` (bounded)."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.05)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code; on 0, every claim of the final lines is checked (`check_claims`)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        if code == 0:
            self.check_claims()
        return code

    def databases(self) -> dict[Path, DatabaseConfig]:
        """What this replicator replicates, read as it reads it (call within its environment)."""
        options = list(self.options)
        if "--dir" in options:  # the databases it said it replicated, under the URL it was given
            directory = DirectoryConfig(
                Path(options[options.index("--dir") + 1]).resolve(),
                [options[-1]],
                Settings(),
                options[options.index("--pattern") + 1] if "--pattern" in options else "*.db",
                "--recursive" in options,
            )
            claimed = [Path(db or gone) for db, gone, _, _ in CLAIM.findall(self.output)]
            return {path: directory.database(path) for path in claimed}
        if "-c" in self.options:
            file = read_config(Path(self.options[list(self.options).index("-c") + 1]))
            found = {d.path.resolve(): d for d in file.databases}
            for db, gone, _, _ in CLAIM.findall(self.output):  # the databases its directories held
                path = Path(db or gone)
                for d in file.directories:
                    if path.is_relative_to(d.dir.resolve()):
                        found[path] = d.database(path)
            return found
        if not self.urls:
            from_env = database_from_environment(self.env)
            assert from_env is not None
            return {from_env[0].resolve(): DatabaseConfig(from_env[0], from_env[1], Settings())}
        return {self.db.resolve(): DatabaseConfig(self.db, list(self.urls), Settings())}

    def check_claims(self) -> None:
        """The property that ties our claim to the truth: "every replica of DB has everything committed
        (generation G, txid N)" means a restore of each of DB's replicas yields exactly G and N."""
        with _environment(self.env):
            databases = self.databases()
            for db, gone_db, generation, txid in CLAIM.findall(self.output):
                config = databases[Path(db or gone_db)]
                for url in config.replicas:
                    client = config.client(url)
                    plan = plan_restore(list_replica(client).objects)
                    with tempfile.TemporaryDirectory() as tmp:
                        apply_plan(client, plan, Path(tmp) / "claim.db")
                    got = (plan.generation, plan.txid)
                    claim = (int(generation, 16), int(txid))
                    assert got == claim, f"{url} restores {got}, not the claim\n{self.output}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.wait()


CLAIM = re.compile(
    r"stopped: (?:every replica of (\S+) has everything committed up to \S+ \("
    r"|(\S+) is gone .*; every replica holds its history up to )generation ([0-9a-f]+), txid (\d+)"
)


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """The replicator process's extra environment (credentials), for a client opened here."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `replicator ARGS` command, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "replicator_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, payload, note FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


def restored_rows(client: ReplicaClient, tmp: Path, **target: int | None) -> list[tuple[object, ...]]:
    """Restore the replica into a fresh file, check it, and return its rows."""
    out = tmp / f"restored-{time.monotonic_ns()}.db"
    restore(client, out, **target)
    conn = sqlite3.connect(out)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    return rows(out)


def inventory(client: ReplicaClient) -> list[ObjectKey]:
    return [keys.parse(o.key) for o in client.list(keys.GENERATIONS)]


def generations(client: ReplicaClient) -> set[int]:
    return {k.generation for k in inventory(client)}


def snapshots(client: ReplicaClient) -> list[SnapshotKey]:
    return [k for k in inventory(client) if isinstance(k, SnapshotKey)]


def wipe_local(db: Path) -> None:
    """What a redeploy does to a container's disk: the database, its WAL and -shm, and our state are gone."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    state = db.parent / f".{db.name}-replicator"
    if state.exists():
        for path in sorted(state.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()  # control.sock is neither file nor directory
        state.rmdir()
