"""Shared fixtures: S3 servers over real HTTP (moto, Ceph RGW, optionally any other), one client per backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import boto3
import harness
import pytest
import rgw

from replicator.storage import FileClient, MemoryClient, MeteredClient, ReplicaClient
from replicator.storage.s3 import S3Client

MOTO_CREDENTIALS = ("testing", "testing")


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint the tests may create buckets on."""

    name: str
    endpoint: str | None  # None: boto3's default (AWS itself)
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    bucket: str | None = None  # set for an external server: use this bucket, under a fresh prefix per test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """A moto S3 server in its own process on 127.0.0.1, stopped by PID at the end of the session."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield S3Server("moto", endpoint, *MOTO_CREDENTIALS)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[S3Server]:
    """Ceph's RADOS Gateway on a throwaway single-node cluster (tests/rgw.py).

    Skipped when Ceph is not installed, except under CI (CI=true), where a missing tier is a failure.
    """
    missing = rgw.missing_binaries()
    if missing:
        required_or_skip(f"radosgw tier needs Ceph ({', '.join(missing)} not found): {rgw.INSTALL_HINT}")
    cluster = rgw.RgwCluster().start()
    try:
        yield S3Server("rgw", cluster.endpoint, cluster.access_key, cluster.secret_key)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def external_server() -> S3Server:
    """Any S3 endpoint, real AWS included, named by REPLICATOR_TEST_S3_* variables (see README)."""
    bucket = os.environ.get("REPLICATOR_TEST_S3_BUCKET")
    if not bucket:
        pytest.skip("set REPLICATOR_TEST_S3_BUCKET (and _ENDPOINT, _ACCESS_KEY, _SECRET_KEY) to test another S3")
    return S3Server(
        "external",
        os.environ.get("REPLICATOR_TEST_S3_ENDPOINT") or None,
        os.environ.get("REPLICATOR_TEST_S3_ACCESS_KEY", ""),
        os.environ.get("REPLICATOR_TEST_S3_SECRET_KEY", ""),
        os.environ.get("REPLICATOR_TEST_S3_REGION", "us-east-1"),
        bucket,
    )


# The external tier exists only when configured, so a normal run does not list dozens of skips.
S3_SERVERS = ["moto", "rgw"] + (["external"] if os.environ.get("REPLICATOR_TEST_S3_BUCKET") else [])


@pytest.fixture(params=S3_SERVERS)
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    return server


