"""What an operator watches (issue 14): Prometheus metrics and /healthz, `replicator status`, JSON logs and the
stall watchdog, from a replicator run as users run it, checked against what the replica holds."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import Replica, S3Server, free_port
from faulty_proxy import FaultyProxy
from harness import Replicator, Writer, cli, inventory
from prometheus_client.parser import text_string_to_metric_families

import replicator
from replicator.history import last_write, started
from replicator.rebuild import plan_restore
from replicator.report import DatabaseStatus, chain_end

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def replicate(db: Path, replica: Replica, *options: str) -> tuple[Replicator, str]:
    """A replicator serving metrics on a free loopback port, and that port's base URL."""
    addr = f"127.0.0.1:{free_port()}"
    options = ("--sync-interval", "200ms", "--metrics-addr", addr, *options)
    return Replicator(db, [replica.url], options, replica.env).start(), f"http://{addr}"


def write(db: Path, count: int, start: int = 1) -> None:
    Writer(db, db.parent / f"commits-{start}.log").start(count=count, rate=300, start=start).wait()


def scrape(base: str) -> Samples:
    """Every sample of /metrics, parsed by prometheus-client's own parser."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def healthz(base: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def eventually(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (callable(check) and check()):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


def test_the_metrics_agree_with_what_the_replica_holds(app_db: Path, replica: Replica) -> None:
    repl, base = replicate(app_db, replica)
    write(app_db, 300)
    replicator.wait(app_db, timeout=30)
    listed = list(replica.client.list("generations/"))  # before the scrape: a compaction may upload meanwhile
    held = set(inventory(replica.client))
    samples = scrape(base)
    end = chain_end(held)
    assert end is not None
    db, url = str(app_db.resolve()), json.loads(cli("status", str(app_db), "--json").stdout)[0]["replicas"][0]["url"]
    assert value(samples, "replicator_database_info", database=db, generation=f"{end[0]:016x}") == 1
    assert value(samples, "replicator_local_txid", database=db) == end[1]
    assert value(samples, "replicator_replicated_txid", database=db, replica=url) == end[1]
    assert value(samples, "replicator_backlog_objects", database=db, replica=url) == 0
    assert value(samples, "replicator_replication_lag_seconds", database=db, replica=url) == 0
    assert value(samples, "replicator_replica_stalled", database=db, replica=url) == 0
    window = (last_write(held) - (started(held) or 0)) / 1e6
    assert value(samples, "replicator_restorable_window_seconds", database=db, replica=url) == pytest.approx(window)
    assert value(samples, "replicator_requests_total", database=db, replica=url, op="put") >= len(held)
    sizes = sum(o.size for o in listed)
    assert value(samples, "replicator_request_bytes_total", database=db, replica=url, op="put") >= sizes
    assert value(samples, "replicator_generations_total", database=db, reason="no_state") == 1
    assert healthz(base) == (200, "ok\n")
    assert repl.stop() == 0, repl.output


def test_a_replica_that_stops_answering_stalls_fails_healthz_and_recovers_once(
    app_db: Path, moto_replica: Replica, moto_server: S3Server
) -> None:
    with FaultyProxy(moto_server.endpoint or "", failure_rate=0.0) as proxy:
        down = moto_replica.through(moto_server, proxy.endpoint, "down")
        repl, base = replicate(app_db, down, "--stall-after", "1s", "--log-format", "json")
        write(app_db, 50)
        replicator.wait(app_db, timeout=30)
        assert healthz(base)[0] == 200
        proxy.failure_rate = 1.0
        write(app_db, 50, start=51)
        eventually(lambda: healthz(base)[0] == 503, timeout=20)
        text = healthz(base)[1]
        assert text.startswith(f"stalled: {app_db.resolve()} -> s3://")
        samples = scrape(base)
        assert value(samples, "replicator_replica_stalled") == 1 and value(samples, "replicator_stalls_total") == 1
        assert value(samples, "replicator_backlog_objects") > 0
        assert value(samples, "replicator_request_errors_total", op="put", **{"class": "transient"}) > 0
        stalled = replicator.status(app_db).replicas[0]
        assert stalled.stalled_since is not None and "503" in (stalled.last_error or "")
        proxy.failure_rate = 0.0
        eventually(lambda: healthz(base) == (200, "ok\n"), timeout=60)
        assert value(scrape(base), "replicator_replica_stalled") == 0
        assert repl.stop() == 0, repl.output
    lines = [json.loads(line) for line in repl.output.splitlines()]  # every line is one JSON object
    events = [line for line in lines if "event" in line]
    assert [e["event"] for e in events] == ["replica_stalled", "replica_recovered"], events
    assert {e["replica"] for e in events} == {stalled.url} and events[0]["level"] == "warning"
    assert all(e["database"] == str(app_db.resolve()) for e in events)


def test_status_reports_a_running_replicator_and_reads_a_stopped_one_offline(
    app_db: Path, moto_replica: Replica
) -> None:
    repl, _ = replicate(app_db, moto_replica)
    write(app_db, 100)
    position = replicator.wait(app_db, timeout=30)
    online = cli("status", str(app_db))
    assert online.returncode == 0, online.stderr
    assert f"running (pid {repl.proc.pid if repl.proc else 0})" in online.stdout
    assert f"generation {position.generation:016x}, txid {position.txid}, lag 0.0s" in online.stdout
    live = replicator.status(app_db)
    assert live.running and (live.generation, live.txid) == (position.generation, position.txid)
    assert repl.stop() == 0, repl.output

    done = cli("status", str(app_db), moto_replica.url, "--json", env=moto_replica.env)
    assert done.returncode == 0, done.stderr
    report = DatabaseStatus.from_json(json.loads(done.stdout)[0])
    latest = plan_restore(inventory(moto_replica.client))
    assert not report.running and report.txid == latest.txid
    assert (report.replicas[0].generation, report.replicas[0].txid) == (latest.generation, latest.txid)
    assert report.replicas[0].backlog_objects == 0 and report.replicas[0].lag_seconds == 0
    local_only = cli("status", str(app_db))
    assert local_only.returncode == 0 and "not running (read offline)" in local_only.stdout


def test_status_of_an_unreadable_replica_says_why_and_exits_1(
    app_db: Path, tmp_path: Path, moto_replica: Replica
) -> None:
    Writer(app_db, tmp_path / "commits.log").start(count=1).wait()
    missing = moto_replica.url.replace("s3://test-", "s3://missing-")
    done = cli("status", str(app_db), missing, env=moto_replica.env)
    assert done.returncode == 1 and done.stderr == ""
    assert "nothing restorable" in done.stdout and "last error: list s3://missing-" in done.stdout
    assert "bucket does not exist" in done.stdout


def test_a_metrics_address_in_use_is_one_clear_error(app_db: Path, file_replica: Replica) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("replicate", str(app_db), file_replica.url, "--metrics-addr", f"127.0.0.1:{port}")
    assert done.returncode == 2
    said = f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    assert done.stderr.strip().splitlines()[-1] == said


def test_a_replicator_object_reports_its_childs_status(app_db: Path, file_replica: Replica) -> None:
    with replicator.Replicator(app_db, file_replica.url, sync_interval="100ms", stall_after=30) as running:
        write(app_db, 20)
        position = running.wait(timeout=30)
        report = running.status()
    assert report.running and report.pid != os.getpid()
    assert (report.replicas[0].generation, report.replicas[0].txid) == (position.generation, position.txid)


def test_status_of_a_directory_reads_each_database_at_its_replica_url(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    for name in ("a.db", "b.db"):
        Writer(tenants / name, tmp_path / f"{name}.log").start(count=1).wait()
    done = cli("status", "--dir", str(tenants), str(tmp_path / "replicas"), "--json")
    assert done.returncode == 0, done.stderr
    reports = [DatabaseStatus.from_json(r) for r in json.loads(done.stdout)]
    assert [(Path(r.database).name, [s.url for s in r.replicas]) for r in reports] == [
        (name, [f"file://{tmp_path / 'replicas' / name}"]) for name in ("a.db", "b.db")
    ]
