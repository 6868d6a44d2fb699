"""The contract every storage backend keeps (restic's internal/backend/test, in spirit).

Each kind of location adds a factory to BACKENDS; every test runs against each.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.remote import RestServer, S3Server, SshServer, rclone_local_config
from triplicate.storage import Backend, FileType, Handle, NotFound
from triplicate.storage.backend import CorruptContent, SourceReadError
from triplicate.storage.local import LocalBackend


def make_local(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    location = tmp_path / "location"
    location.mkdir()
    return LocalBackend(location / "client")


def make_sftp(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    from triplicate.storage.sftp import SftpBackend, SftpTarget

    server: SshServer = request.getfixturevalue("sshd")
    location = tmp_path / "location"
    location.mkdir()
    target = SftpTarget("127.0.0.1", server.port, server.user, str(location), server.identity_file,
                        server.known_hosts_file)
    return SftpBackend(target, "client", "sftp test location")


def make_s3(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    from triplicate.storage.s3 import S3Backend, S3Target

    server: S3Server = request.getfixturevalue("s3_server")
    bucket = "conformance"
    client = server.client()
    if bucket not in [entry["Name"] for entry in client.list_buckets().get("Buckets", [])]:
        server.create_bucket(bucket)
    target = S3Target(server.endpoint, bucket, f"location-{tmp_path.name}", server.region, server.credentials_file)
    return S3Backend(target, "client", "s3 test location")


def make_rest(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    from triplicate.storage.rest import RestBackend, RestTarget

    server: RestServer = request.getfixturevalue("rest_server")
    target = RestTarget(server.url, server.username, server.password_file)
    return RestBackend(target, f"client-{tmp_path.name}", "rest test location")


def make_rclone(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    from triplicate.storage.rclone import RcloneBackend

    location = tmp_path / "location"
    location.mkdir()
    config = rclone_local_config(tmp_path)
    return RcloneBackend(f"far:{location}", config, "client", "rclone test location")


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Backend]] = {
    "local": make_local, "sftp": make_sftp, "s3": make_s3, "rest": make_rest, "rclone": make_rclone,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    instance = BACKENDS[request.param](tmp_path, request)
    instance.prepare(create=True)
    yield instance
    instance.close()


def content(size: int) -> tuple[Handle, bytes]:
    data = os.urandom(size)
    return Handle(FileType.DATA, hashlib.sha256(data).hexdigest()), data


class FailingReader(io.RawIOBase):
    """Gives some bytes, then fails as a dropped connection would."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._given = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self._given:
            raise OSError("connection reset")
        self._given = True
        count = min(len(buffer), len(self._data))
        buffer[:count] = self._data[:count]
        return count


def test_save_then_load_stat_and_list(backend: Backend) -> None:
    handle, data = content(3 << 20)
    assert backend.save(handle, io.BytesIO(data)) == len(data)
    with backend.load(handle) as reader:
        assert reader.read() == data
    assert backend.stat(handle).size == len(data)
    assert [(info.name, info.size) for info in backend.list(FileType.DATA)] == [(handle.name, len(data))]
    assert list(backend.list(FileType.INDEX)) == []


def test_load_a_range(backend: Backend) -> None:
    handle, data = content(100_000)
    backend.save(handle, io.BytesIO(data))
    with backend.load(handle, offset=1000, length=5000) as reader:
        assert reader.read() == data[1000:6000]
    with backend.load(handle, offset=99_000) as reader:
        assert reader.read() == data[99_000:]


def test_each_file_is_listed_once_per_type(backend: Backend) -> None:
    saved = {}
    for file_type in (FileType.DATA, FileType.INDEX, FileType.SNAPSHOT, FileType.KEY):
        for _ in range(3):
            handle, data = content(1000)
            handle = Handle(file_type, handle.name)
            backend.save(handle, io.BytesIO(data))
            saved.setdefault(file_type, set()).add(handle.name)
    for file_type, names in saved.items():
        listed = [info.name for info in backend.list(file_type)]
        assert sorted(listed) == sorted(names)


def test_config_is_not_content_addressed(backend: Backend) -> None:
    handle = Handle(FileType.CONFIG)
    backend.save(handle, io.BytesIO(b"encrypted config"))
    assert [info.name for info in backend.list(FileType.CONFIG)] == [""]
    with backend.load(handle) as reader:
        assert reader.read() == b"encrypted config"


def test_saving_content_that_does_not_match_its_name_fails_and_leaves_nothing(backend: Backend) -> None:
    handle, data = content(10_000)
    with pytest.raises(CorruptContent):
        backend.save(handle, io.BytesIO(data + b"x"))
    with pytest.raises(NotFound):
        backend.stat(handle)
    assert list(backend.list(FileType.DATA)) == []


def test_saving_from_a_local_file(backend: Backend, tmp_path: Path) -> None:
    """What a sync does: the source is a file of the primary (the rclone kind has rclone copy it)."""
    handle, data = content(2 << 20)
    path = tmp_path / handle.name
    path.write_bytes(data)
    link = tmp_path / "link"
    link.symlink_to(path)  # a primary on a folder reached through a link
    with open(link, "rb") as source:
        assert backend.save(handle, source) == len(data)
    with backend.load(handle) as reader:
        assert reader.read() == data
    path.write_bytes(data[:-1] + b"!")  # rot in the source: never sent on
    with open(path, "rb") as source, pytest.raises(CorruptContent):
        backend.save(Handle(FileType.INDEX, handle.name), source)
    assert list(backend.list(FileType.INDEX)) == []


def test_a_failed_save_leaves_no_file_under_its_name(backend: Backend) -> None:
    handle, data = content(3 << 20)
    with pytest.raises(SourceReadError):
        backend.save(handle, FailingReader(data))  # type: ignore[arg-type]
    assert list(backend.list(FileType.DATA)) == []
    backend.discard_partial_saves()
    backend.save(handle, io.BytesIO(data))
    assert backend.stat(handle).size == len(data)


def test_missing_files(backend: Backend) -> None:
    handle, _ = content(10)
    with pytest.raises(NotFound):
        backend.stat(handle)
    with pytest.raises(NotFound), backend.load(handle):
        pass
    backend.remove(handle)  # removing a missing file is not an error


def test_remove(backend: Backend) -> None:
    handle, data = content(10)
    backend.save(handle, io.BytesIO(data))
    backend.remove(handle)
    with pytest.raises(NotFound):
        backend.stat(handle)


def test_handles_validate_names() -> None:
    with pytest.raises(ValueError):
        Handle(FileType.DATA, "../../etc/passwd")
    with pytest.raises(ValueError):
        Handle(FileType.CONFIG, "x")
    name = "ab" + "0" * 62
    assert Handle(FileType.DATA, name).relative_path() == f"data/ab/{name}"
    assert Handle(FileType.SNAPSHOT, name).relative_path() == f"snapshots/{name}"