def point_boto3_at(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make boto3's credential chain find this server's keys (or the user's own chain, if none are given)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    if server.access_key:
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", server.region)


@dataclass(frozen=True)
class S3Location:
    server: S3Server
    bucket: str
    prefix: str

    def client(self, prefix: str | None = None, **kw: Any) -> S3Client:
        return S3Client(self.bucket, self.prefix if prefix is None else prefix, endpoint_url=self.server.endpoint, **kw)


@contextmanager
def fresh_location(server: S3Server) -> Iterator[S3Location]:
    """A new, empty place on a server: a new bucket, or a new prefix in the external one (emptied after)."""
    if server.bucket is None:
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        # A fresh Session: boto3.client() would reuse credentials cached from an earlier server.
        boto3.session.Session().client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=bucket)
        yield S3Location(server, bucket, "some/prefix")
        return
    location = S3Location(server, server.bucket, f"replicator-tests/{uuid.uuid4().hex}")
    try:
        yield location
    finally:
        location.client().delete([o.key for o in location.client().list()])


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    point_boto3_at(s3_server, monkeypatch)


@pytest.fixture
def s3_location(s3_server: S3Server, s3_env: None) -> Iterator[S3Location]:
    with fresh_location(s3_server) as location:
        yield location


@pytest.fixture(params=["memory", "metered", "file", *S3_SERVERS])
def client(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReplicaClient]:
    """Each storage backend in turn; S3 talks HTTP to a real server process, under a non-empty prefix."""
    if request.param == "memory":
        yield MemoryClient()
    elif request.param == "metered":  # the counting wrapper passes everything through unchanged
        yield MeteredClient(MemoryClient())
    elif request.param == "file":
        yield FileClient(tmp_path / "replica")
    else:
        server: S3Server = request.getfixturevalue(f"{request.param}_server")
        point_boto3_at(server, monkeypatch)
        with fresh_location(server) as location:
            yield location.client(list_page_size=7)


@dataclass(frozen=True)
class Replica:
    """A replica as the replicator process sees it (URL + environment) and as the test inspects it."""

    name: str
    url: str
    env: dict[str, str]
    client: ReplicaClient

    def through(self, server: S3Server, endpoint: str, name: str) -> Replica:
        """The same replica reached through another endpoint (a faulty proxy in front of `server`)."""
        return Replica(name, self.url.replace(server.endpoint or "", endpoint), self.env, self.client)


def s3_replica(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    point_boto3_at(server, monkeypatch)
    env = {"AWS_DEFAULT_REGION": server.region}
    if server.access_key:
        env |= {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
    with fresh_location(server) as location:
        url = f"s3://{location.bucket}/{location.prefix}"
        if server.endpoint:
            url += f"?endpoint={server.endpoint}"
        yield Replica(server.name, url, env, location.client())


@pytest.fixture
def file_replica(tmp_path: Path) -> Replica:
    root = tmp_path / "replica"
    return Replica("file", str(root), {}, FileClient(root))


@pytest.fixture
def moto_replica(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    yield from s3_replica(moto_server, monkeypatch)


@pytest.fixture(params=["file", *S3_SERVERS])
def replica(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replica]:
    """Each kind of replica in turn: a directory, moto and Ceph RGW over HTTP (and any configured S3)."""
    if request.param == "file":
        yield request.getfixturevalue("file_replica")
        return
    server: S3Server = request.getfixturevalue(f"{request.param}_server")
    yield from s3_replica(server, monkeypatch)


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """A failing test must not leave its app or replicator running (harness.started)."""
    yield
    harness.stop_leftovers()


def required_or_skip(message: str) -> NoReturn:
    """A tier this machine cannot run: skipped here with the reason, a failure under CI (CI=true)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small file system of its own at `path` (we are root in CI): how the tests fill a disk."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        required_or_skip(f"disk-full tests mount a tmpfs, which needs root: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system holding `directory`; remove the returned file to free it."""
    filler = directory / "filler"
    try:
        f = open(filler, "wb", buffering=0)  # noqa: SIM115 (closed below; unbuffered, so closing has nothing to flush)
    except OSError as exc:  # say what took the room: the test meant to fill it itself
        disk = os.statvfs(directory)
        free = (disk.f_bavail * disk.f_frsize, disk.f_favail)
        raise AssertionError(
            f"{directory} is full already ({exc}; free bytes, inodes {free}): {_sizes(directory)}"
        ) from None
    with f:
        try:
            while True:
                f.write(bytes(64 << 10))
        except OSError:
            pass
    return filler


def _sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def app_db(tmp_path: Path) -> Path:
    """Where the app keeps its database: its own directory, as in a container."""
    (tmp_path / "app").mkdir()
    return tmp_path / "app" / "app.db"


@pytest.fixture
def replicated(tmp_path: Path) -> tuple[Path, FileClient]:
    """A small file replica of a database with a few hundred rows (snapshot + several segments).

    Without compaction, so that a restore reads every object (the tests damage each one in turn).
    """
    (tmp_path / "app").mkdir()
    db = tmp_path / "app" / "app.db"
    replica = tmp_path / "replica"
    repl = harness.Replicator(db, [str(replica)], ("--sync-interval", "100ms", "--compaction", "none")).start()
    harness.Writer(db, tmp_path / "commits.log").start(count=300, rate=600).wait()
    assert repl.stop() == 0, repl.output
    return db, FileClient(replica)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path
