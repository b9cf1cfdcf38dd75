"""The images, built and run for real with podman, the way users deploy: a container on a disk that vanishes.

Both Dockerfiles are built FROM a local Debian image (tests/containers.py) in place of python:3.12-slim.
Every container uses the host's network (moto and RGW listen on 127.0.0.1) and no volume: a redeploy is a
new container from the same image, configured by environment variables alone, as on a PaaS. Skipped with
one line where podman cannot run; under CI (CI=true) that is a failure. `pytest -s` shows the numbers.
About 170 s on 2 cores with the base image cached (the two builds share their replicator layer: ~20 s),
about 215 s on a machine that has yet to debootstrap it.
"""

from __future__ import annotations

import http.client
import json
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import zstandard
from conftest import S3Location, required_or_skip
from containers import (
    BASE_IMAGE,
    INSTALL_HINT,
    REPO,
    Container,
    Podman,
    PodmanError,
    base_tarball,
    container,
    free_port,
    missing_tools,
    run_to_end,
    wait_until,
)

from replicator.rebuild import restore

pytestmark = pytest.mark.timeout(600)  # the first test also pays for the base image and the builds

SYNC_INTERVAL = 1.0
STOPPED_CLEANLY = "stopped: every replica of /data/app.db has everything committed"


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """podman with its own settings and storage, and the base image imported; all of it removed at the end."""
    missing = missing_tools()
    if missing:
        required_or_skip(f"container tier needs {', '.join(missing)}: {INSTALL_HINT}")
    engine = Podman.configured(Path(tempfile.mkdtemp(prefix="replicator-podman-")))
    try:
        tarball = base_tarball()
        try:
            engine("run", "--rm", "--network=host", engine.import_base(tarball), "true")
        except PodmanError as exc:
            required_or_skip(f"podman cannot run a container here: {str(exc).strip().splitlines()[-1]}")
        yield engine
    finally:
        engine.remove_everything()


@pytest.fixture(scope="session")
def tool_image(podman: Podman) -> Iterator[str]:
    yield from built(podman, REPO / "Dockerfile", "localhost/replicator-test-tool")


@pytest.fixture(scope="session")
def signup_image(podman: Podman) -> Iterator[str]:
    yield from built(podman, REPO / "examples/signup/Dockerfile", "localhost/replicator-test-signup")


def built(podman: Podman, dockerfile: Path, name: str) -> Iterator[str]:
    """The image of `dockerfile`, FROM the local Debian base instead of python:3.12-slim; removed at the end."""
    tag = f"{name}:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    podman.build(dockerfile, tag, BASE_IMAGE)
    print(f"\nbuilt {tag} from {dockerfile.relative_to(REPO)} in {time.monotonic() - started:.1f} s")
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)


# --- the sign-up app, deployed ------------------------------------------------------------------------------


def user(i: int) -> tuple[str, str]:
    return f"user{i:05d}@example.com", f"secret-{i:05d}"


