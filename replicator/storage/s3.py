"""S3 and S3-compatible stores (AWS, MinIO, R2, B2, Ceph RGW) through botocore.

Endpoint, region and credentials come from boto3's usual chain (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, profiles, instance roles...), or from `?endpoint=`/`?region=` on the replica URL.
botocore's own retries are switched off: RetryingClient is the single place that retries, and this module
only classifies each failure as not-found, permanent or transient.

boto3 (and its s3transfer, ~0.1 s of imports) is loaded only for the first multipart upload: restore runs in
the app's entrypoint, where start-up is boot time, and never uploads.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import botocore.exceptions
import botocore.handlers
import botocore.session
from botocore.config import Config

from ..errors import (
    ConfigError,
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from .base import Body, ObjectInfo, Readable, ReplicaOptions, check_key

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from mypy_boto3_s3 import S3Client as Boto3S3Client

DELETE_BATCH = 1000  # S3's limit per DeleteObjects; Ceph RGW answers 400 above it
_MULTIPART_THRESHOLD = 64 << 20
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "ExpiredToken",
}


class S3Client:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        list_page_size: int = 1000,
        client: Boto3S3Client | None = None,
        options: ReplicaOptions | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._page_size = list_page_size
        self._client = client or _make_client(endpoint_url, region, options or ReplicaOptions())
        self._multipart_threshold = _MULTIPART_THRESHOLD  # a plain number: comparing with it loads no boto3

    @functools.cached_property
    def _transfer(self) -> TransferConfig:
        """8 MiB parts allow 80 GB objects (10 000 parts). Uploads from a file object copy parts into memory first:
        at most 4 of them (the default, 10, costs 80 MiB+ of RSS). Files still at their path go by name instead."""
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=self._multipart_threshold, multipart_chunksize=8 << 20, max_concurrency=4
        )
        transfer.max_in_memory_upload_chunks = 4  # s3transfer's setting; boto3's constructor lacks it
        return transfer

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            args["StartAfter"] = self.prefix + start_after
        if limit is None:
            pages = paginator.paginate(**args, PaginationConfig={"PageSize": self._page_size})
        else:  # one request when the limit fits in a page
            page_size = max(1, min(limit, self._page_size))
            pages = paginator.paginate(**args, PaginationConfig={"PageSize": page_size, "MaxItems": limit})
        with _classified(f"list {self.url}{prefix}"):
            found = [
                ObjectInfo(obj["Key"][len(self.prefix) :], obj["Size"])
                for page in pages
                for obj in page.get("Contents", [])
            ]
        return iter(found)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self.prefix + check_key(key),
        }
        if length == 0:
            return b""
        if offset or length is not None:
            args["Range"] = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        with _classified(f"get {self.url}{key}"):
            try:
                response = self._client.get_object(**args)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "InvalidRange":  # offset at or past the end
                    return b""
                raise
            body: bytes = response["Body"].read()
            return body

    def stream(self, key: str, offset: int = 0) -> Readable:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + check_key(key)}
        if offset:
            args["Range"] = f"bytes={offset}-"
        what = f"get {self.url}{key}"
        with _classified(what):
            try:
                body = self._client.get_object(**args)["Body"]
            except botocore.exceptions.ClientError as exc:
                if _code(exc) == "InvalidRange":
                    return io.BytesIO(b"")
                raise
        return _ClassifiedStream(body, what)

    def put(self, key: str, body: Body) -> None:
        full = self.prefix + check_key(key)
        with _classified(f"put {self.url}{key}"):
            if not isinstance(body, bytes):
                start = body.tell()
                size = body.seek(0, io.SEEK_END) - start
                body.seek(start)
                if size > self._multipart_threshold:
                    from boto3.s3.inject import upload_file, upload_fileobj  # boto3's methods, on our client

                    path = _same_file_path(body)
                    if path is not None and start == 0:
                        # By name, s3transfer reads each part from the file as it sends it; from a file object it
                        # copies parts into memory first (measured: +11 MB RSS vs +75 MB for a 130 MB upload).
                        upload_file(self._client, path, self.bucket, full, Config=self._transfer)
                    else:
                        # s3transfer closes the file it reads: lend it one that cannot close ours.
                        lent = cast(IO[Any], _Lent(body))
                        upload_fileobj(self._client, lent, self.bucket, full, Config=self._transfer)
                    return
                body = body.read()
            self._client.put_object(Bucket=self.bucket, Key=full, Body=body)

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        full = self.prefix + check_key(key)
        with _classified(f"put {self.url}{key}"):
            try:
                current = self._client.get_object(Bucket=self.bucket, Key=full)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    return False
                raise
            if current["Body"].read() != expected:
                return False
            # The ETag unquoted: Ceph RGW refuses a quoted one even when it matches; AWS and MinIO take both.
            etag = current["ETag"].strip('"')
            try:
                self._client.put_object(Bucket=self.bucket, Key=full, Body=body, IfMatch=etag)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                raise
            return True

    def delete(self, keys: Iterable[str]) -> None:
        batch = [self.prefix + check_key(k) for k in keys]
        for i in range(0, len(batch), DELETE_BATCH):
            chunk = batch[i : i + DELETE_BATCH]
            with _classified(f"delete {len(chunk)} objects from {self.url}"):
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise TransientStorageError(
                    f"delete from {self.url}: {len(errors)} objects not deleted, "
                    f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )

    def exists(self, key: str) -> bool:
        with _classified(f"head {self.url}{key}"):
            try:
                self._client.head_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in _NOT_FOUND:
                    return False
                raise
        return True


class _ClassifiedStream:
    """A response body whose read errors come out as storage errors (so callers can resume)."""

    def __init__(self, body: Any, what: str) -> None:
        self._body = body
        self._what = what

    def read(self, size: int = -1) -> bytes:
        with _classified(self._what):
            data: bytes = self._body.read(None if size < 0 else size)
            return data


def _same_file_path(body: BinaryIO) -> str | None:
    """The path `body` was opened from, if that path still names the very same regular file."""
    name = getattr(body, "name", None)
    try:
        if isinstance(name, str) and os.path.samestat(os.fstat(body.fileno()), os.stat(name)):
            return name
    except (OSError, AttributeError, io.UnsupportedOperation):
        pass
    return None


class _Lent(io.RawIOBase):
    """A borrowed, seekable file whose close() leaves the owner's file open."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def close(self) -> None:
        pass


