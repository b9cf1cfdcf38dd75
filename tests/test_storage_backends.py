"""What only one backend does: file atomicity, S3 error classification and multipart, URL parsing."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from conftest import S3Location, S3Server

from replicator.errors import ConfigError, ObjectNotFound, PermanentStorageError, TransientStorageError
from replicator.storage import FileClient, MemoryClient, MeteredClient, RetryingClient, open_client
from replicator.storage.s3 import S3Client, classify


class FailingBody(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        raise OSError("disk on fire")


def test_file_put_that_fails_leaves_nothing_behind(tmp_path: Path) -> None:
    client = FileClient(tmp_path)
    client.put("gen/a", b"old")
    with pytest.raises(TransientStorageError, match="disk on fire"):
        client.put("gen/a", FailingBody())  # type: ignore[arg-type]
    assert client.get("gen/a") == b"old"
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["a"]


def test_file_listing_hides_temporary_files(tmp_path: Path) -> None:
    client = FileClient(tmp_path)
    client.put("gen/a", b"1")
    (tmp_path / "gen" / ".tmp-abc").write_bytes(b"half")
    assert [o.key for o in client.list()] == ["gen/a"]


def test_file_replica_in_an_unwritable_place_is_permanent(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_bytes(b"")
    client = FileClient(tmp_path / "blocker")
    with pytest.raises(PermanentStorageError):
        client.put("gen/a", b"1")


def test_s3_missing_bucket_is_a_clear_permanent_error(s3_server: S3Server, s3_env: None) -> None:
    client = S3Client(f"no-such-bucket-{uuid.uuid4().hex[:8]}", "p", endpoint_url=s3_server.endpoint)
    with pytest.raises(PermanentStorageError, match="bucket does not exist"):
        list(client.list())
    with pytest.raises(PermanentStorageError, match="bucket does not exist"):
        client.put("k", b"1")


def test_s3_missing_key_is_not_found(s3_location: S3Location) -> None:
    with pytest.raises(ObjectNotFound, match="no such object"):
        s3_location.client().get("absent")


def test_s3_wrong_secret_is_a_clear_permanent_error(s3_location: S3Location, monkeypatch: pytest.MonkeyPatch) -> None:
    if s3_location.server.name == "moto":
        pytest.skip("moto accepts any credentials")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(PermanentStorageError, match="check the AWS credentials") as info:
        list(s3_location.client().list())
    assert "not-the-secret" not in str(info.value)


def test_s3_unreachable_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    client = S3Client("bucket", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(TransientStorageError):
        client.get("k")


@pytest.mark.parametrize("source", ["memory", "named file", "renamed file"])
def test_s3_large_upload_goes_multipart_and_reads_back(s3_location: S3Location, tmp_path: Path, source: str) -> None:
    """RGW answers CompleteMultipartUpload with an empty ETag: nothing of ours may depend on it.

    A file still at its path is uploaded by name (bounded memory); one whose path now names something else
    (or nothing) must still be read through the object we were given.
    """
    client = s3_location.client()
    client._multipart_threshold = 5 << 20  # the smallest part S3 accepts (before `_transfer` is made from it)
    client._transfer.multipart_chunksize = 5 << 20
    data = bytes(range(256)) * (11 << 12)  # 11 MiB: three parts
    if source == "memory":
        client.put("big", io.BytesIO(data))
    else:
        path = tmp_path / "spooled"
        path.write_bytes(data)
        with open(path, "rb") as f:
            if source == "renamed file":
                path.rename(tmp_path / "moved")
                path.write_bytes(b"not this")
            client.put("big", f)
    assert client.get("big") == data
    assert client.get("big", 5 << 20, 10) == data[5 << 20 : (5 << 20) + 10]


def test_s3_prefix_is_the_root(s3_location: S3Location) -> None:
    a = s3_location.client(f"{s3_location.prefix}/one")
    b = s3_location.client(f"{s3_location.prefix}/one/two/")
    b.put("k", b"x")
    assert [o.key for o in a.list()] == ["two/k"]
    assert [o.key for o in b.list()] == ["k"]


def test_s3_uploads_send_their_body_without_waiting_for_100_continue(s3_location: S3Location) -> None:
    client = s3_location.client()
    sent: list[dict[str, Any]] = []
    client._client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(request.headers))
    client.put("segment", b"x" * 4000)
    assert sent and "Expect" not in sent[0]


def test_open_client_reads_replica_urls(tmp_path: Path) -> None:
    s3 = open_client("s3://bucket/some/prefix?endpoint=http://127.0.0.1:1&region=eu-west-1")
    assert isinstance(s3, RetryingClient)
    assert isinstance(s3.inner, MeteredClient) and isinstance(s3.inner.inner, S3Client)
    assert s3.url == "s3://bucket/some/prefix/"
    assert open_client(f"file://{tmp_path}").url == f"file://{tmp_path}"
    assert open_client(str(tmp_path), retry=False).url == f"file://{tmp_path}"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://AKIA:secret@bucket/p", "credentials"),
        ("s3:///prefix", "no bucket"),
        ("s3://b/p?color=red", "unknown S3 URL option"),
        ("gs://bucket/p", "unsupported replica URL"),
        ("file://host/path", "absolute"),
        ("", "unsupported replica URL"),
    ],
)
def test_open_client_rejects_bad_urls(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        open_client(url)
    assert "secret" not in str(info.value)


def client_error(code: str, message: str | None, status: int, operation: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},  # type: ignore[typeddict-item]
        operation,
    )


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        # Shapes seen from moto, Ceph RGW (empty Messages, bare status codes) and AWS.
        (client_error("NoSuchKey", None, 404), ObjectNotFound, "no such object"),
        (client_error("404", "Not Found", 404, "HeadObject"), ObjectNotFound, "no such object"),
        (client_error("NoSuchBucket", None, 404), PermanentStorageError, "bucket does not exist"),
        (client_error("SignatureDoesNotMatch", None, 403), PermanentStorageError, "check the AWS credentials"),
        (client_error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist", 403),
         PermanentStorageError, "check the AWS credentials"),
        (client_error("400", "Bad Request", 400, "DeleteObjects"), PermanentStorageError, "400 Bad Request"),
        (client_error("MalformedXML", "The XML was not well-formed", 400), PermanentStorageError, "MalformedXML"),
        (client_error("SlowDown", "Please reduce your request rate.", 503), TransientStorageError, "SlowDown"),
        (client_error("InternalError", None, 500), TransientStorageError, "InternalError"),
        (client_error("UnknownThing", None, 502), TransientStorageError, "HTTP 502"),
    ],
)  # fmt: skip
def test_s3_errors_are_classified_whatever_the_server_sends(error: Exception, kind: type, says: str) -> None:
    classified = classify("get s3://b/p/k", error)
    assert type(classified) is kind
    assert says in str(classified) and "None" not in str(classified)


def test_s3_upload_failures_are_classified_by_their_cause() -> None:
    try:
        try:
            raise client_error("NoSuchBucket", None, 404, "CreateMultipartUpload")
        except ClientError as exc:
            raise S3UploadFailedError("Failed to upload: An error occurred (NoSuchBucket)") from exc
    except S3UploadFailedError as wrapped:
        classified = classify("put s3://b/p/k", wrapped)
    assert isinstance(classified, PermanentStorageError) and "bucket does not exist" in str(classified)


def test_the_metered_client_counts_requests_bytes_and_errors_by_operation() -> None:
    client = MeteredClient(MemoryClient())
    client.put("generations/a", b"12345")
    client.put("generations/b", io.BytesIO(b"123"))
    assert client.get("generations/a", 1, 2) == b"23"
    assert client.stream("generations/b").read() == b"123"
    with pytest.raises(ObjectNotFound):
        client.get("generations/missing")
    assert len(list(client.list("generations/"))) == 2
    counts = client.counts()
    assert counts.requests == {"put": 2, "get": 3, "list": 1}
    assert counts.bytes == {"put": 8, "get": 5}
    assert counts.errors == {("get", "not_found"): 1}