@dataclass
class Signup:
    """The app in one container, over HTTP on 127.0.0.1 (a new connection per request)."""

    container: Container
    port: int

    def post(self, path: str, email: str, password: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            body = json.dumps({"email": email, "password": password})
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def register(self, email: str, password: str) -> int:
        return self.post("/register", email, password)

    def login(self, email: str, password: str) -> int:
        return self.post("/login", email, password)

    def healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()


@dataclass(frozen=True)
class Deployment:
    """The sign-up image on one replica: each boot is a new container, configured by the environment alone."""

    podman: Podman
    image: str
    location: S3Location
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"s3://{self.location.bucket}/{self.location.prefix}"

    def environment(self) -> dict[str, str]:
        server = self.location.server
        env = {
            "REPLICATOR_URL": self.url,
            "REPLICATOR_SYNC_INTERVAL": f"{SYNC_INTERVAL:g}s",
            "AWS_REGION": server.region,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "SCRYPT_LOG2_N": "10",  # cheap hashes: the tests register thousands of users
        }
        if server.endpoint:
            env["AWS_ENDPOINT_URL"] = server.endpoint
        if server.access_key:
            env |= {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}
        return env

    @contextmanager
    def boot(self, port: int | None = None, **env: str) -> Iterator[Signup]:
        """A new container, once its app answers /healthz (the replicator has restored what there was)."""
        port = port or self.port
        with container(self.podman, self.image, env={**self.environment(), "PORT": str(port), **env}) as booted:
            app = Signup(booted, port)
            wait_until(lambda: app.healthy() or not booted.running(), 120, "the app's /healthz")
            assert booted.running(), f"the container exited with {booted.exit_code()}:\n{booted.logs()}"
            yield app


@pytest.fixture
def deployment(podman: Podman, signup_image: str, s3_location: S3Location) -> Deployment:
    return Deployment(podman, signup_image, s3_location)


def register_all(app: Signup, ids: range) -> None:
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: app.register(*user(i)), ids))
    assert codes == [201] * len(ids)


def stop_cleanly(app: Signup) -> str:
    """`podman stop` (SIGTERM): exit 0 and the replicator's final claim; returns the container's logs."""
    code = app.container.stop(timeout=30)
    logs = app.container.logs()
    assert code == 0, logs
    assert STOPPED_CLEANLY in logs, logs
    return logs


@dataclass
class SignupTraffic:
    """A client registering users one after another, noting when each 201 arrived, until it fails or is told."""

    app: Signup
    acknowledged: list[tuple[int, float]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="signups")

    def _run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            try:
                if self.app.register(*user(i)) == 201:
                    self.acknowledged.append((i, time.monotonic()))
            except (OSError, http.client.HTTPException):
                return  # the container is gone
            i += 1

    def __enter__(self) -> SignupTraffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(60)


def objects(location: S3Location) -> dict[str, tuple[int, str]]:
    """Every object of the replica: key -> (size, ETag), so that a rewritten object counts as new."""
    s3 = boto3.session.Session().client("s3", endpoint_url=location.server.endpoint)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=f"{location.prefix}/"):
        for o in page.get("Contents", []):
            found[o["Key"]] = (o["Size"], o["ETag"])
    return found


# --- the tool's image ---------------------------------------------------------------------------------------


def test_the_tool_image_runs_replicator(podman: Podman, tool_image: str) -> None:
    code, output = run_to_end(podman, tool_image, "version")
    assert code == 0, output
    assert output.startswith("replicator ") and "sqlite " in output, output


def test_the_tool_image_shows_its_help_by_default(podman: Podman, tool_image: str) -> None:
    code, output = run_to_end(podman, tool_image)
    assert code == 0, output
    assert "Usage: replicator" in output and "replicate" in output, output


@pytest.mark.parametrize("image", ["tool_image", "signup_image"])
def test_each_image_runs_as_a_non_root_user(podman: Podman, image: str, request: pytest.FixtureRequest) -> None:
    code, output = run_to_end(podman, request.getfixturevalue(image), "-u", entrypoint="id")
    assert code == 0, output
    assert int(output) != 0


# --- the sign-up app on S3 ----------------------------------------------------------------------------------


def test_a_new_container_has_every_user_the_stopped_one_registered(deployment: Deployment) -> None:
    with deployment.boot() as first:
        register_all(first, range(50))
        first_logs = stop_cleanly(first)
    assert "no replica holds data" in first_logs  # a first boot, on an empty bucket

    with deployment.boot() as second:
        assert [second.login(*user(i)) for i in range(50)] == [200] * 50
        assert second.login(user(7)[0], "not-the-password") == 401
        assert "restored /data/app.db" in second.container.logs()
        stop_cleanly(second)


