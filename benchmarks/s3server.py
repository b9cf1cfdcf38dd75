"""A moto S3 server in its own process that logs every request, so benchmarks can count what each tool costs.

    with CountingS3() as s3:
        s3.create_bucket("bench")
        s3.reset()
        ...  # run a tool against s3.endpoint
        print(s3.counts(), s3.server_cpu_seconds())

Why a separate process: moto is pure Python, and on a 2-core box it is often the bottleneck of an S3 run. In its
own process it neither competes with the harness for the GIL nor hides its CPU cost, which `server_cpu_seconds()`
reads from /proc. Why count on the server: every tool (boto3, Go SDK v1 and v2) retries, batches and multiparts
differently, so what the object store bills for is only visible where the requests arrive. The completion time is
taken on the server after the last byte of the response has been handed to the socket, so "an object became
visible" can be timed without a polling client (whose LISTs would add their own latency and load).

The child process is `python benchmarks/s3server.py [--port N]`: it prints `PORT <n>` on stdout once it listens,
then serves moto's WSGI app (the same `DomainDispatcherApplication(create_backend_app)` that `moto.server` runs)
with werkzeug's threaded server, wrapped in `CountingMiddleware`. Control endpoints on the same port (bucket names
cannot start with an underscore, so these never collide with S3 paths):

    GET  /_counts[?since=T]   the request log as JSON (entries completed at or after T)
    POST /_reset              clears the log
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, unquote

OPS = ("PUT", "GET", "LIST", "HEAD", "DELETE", "OTHER")
ACCESS_KEY = "bench"
SECRET_KEY = "bench"
REGION = "us-east-1"
STARTUP_TIMEOUT = 60.0  # importing moto + flask takes 1-3 s; much more on a loaded 2-core box
STOP_TIMEOUT = 10.0

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def classify(method: str, path: str, query: str) -> tuple[str, str, str]:
    """(op, bucket, key) of one path-style S3 request.

    The classes follow what S3 bills for: LIST is any bucket-level GET (ListObjects[V2], and the rare
    GetBucketLocation/versioning reads, which are billed as LIST-class too); PUT covers every upload request
    including CreateMultipartUpload, UploadPart, CompleteMultipartUpload and CopyObject; POST ?delete
    (DeleteObjects) counts as DELETE, like a single DELETE. Every tool here is configured for path-style
    addressing, so the bucket is the first path segment.
    """
    bucket, _, key = path.lstrip("/").partition("/")
    bucket, key = unquote(bucket), unquote(key)
    params = parse_qs(query, keep_blank_values=True)
    if method == "GET":
        op = "LIST" if not key or "list-type" in params else "GET"
        if op == "LIST":
            key = params.get("prefix", [""])[0]  # what was listed: tells whose request it was
    elif method == "POST":
        op = "DELETE" if "delete" in params else "PUT"
    elif method == "PUT":
        op = "PUT"
    elif method in ("HEAD", "DELETE"):
        op = method
    else:
        op = "OTHER"
    return op, bucket, key


class _CountingInput:
    """Wraps wsgi.input to count the request body bytes actually read (chunked uploads have no Content-Length)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int | None = -1) -> bytes:
        data = self._stream.read(-1 if size is None else size)
        self.count += len(data)
        return data

    def readline(self, size: int | None = -1) -> bytes:
        data = self._stream.readline(-1 if size is None else size)
        self.count += len(data)
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines = self._stream.readlines(hint)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line


class _CountingBody:
    """The response iterable: counts bytes out and logs the request when the server closes it.

    werkzeug calls close() after the last chunk has been written to the socket (or the client went away), which
    is the moment the request is complete as far as the server can tell.
    """

    def __init__(self, inner: Iterable[bytes], finish: Callable[[int], None]) -> None:
        self._inner = inner
        self._finish = finish
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self._sent)


