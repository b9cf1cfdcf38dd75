"""Prometheus metrics and a health check over HTTP (`--metrics-addr`, litestream.yml's `addr:`).

Rules:
1. Every figure is read at scrape time from the databases' status records (report.py), the same ones
   `replicator status` prints: the metrics and the command cannot disagree, and nothing is counted twice.
2. `/metrics` is Prometheus' text format (prometheus-client); `/healthz` answers 200 while no replica is
   stalled (watchdog.py) and 503 naming the stalled ones otherwise, so a platform's health check follows
   the stall watchdog and recovers with it.
3. Labels are the database's path and the replica's URL as printed elsewhere (never with credentials).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ConfigError
from .report import DatabaseStatus

log = logging.getLogger(__name__)

Reports = Callable[[], Iterable[DatabaseStatus]]


class StatusCollector(Collector):
    """Rule 1: metric families from the status records, built afresh at each scrape."""

    def __init__(self, reports: Reports) -> None:
        self._reports = reports

    def collect(self) -> Iterator[Metric]:
        reports = list(self._reports())
        db, replica = ["database"], ["database", "replica"]

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"replicator_{name}", doc, labels=labels)

        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(f"replicator_{name}", doc, labels=labels)

        info = gauge("database_info", "The generation a database is replicated in (always 1).", [*db, "generation"])
        local_txid = gauge("local_txid", "The last transaction captured locally, in the current generation.", db)
        wal = gauge("wal_bytes", "Size of the database's -wal file.", db)
        generations = counter("generations", "Generations started (each with a snapshot), by reason.", [*db, "reason"])
        checkpoints = counter("checkpoints", "Checkpoints run by the replicator, by result.", [*db, "result"])
        txid = gauge("replicated_txid", "The last transaction the replica provably holds.", replica)
        lag = gauge("replication_lag_seconds", "Age of the oldest captured change the replica lacks.", replica)
        backlog = gauge("backlog_objects", "Objects spooled locally that the replica has yet to take.", replica)
        backlog_bytes = gauge("backlog_bytes", "Bytes spooled locally that the replica has yet to take.", replica)
        uploaded = gauge(
            "last_upload_timestamp_seconds", "Unix time of the replica's last acknowledged upload.", replica
        )
        window = gauge("restorable_window_seconds", "From the replica's earliest snapshot to its last write.", replica)
        stalled = gauge("replica_stalled", "1 while the replica is stalled (the stall watchdog), else 0.", replica)
        refused = gauge("replica_refused", "1 if nothing is shipped to the replica (another's replica).", replica)
        stalls = counter("stalls", "Stalls of the replica that the watchdog told.", replica)
        requests = counter("requests", "Requests to the replica, retries included, by operation.", [*replica, "op"])
        sent = counter("request_bytes", "Bytes written (put) or read (get) by requests.", [*replica, "op"])
        errors = counter("request_errors", "Failed requests, by operation and class.", [*replica, "op", "class"])
        for r in reports:
            d = r.database
            if r.generation is not None:
                info.add_metric([d, f"{r.generation:016x}"], 1)
            if r.txid is not None:
                local_txid.add_metric([d], r.txid)
            if r.wal_bytes is not None:
                wal.add_metric([d], r.wal_bytes)
            for reason, n in r.generations.items():
                generations.add_metric([d, reason], n)
            for result, n in r.checkpoints.items():
                checkpoints.add_metric([d, result], n)
            for rep in r.replicas:
                labels = [d, rep.url]
                for family, value in (
                    (txid, rep.txid),
                    (lag, rep.lag_seconds),
                    (backlog, rep.backlog_objects),
                    (backlog_bytes, rep.backlog_bytes),
                    (uploaded, rep.last_upload),
                    (window, rep.window_seconds),
                ):
                    if value is not None:
                        family.add_metric(labels, value)
                stalled.add_metric(labels, 0 if rep.stalled_since is None else 1)
                refused.add_metric(labels, 0 if rep.refused is None else 1)
                stalls.add_metric(labels, rep.stalls)
                for op, n in rep.requests.items():
                    requests.add_metric([*labels, op], n)
                for op, n in rep.bytes.items():
                    sent.add_metric([*labels, op], n)
                for key, n in rep.errors.items():
                    op, kind = key.split("/", 1)
                    errors.add_metric([*labels, op, kind], n)
        yield from (info, local_txid, wal, generations, checkpoints, txid, lag, backlog, backlog_bytes, uploaded)
        yield from (window, stalled, refused, stalls, requests, sent, errors)


def health(reports: Iterable[DatabaseStatus]) -> tuple[bool, str]:
    """Rule 2: healthy or not, and the text that says why."""
    stalled = [(r.database, s.url) for r in reports for s in r.stalled]
    if not stalled:
        return True, "ok\n"
    return False, "".join(f"stalled: {db} -> {url}\n" for db, url in stalled)


def parse_addr(addr: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, or :PORT for every interface (Litestream's `addr: ":9090"`)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics address {addr!r} is not HOST:PORT (e.g. 127.0.0.1:9090 or :9090)")
    host = host.strip("[]") or "0.0.0.0"  # ':9090' is every interface, as in Litestream
    return host, int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


class MetricsServer:
    """Serves `/metrics` and `/healthz` on `addr` from `reports`, on a thread of its own, until `close`."""

    def __init__(self, addr: str, reports: Reports) -> None:
        host, port = parse_addr(addr)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(reports))
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                ok, text = health(reports())
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [text.encode()]
            if path in ("/metrics", "/"):
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics or /healthz\n"]

        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {addr}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> None:
        self._thread.start()
        log.info("serving metrics on %s/metrics and a health check on %s/healthz", self.url, self.url)

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