def test_a_killed_container_loses_no_signup_acknowledged_a_sync_interval_before(deployment: Deployment) -> None:
    with deployment.boot() as first, SignupTraffic(first) as traffic:
        time.sleep(6.0)
        killed_at = time.monotonic()
        first.container.kill()  # SIGKILL: no shutdown, no final upload

    old_enough = [i for i, acked in traffic.acknowledged if acked < killed_at - (SYNC_INTERVAL + 1.5)]
    assert len(old_enough) >= 20, f"only {len(traffic.acknowledged)} sign-ups before the kill"
    with deployment.boot() as second:
        lost = [i for i in old_enough if second.login(*user(i)) != 200]
        recent = [i for i, acked in traffic.acknowledged if acked >= killed_at - (SYNC_INTERVAL + 1.5)]
        kept = sum(second.login(*user(i)) == 200 for i in recent)
        print(
            f"\n{len(old_enough)} sign-ups acknowledged over {SYNC_INTERVAL + 1.5} s before the kill, {len(lost)} lost;"
            f" of the {len(recent)} later ones, {kept} survived"
        )
        assert lost == []
        stop_cleanly(second)


def test_a_redeploy_after_a_clean_stop_uploads_far_less_than_the_database(
    deployment: Deployment, tmp_path: Path
) -> None:
    users = 2000
    with deployment.boot() as first:
        register_all(first, range(users))
        stop_cleanly(first)
    before = objects(deployment.location)

    with deployment.boot() as second:
        assert second.register(*user(users)) == 201
        second_logs = stop_cleanly(second)
    after = objects(deployment.location)

    # New or rewritten objects. The yardstick is a full snapshot of the database as it was at the second boot
    # (what a new generation would upload): the first boot's snapshot is of a database the app had only created.
    uploaded = sum(size for key, (size, etag) in after.items() if before.get(key) != (size, etag))
    first_snapshot = sum(size for key, (size, _) in before.items() if key.endswith(".snap"))
    db = tmp_path / "restored.db"
    restore(deployment.location.client(), db)
    database = db.stat().st_size
    full_snapshot = len(zstandard.ZstdCompressor(level=1).compress(db.read_bytes()))
    print(
        f"\nsecond boot uploaded {uploaded} bytes; database {database} bytes; first snapshot {first_snapshot} bytes;"
        f" a full snapshot of the database would be {full_snapshot} bytes"
    )
    print("\n".join(line for line in second_logs.splitlines() if "generation" in line))
    assert uploaded < 0.5 * full_snapshot


def test_an_overlapping_deploy_is_found_by_the_old_container_naming_both_generations(deployment: Deployment) -> None:
    """A "zero-downtime" deploy: the new container boots while the old one still takes sign-ups (docs/DEPLOY.md).
    The old one's late sign-ups are not in the new database: it must say so, loudly, and not exit 0."""
    probe_often = {"REPLICATOR_VERIFY_INTERVAL": "1s"}
    with deployment.boot(**probe_often) as old:
        register_all(old, range(20))
        time.sleep(SYNC_INTERVAL + 1.0)
        with SignupTraffic(old), deployment.boot(port=free_port(), **probe_often) as new:
            register_all(new, range(1000, 1010))
            wait_until(lambda: "SECOND WRITER" in old.container.logs(), 30, "the old container to notice")
            assert old.container.stop(timeout=30) != 0  # its late sign-ups are not restorable: no exit 0
            new_logs = stop_cleanly(new)
        old_logs = old.container.logs()
    line = next(x for x in old_logs.splitlines() if "SECOND WRITER" in x)
    generations = set(GENERATION.findall(new_logs)) | set(GENERATION.findall(old_logs))
    print(f"\nthe old container: {line.split(' ', 2)[2]}")
    assert len(generations) == 2 and all(g in line for g in generations), line

    with deployment.boot() as after:  # the newest generation: the new container's
        assert [after.login(*user(i)) for i in [*range(20), *range(1000, 1010)]] == [200] * 30
        stop_cleanly(after)


GENERATION = re.compile(r"generation ([0-9a-f]{16})")
