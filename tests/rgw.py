"""A throwaway Ceph cluster with the RADOS Gateway, for running the S3 tests against a real S3 server.

One monitor, one memstore OSD and radosgw (beast) on free 127.0.0.1 ports, `auth = none`, everything under
one temporary directory, no systemd. start() takes ~13 s; stop() ends exactly the daemons it started (by
PID) and removes the directory. Settings and why each is needed: ../shared/research/ceph-rgw.md.

    python tests/rgw.py     # start a cluster, print its endpoint and keys, wait for Ctrl-C
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
INSTALL_HINT = "apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common"

_CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail crit = 1
osd crush chooseleaf type = 0
run dir = {dir}/run
log file = {dir}/log/$name.log
admin socket = {dir}/run/$name.asok
pid file = {dir}/run/$name.pid

[mon]
mon data = {dir}/mon/$cluster-$id

[osd]
osd data = {dir}/osd/$cluster-$id
osd objectstore = memstore
memstore device bytes = {memstore_bytes}

# radosgw's built-in defaults insist on cephx and a secure mon channel: it would hang at start-up.
[client]
ms mon client mode = crc
auth client required = none

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw thread pool size = 64
rgw data = {dir}/rgw
# Free overwritten/deleted data within a minute, not 2 h: memstore keeps it in RAM.
rgw gc obj min wait = 30
rgw gc processor period = 30
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


@dataclass
class RgwCluster:
    memstore_bytes: int = 2 << 30
    rgw_options: str = ""  # more lines for [client.rgw.a], e.g. benchmarks' usage log
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rgw-")))
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    def admin(self, *args: str) -> str:
        """radosgw-admin's output for `args`."""
        return self._run("radosgw-admin", *args)

    def _run(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [*args, "-c", str(self.conf)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "CEPH_CONF": str(self.conf)},
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return done.stdout

    def _daemon(self, *args: str) -> None:
        log = open(self.dir / "log" / f"{args[0]}.out", "wb")  # noqa: SIM115 - lives as long as the daemon
        proc = subprocess.Popen(
            [*args, "-c", str(self.conf), "-f"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CEPH_CONF": str(self.conf)},
            start_new_session=True,  # a Ctrl-C in the test run does not reach it; stop() does
        )
        log.close()
        self._procs.append(proc)

    def start(self, timeout: float = 90) -> RgwCluster:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        for sub in ("run", "log", "mon", "osd", "rgw"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        mon_port, rgw_port = _free_port(), _free_port()
        self.conf.write_text(
            _CONF.format(
                fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, dir=self.dir, memstore_bytes=self.memstore_bytes
            )
            + self.rgw_options
        )
        deadline = time.monotonic() + timeout

        monmap = str(self.dir / "monmap")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap)
        self._daemon("ceph-mon", "-i", "a")

        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "--connect-timeout", "30", "osd", "new", osd_uuid).strip()
        (self.dir / "osd" / f"ceph-{osd_id}").mkdir()
        self._run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._daemon("ceph-osd", "-i", osd_id)

        self._daemon("radosgw", "-n", "client.rgw.a")
        self.endpoint = f"http://127.0.0.1:{rgw_port}"
        self._wait_for_http(deadline)

        self.access_key = secrets.token_hex(10).upper()
        self.secret_key = secrets.token_hex(20)
        self._run(
            "radosgw-admin",
            "user",
            "create",
            "--uid=replicator-tests",
            "--display-name=replicator tests",
            f"--access-key={self.access_key}",
            f"--secret-key={self.secret_key}",
        )

    def _wait_for_http(self, deadline: float) -> None:
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; logs in {self.dir}/log")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means rgw is serving
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"radosgw did not answer on {self.endpoint}; logs in {self.dir}/log") from None
                time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM each daemon we started, SIGKILL any that lingers, then remove the directory."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    cluster = RgwCluster().start()
    print(f"AWS_ENDPOINT_URL={cluster.endpoint}")
    print(f"AWS_ACCESS_KEY_ID={cluster.access_key}")
    print(f"AWS_SECRET_ACCESS_KEY={cluster.secret_key}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
