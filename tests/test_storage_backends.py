"""What only one backend does: file atomicity, S3 error classification and multipart, URL parsing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from replicator.errors import ConfigError, ObjectNotFound, PermanentStorageError, TransientStorageError
from replicator.storage import FileClient, RetryingClient, open_client
from replicator.storage.s3 import S3Client


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


def test_s3_missing_bucket_is_a_clear_permanent_error(moto_endpoint: str, s3_env: None) -> None:
    client = S3Client("no-such-bucket", "p", endpoint_url=moto_endpoint)
    with pytest.raises(PermanentStorageError, match="bucket does not exist"):
        list(client.list())
    with pytest.raises(PermanentStorageError, match="bucket does not exist"):
        client.put("k", b"1")


def test_s3_missing_key_is_not_found(moto_endpoint: str, s3_bucket: str) -> None:
    with pytest.raises(ObjectNotFound, match="no such object"):
        S3Client(s3_bucket, endpoint_url=moto_endpoint).get("absent")


def test_s3_unreachable_endpoint_is_transient(s3_env: None) -> None:
    client = S3Client("bucket", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(TransientStorageError):
        client.get("k")


def test_s3_large_upload_goes_multipart_and_reads_back(moto_endpoint: str, s3_bucket: str) -> None:
    client = S3Client(s3_bucket, "p", endpoint_url=moto_endpoint)
    client._transfer.multipart_threshold = 5 << 20  # the smallest part S3 accepts
    client._transfer.multipart_chunksize = 5 << 20
    data = bytes(range(256)) * (11 << 12)  # 11 MiB: three parts
    client.put("big", io.BytesIO(data))
    assert client.get("big") == data
    assert client.get("big", 5 << 20, 10) == data[5 << 20 : (5 << 20) + 10]


def test_s3_prefix_is_the_root(moto_endpoint: str, s3_bucket: str) -> None:
    a = S3Client(s3_bucket, "one", endpoint_url=moto_endpoint)
    b = S3Client(s3_bucket, "one/two/", endpoint_url=moto_endpoint)
    b.put("k", b"x")
    assert [o.key for o in a.list()] == ["two/k"]
    assert [o.key for o in b.list()] == ["k"]


def test_open_client_reads_replica_urls(tmp_path: Path) -> None:
    s3 = open_client("s3://bucket/some/prefix?endpoint=http://127.0.0.1:1&region=eu-west-1")
    assert isinstance(s3, RetryingClient)
    assert isinstance(s3.inner, S3Client) and s3.url == "s3://bucket/some/prefix/"
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