_clients: dict[tuple[str | None, str | None, ReplicaOptions, tuple[str | None, ...]], Boto3S3Client] = {}
_clients_lock = threading.Lock()
# What boto3 reads from the environment when a client is made: a change makes a new client (tests do it).
_ENVIRONMENT = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CA_BUNDLE",
)


def _make_client(endpoint_url: str | None, region: str | None, options: ReplicaOptions) -> Boto3S3Client:
    """One boto3 client (one connection pool) per endpoint, region and credentials, however many databases
    use it: boto3 clients are thread-safe, and each costs megabytes and its own connections."""
    key = (endpoint_url, region, options, tuple(os.environ.get(name) for name in _ENVIRONMENT))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(endpoint_url, region, options)
        return client


def _new_client(endpoint_url: str | None, region: str | None, options: ReplicaOptions) -> Boto3S3Client:
    custom_endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    config = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=32,  # shared by every database and upload thread of the process
        # Path-style addressing for custom endpoints (MinIO, Ceph, moto on an IP address).
        s3={"addressing_style": "path"} if custom_endpoint else {},
        # Only send checksums when required: R2 and older S3-compatibles reject the newer defaults.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        session = botocore.session.Session()
        if options.access_key_id or options.secret_access_key:
            session.set_credentials(options.access_key_id or "", options.secret_access_key or "")
        client = cast(
            "Boto3S3Client",
            session.create_client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=config,
                verify=False if options.skip_verify else None,
            ),
        )
    except botocore.exceptions.BotoCoreError as exc:  # AWS_PROFILE naming no profile, a malformed config...
        raise ConfigError(f"cannot set up S3 access: {exc}") from None
    # botocore asks for "Expect: 100-continue" on every upload and waits for the server's go-ahead before
    # sending the body: a round trip (2 ms on loopback moto, an RTT on a real link) on each segment we ship,
    # most of them a few kB. S3 does not need it.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return client


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) or str(
        exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


@contextmanager
def _classified(what: str) -> Iterator[None]:
    """Map botocore failures to ObjectNotFound / PermanentStorageError / TransientStorageError."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        error = classify(what, exc)
        if error is None:
            raise
        raise error from exc


def classify(what: str, exc: BaseException) -> StorageError | None:
    """The storage error for a botocore exception, or None if it is not one we know."""
    boto3_exceptions = sys.modules.get("boto3.exceptions")  # loaded with the first multipart upload
    if boto3_exceptions and isinstance(exc, boto3_exceptions.S3UploadFailedError) and exc.__context__ is not None:
        return classify(what, exc.__context__)  # s3transfer re-raises the ClientError as text
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = str(exc.response.get("Error", {}).get("Message", "") or "").strip()
        detail = f"{code} {message}".strip() if message and message != code else code
        if code == "NoSuchBucket":
            return PermanentStorageError(f"{what}: bucket does not exist; create it or fix the replica URL")
        if code in _NOT_FOUND:
            return ObjectNotFound(f"{what}: no such object")
        if code in _CREDENTIALS:
            return PermanentStorageError(f"{what}: access denied ({detail}); check the AWS credentials")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return TransientStorageError(f"{what}: {detail} (HTTP {status})")
        return PermanentStorageError(f"{what}: {detail} (HTTP {status})")
    if isinstance(
        exc,
        botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError,
    ):
        return PermanentStorageError(f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and friends")
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return PermanentStorageError(f"{what}: invalid request ({exc})")
    if isinstance(exc, botocore.exceptions.BotoCoreError | ConnectionError | TimeoutError):
        return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    return None
