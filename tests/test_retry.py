"""RetryingBackend: transient failures (a dropped connection) are retried with backoff, reads
resume where they stopped, permanent failures are not retried; with a real local backend made
flaky, then against real SFTP and REST servers whose connections break."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.ports import LOOPBACK
from tests.support.processes import children_of
from tests.support.remote import RestServer, SshServer, configure_locations, unique
from tests.support.repository import Server
from triplicate.config.load import load_config
from triplicate.storage import FileType, Handle, StorageError, open_location
from triplicate.storage.backend import FileInfo, Forwarding
from triplicate.storage.local import LocalBackend
from triplicate.storage.retry import RetryingBackend, TransientError
from triplicate.storage.throttle import ThrottledBackend


class Flaky(Forwarding):
    """A real local backend whose first ``failures`` calls of each kind fail as a dropped connection would."""

    def __init__(self, backend: LocalBackend, failures: int, error: type[StorageError] = TransientError) -> None:
        super().__init__(backend)
        self.failures = failures
        self.error = error
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1
        if self.calls[what] <= self.failures:
            raise self.error(f"{what}: connection reset")

    def prepare(self, create: bool) -> None:
        self._maybe_fail("prepare")
        self.backend.prepare(create)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        yield from self.backend.list(file_type)
        self._maybe_fail("list")  # fails after yielding everything: a retry must not repeat names

    def load(self, handle: Handle, offset: int = 0, length: int | None = None):  # type: ignore[no-untyped-def]
        flaky = self

        class Reader:
            def __init__(self, inner: io.BufferedReader) -> None:
                self.inner = inner

            def read(self, size: int = -1) -> bytes:
                data = self.inner.read(size)
                flaky._maybe_fail("read")
                return data

        @contextmanager
        def opened():  # type: ignore[no-untyped-def]
            with flaky.backend.load(handle, offset, length) as inner:
                yield Reader(inner)

        return opened()

    def save(self, handle: Handle, source: io.BytesIO) -> int:
        source.read(10)  # a failure half-way: the retry must start from the beginning again
        self._maybe_fail("save")
        source.seek(0)
        return self.backend.save(handle, source)



def test_transient_failures_are_retried_with_backoff_and_reads_resume(tmp_path: Path) -> None:
    (tmp_path / "location").mkdir()
    flaky = Flaky(LocalBackend(tmp_path / "location" / "client"), failures=2)
    delays: list[float] = []
    backend = RetryingBackend(flaky, attempts=4, first_delay=0.5, sleep=delays.append)  # type: ignore[arg-type]
    backend.prepare(create=True)
    data = os.urandom(3 << 20)
    handle = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
    source = io.BytesIO(data)
    assert backend.save(handle, source) == len(data)
    assert [info.name for info in backend.list(FileType.DATA)] == [handle.name]
    with backend.load(handle) as reader:
        read = b"".join(iter(lambda: reader.read(1 << 20), b""))
    assert read == data
    assert delays[:2] == [0.5, 1.0]


def test_permanent_failures_are_not_retried_and_retries_end(tmp_path: Path) -> None:
    (tmp_path / "location").mkdir()
    delays: list[float] = []
    denied = Flaky(LocalBackend(tmp_path / "location" / "a"), failures=1, error=StorageError)
    with pytest.raises(StorageError, match="connection reset"):
        RetryingBackend(denied, sleep=delays.append).prepare(create=True)  # type: ignore[arg-type]
    assert denied.calls["prepare"] == 1 and delays == []
    down = Flaky(LocalBackend(tmp_path / "location" / "b"), failures=99)
    with pytest.raises(TransientError):
        RetryingBackend(down, attempts=4, sleep=delays.append).prepare(create=True)  # type: ignore[arg-type]
    assert down.calls["prepare"] == 4 and delays == [0.5, 1.0, 2.0]


def test_open_location_wraps_remote_kinds_in_retries(server: Server, rest_server: RestServer) -> None:
    configure_locations(server, ["usb", "rest"], rest_server.location_toml("rest"))
    config = load_config(server.config_path)
    local = open_location(config, "usb", "web01")
    assert isinstance(local, ThrottledBackend) and isinstance(local.backend, LocalBackend)
    remote = open_location(config, "rest", "web01")  # every kind shares its location's limits (test_throttle.py)
    assert isinstance(remote, ThrottledBackend) and isinstance(remote.backend, RetryingBackend)
    assert remote.connections == config.server.workers


# -- real servers whose connections break ----------------------------------------------------


def test_a_dropped_ssh_connection_is_replaced_and_the_save_retried(sshd: SshServer, tmp_path: Path) -> None:
    from triplicate.storage.sftp import SftpBackend, SftpTarget

    target = SftpTarget(LOOPBACK, sshd.port, sshd.user, str(tmp_path), sshd.identity_file, sshd.known_hosts_file)
    delays: list[float] = []
    backend = RetryingBackend(SftpBackend(target, "client", "sftp", connections=1), sleep=delays.append)
    backend.prepare(create=True)
    before = set(children_of(sshd.process.pid))
    assert before, "sshd serves each connection in a process of its own"
    for pid in before:  # the server side of our connection dies, as on a network failure
        os.kill(pid, 9)
    data = os.urandom(1 << 20)
    handle = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
    assert backend.save(handle, io.BytesIO(data)) == len(data)
    assert delays, "the first try failed on the dead connection and was retried"
    assert (tmp_path / "client" / handle.relative_path()).read_bytes() == data
    backend.close()


class CuttingProxy:
    """A loopback TCP proxy that cuts the first connection to carry more than ``limit`` bytes
    towards the server (once): a connection that breaks in the middle of an upload."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit, self.cuts = port, limit, 0
        self.listener = socket.create_server((LOOPBACK, 0))
        self.url_port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, towards_server: bool) -> None:
        moved = 0
        try:
            while data := source.recv(1 << 16):
                if towards_server and not self.cuts and moved + len(data) > self.limit:
                    self.cuts += 1
                    for end in (source, target):  # reset both ways, as a dropped connection does
                        end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        end.close()
                    return
                target.sendall(data)
                moved += len(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_an_upload_cut_off_midway_is_retried_and_the_file_stays_whole(rest_server: RestServer, tmp_path: Path) -> None:
    """The retry of an upload whose connection broke ends with the whole file, though rclone's REST
    server keeps the partial one under its final name (here for over 90 s: its request handler
    still waits for the rest of the body). The retry waits (at most 10 s) for rclone to drop it."""

    from triplicate.storage.rest import RestBackend, RestTarget

    port = int(rest_server.url.rstrip("/").rsplit(":", 1)[1])
    proxy = CuttingProxy(port, limit=3 << 20)
    target = RestTarget(f"http://{LOOPBACK}:{proxy.url_port}/", rest_server.username, rest_server.password_file)
    backend = RetryingBackend(RestBackend(target, f"cut-{unique(tmp_path)}", "rest via a cutting proxy"))
    try:
        backend.prepare(create=True)
        data = os.urandom(8 << 20)
        handle = Handle(FileType.DATA, hashlib.sha256(data).hexdigest())
        assert backend.save(handle, io.BytesIO(data)) == len(data)
        assert proxy.cuts == 1, "the upload was cut midway (and retried)"
        deadline = time.monotonic() + 2  # longer than rclone takes to drop a broken upload's file
        while time.monotonic() < deadline:
            assert backend.stat(handle).size == len(data), "the retried file must stay whole"
            time.sleep(0.1)
        with backend.load(handle) as reader:
            assert hashlib.sha256(reader.read()).hexdigest() == handle.name
    finally:
        backend.close()
        proxy.close()