class CountingMiddleware:
    """Logs one dict per S3 request into an in-memory list and serves the control endpoints.

    Appending to a list is atomic under the GIL, so request threads need no lock; the cost per request is a
    handful of microseconds next to moto's milliseconds.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.entries: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_"):
            return self._control(path, environ, start_response)
        arrived = time.time()
        method = environ.get("REQUEST_METHOD", "")
        op, bucket, key = classify(method, path, environ.get("QUERY_STRING", ""))
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        counting = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counting
        status: list[int] = [0]

        def record_status(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(status_line.split(" ", 1)[0])
            return start_response(status_line, headers, exc_info)

        def finish(sent: int) -> None:
            self.entries.append(
                {
                    "op": op,
                    "method": method,
                    "bucket": bucket,
                    "key": key,
                    "range": environ.get("HTTP_RANGE", ""),
                    "status": status[0],
                    "bytes_in": max(declared, counting.count),
                    "bytes_out": sent,
                    "arrived": arrived,
                    "done": time.time(),
                }
            )

        return _CountingBody(self.app(environ, record_status), finish)

    def _control(self, path: str, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        if path == "/_counts" and method == "GET":
            since = parse_qs(environ.get("QUERY_STRING", "")).get("since")
            entries = list(self.entries)  # a snapshot: request threads keep appending
            if since:
                cutoff = float(since[-1])
                entries = [e for e in entries if e["done"] >= cutoff]
            body = json.dumps(entries).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/_reset" and method == "POST":
            self.entries.clear()
            start_response("204 No Content", [])
            return []
        start_response("404 Not Found", [("Content-Length", "0")])
        return []


def serve(port: int) -> None:
    """Child-process entry point: serve counting moto on 127.0.0.1:port (0 = any free port) until SIGTERM."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # One access-log line per request would cost more than the counting itself.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = CountingMiddleware(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.port)  # moto builds some self-referencing URLs from it
    print(f"PORT {server.port}", flush=True)
    sys.stdout = sys.stderr  # nobody drains our stdout pipe after the port line

    parent = os.getppid()

    def watch_parent() -> None:
        """Exit if the harness died without stopping us (we run in our own session, so no SIGINT reaches us)."""
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever()


class CountingS3:
    """Context manager: a counting moto S3 server in a child process, on a free port of 127.0.0.1."""

    def __init__(self, *, stderr: Path | None = None) -> None:
        """`stderr`: where the server's own messages go (default: inherited, i.e. the harness's stderr)."""
        self._stderr_path = stderr
        self._proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.port = 0

    def __enter__(self) -> CountingS3:
        stderr = open(self._stderr_path, "ab") if self._stderr_path else None
        try:
            self._proc = subprocess.Popen(
                # -P: benchmarks/ must not land on sys.path, where our tools.py could shadow an import of moto's.
                [sys.executable, "-u", "-P", str(Path(__file__).resolve()), "--port", "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C in the harness must not kill S3 under tools still shutting down
            )
        finally:
            if stderr is not None:
                stderr.close()
        try:
            self.port = self._read_port()
        except BaseException:
            self._stop()
            raise
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def _read_port(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"moto S3 server did not report its port within {STARTUP_TIMEOUT:.0f} s")
            ready, _, _ = select.select([self._proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self._proc.stdout.fileno(), 256)
                if not chunk:
                    raise RuntimeError(f"moto S3 server exited during start-up (status {self._proc.wait()})")
                line += chunk
        self._proc.stdout.close()
        word, _, number = line.decode().strip().partition(" ")
        if word != "PORT":
            raise RuntimeError(f"unexpected start-up line from the moto S3 server: {line!r}")
        return int(number)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        """terminate() then kill() by PID: the server lives in its own session, so nothing else will stop it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()

    @property
    def pid(self) -> int:
        """PID of the server process, for harnesses that sample it themselves (RSS, CPU)."""
        assert self._proc is not None, "use CountingS3 as a context manager"
        return self._proc.pid

    def _request(self, method: str, path: str) -> bytes:
        with urllib.request.urlopen(urllib.request.Request(self.endpoint + path, method=method), timeout=60) as r:
            data: bytes = r.read()
            return data

    def create_bucket(self, name: str) -> None:
        """Create a bucket through the S3 API itself (so moto's own state is used); it is logged as one PUT."""
        import boto3

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        client.create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every request logged so far (the bucket contents stay)."""
        self._request("POST", "/_reset")

    def log(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every logged request in completion order.

        Each: op, method, bucket, key, range, status, bytes_in, bytes_out, arrived and done (epoch s).
        """
        entries: list[dict[str, Any]] = json.loads(
            self._request("GET", "/_counts" + (f"?since={since!r}" if since else ""))
        )
        return entries

    def counts(self, since: float | None = None) -> dict[str, int]:
        """Requests per op class (all classes present, zeros included), completed at or after `since` (epoch s)."""
        result = dict.fromkeys(OPS, 0)
        for entry in self.log(since):
            result[entry["op"]] += 1
        return result

    def server_cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (its threads included), from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Counting moto S3 server (normally started by CountingS3).")
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args().port)
