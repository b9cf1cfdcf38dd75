"""Real images and containers in tests: podman set up as these machines need it, a Debian base image made
without a registry, and containers that never outlive their test.

- podman: runc and cgroupfs (crun cannot set rlimits here, nor use a hybrid cgroup layout), ulimits no
  higher than the host's hard limits, and image storage of its own under a temporary directory, removed
  at the end of the session with every container and image in it.
- The base image stands in for `python:3.12-slim` (no registry is reachable): Debian bookworm made by
  debootstrap from the mirror apt uses, with python3, its venv module and pip, and the host's extra CA
  certificates, so that pip inside a build trusts what the host's pip trusts. Its filesystem is cached
  as a tarball under /var/tmp/replicator-test-base/, named by a digest of everything that goes into it:
  a machine builds it once (~50 s), later sessions import it (~5 s).
- Containers use the host's network (servers on 127.0.0.1 are reachable from inside) and no volume:
  a new container is a redeploy, on a fresh disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/replicator-test-base:bookworm"
BASE_CACHE = Path("/var/tmp/replicator-test-base")
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
BASE_RECIPE = 1  # bump when the recipe below changes in a way its inputs do not show
EXTRA_CAS = Path("/usr/local/share/ca-certificates")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_HINT = (
    "apt-get install -y --no-install-recommends podman runc slirp4netns fuse-overlayfs uidmap "
    "containernetworking-plugins iptables debootstrap"
)


class PodmanError(RuntimeError):
    """A podman command failed: the message has its command line and what it printed."""


def missing_tools() -> list[str]:
    return [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]


@dataclass(frozen=True)
class Podman:
    """podman with this session's settings (containers.conf, storage); every call goes through here."""

    root: Path

    @classmethod
    def configured(cls, root: Path) -> Podman:
        """Write the settings under `root`: runc, cgroupfs, the host's limits, storage and state in `root`."""
        nofile, nproc = (
            _hard_limit(r, cap) for r, cap in ((resource.RLIMIT_NOFILE, 20000), (resource.RLIMIT_NPROC, 32768))
        )
        (root / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            'log_driver = "k8s-file"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{root / "tmp"}"\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
        )
        return cls(root)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
        }

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def import_base(self, tarball: Path, tag: str = BASE_IMAGE) -> str:
        """The rootfs tarball as an image, with the environment a Docker Hub image has."""
        self("import", "--change", f"ENV PATH={PATH}", "--change", "ENV LANG=C.UTF-8", str(tarball), tag)
        return tag

    def build(self, dockerfile: Path, tag: str, base: str) -> str:
        """Build from the repository's root, FROM `base` instead of the Dockerfile's default; no registry."""
        self(
            "build",
            "--network=host",
            "--pull=never",
            "--build-arg",
            f"BASE={base}",
            "-f",
            str(dockerfile),
            "-t",
            tag,
            str(REPO),
            timeout=600,
        )
        return tag

    def remove_everything(self) -> None:
        """Every container and image of this session's storage, then the storage itself."""
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("rmi", "--all", "--force", check=False)
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def _hard_limit(which: int, cap: int) -> int:
    hard = resource.getrlimit(which)[1]
    return cap if hard == resource.RLIM_INFINITY else min(cap, hard)


def unmount_below(path: Path) -> None:
    """Unmount whatever is mounted at or below `path`, deepest first (overlay layers, a chroot's /proc)."""
    root = str(path.resolve())
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


@dataclass
class Container:
    """A running (or exited) container of this session, by name."""

    podman: Podman
    name: str

    def logs(self) -> str:
        done = self.podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = self.podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return done.stdout.strip() == "true"

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM (`podman stop`), SIGKILL after `timeout` seconds; the exit code."""
        self.podman("stop", "--time", str(timeout), self.name, timeout=timeout + 60)
        return self.exit_code()

    def kill(self) -> None:
        """SIGKILL, as a host failure or an out-of-memory kill would do it."""
        self.podman("kill", "--signal", "KILL", self.name)
        self.exit_code()

    def exit_code(self) -> int:
        return int(self.podman("wait", self.name, timeout=120).stdout.strip())


@contextmanager
def container(
    podman: Podman, image: str, *args: str, env: Mapping[str, str] | None = None, entrypoint: str | None = None
) -> Iterator[Container]:
    """A new container (host network, no volume), removed at the end; its logs are printed if the body fails."""
    name = f"replicator-test-{uuid.uuid4().hex[:12]}"
    options = [f"--env={key}={value}" for key, value in (env or {}).items()]
    if entrypoint is not None:
        options.append(f"--entrypoint={entrypoint}")
    try:
        podman("run", "--detach", "--name", name, "--network=host", *options, image, *args)
        running = Container(podman, name)
        try:
            yield running
        except BaseException:
            print(f"\n--- podman logs {name} ---\n{running.logs()}--- end of logs ---")
            raise
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def run_to_end(podman: Podman, image: str, *args: str, entrypoint: str | None = None) -> tuple[int, str]:
    """Run a container to its end: (exit code, everything it printed)."""
    with container(podman, image, *args, entrypoint=entrypoint) as one:
        return one.exit_code(), one.logs()


def debian_mirror() -> str:
    """The Debian mirror that apt uses here (deb822 `.sources` or one-line `.list`), else deb.debian.org."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#")
            )
            if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        for line in path.read_text().splitlines() if path.exists() else []:
            words = [w for w in line.split() if not w.startswith("[")] if line.startswith("deb ") else []
            if len(words) >= 3 and words[2] == SUITE:
                return words[1]
    return "http://deb.debian.org/debian"


def base_tarball(cache: Path = BASE_CACHE) -> Path:
    """The base image's filesystem as a tar: taken from the cache, or made with debootstrap and cached."""
    mirror, cas = debian_mirror(), sorted(EXTRA_CAS.glob("*.crt"))
    recipe = [BASE_RECIPE, SUITE, mirror, BASE_PACKAGES, [(ca.name, _sha256(ca.read_bytes())) for ca in cas]]
    tarball = cache / f"debian-{SUITE}-{_sha256(json.dumps(recipe).encode())[:16]}.tar"
    if tarball.exists():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=cache, prefix="building-"))
    try:
        rootfs = work / "rootfs"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror])
        for ca in cas:  # the host's extra CAs (a TLS proxy's): pip inside a build must trust them too
            shutil.copy(ca, rootfs / "usr/local/share/ca-certificates" / ca.name)
        _run(["chroot", str(rootfs), "update-ca-certificates"])
        _run(["chroot", str(rootfs), "apt-get", "clean"])
        for leftover in ("var/lib/apt/lists", "tmp"):
            shutil.rmtree(rootfs / leftover)
            (rootfs / leftover).mkdir()
        (rootfs / "tmp").chmod(0o1777)
        _run(["tar", "-C", str(rootfs), "-cf", str(work / "rootfs.tar"), "."])
        os.replace(work / "rootfs.tar", tarball)  # atomic: a concurrent session sees all of it or nothing
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: Sequence[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{(done.stdout + done.stderr)[-3000:]}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready()` every 0.1 s until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
