"""A repository on another restic REST server (rest-server, ``rclone serve restic``, triplicate).

Speaks restic's REST protocol (doc/REST_backend.rst) with v2 listings over one
thread-safe urllib3 pool. The repository is ``<url>/<client>/``.

Saves stream the file as a chunked POST (storage/upload.py), hashed on the way,
holding back the last chunk until the whole content has hashed to its name. On
a mismatch or a failing source the last chunk is never sent and the request's
framing is spoiled instead: the server's handler fails, drops what it received
(rest-server's temporary file; the file rclone writes in place under its final
name) and answers before save() raises. The trade-off (docs/locations.md): while
an upload to rclone runs, the file is visible under its final name, incomplete.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from triplicate.storage.backend import (
    CHUNK_SIZE,
    CorruptContent,
    FileInfo,
    NoRepository,
    NotFound,
    SourceReadError,
    StorageError,
)
from triplicate.storage.handle import FileType, Handle, is_id
from triplicate.storage.remote import BodyReader, list_config, range_header, streamed
from triplicate.storage.retry import TransientError
from triplicate.storage.upload import ChunkedUploads

V2 = "application/vnd.x.restic.rest.v2"


@dataclass(frozen=True)
class RestTarget:
    """The server and how to log in; the password is read from its file when first needed."""

    url: str
    username: str | None = None
    password_file: Path | None = None
    cacert: Path | None = None
    password: str | None = None  # given directly (a server triplicate started itself)


def read_password(path: Path) -> str:
    """The first line of a password file; raises StorageError naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise StorageError(f"password_file {path}: cannot read ({error.strerror or error})") from None
    if not lines or not lines[0]:
        raise StorageError(f"password_file {path}: empty")
    return lines[0]


# After a broken upload, how long a retry waits for the server to drop the partial file.
DISCARD_TIMEOUT = 10.0
DISCARD_POLL = 0.05

class RestBackend:
    """The repository ``<target.url>/<client>/`` on a REST server."""

    def __init__(self, target: RestTarget, client: str, description: str, connections: int = 4,
                 timeout: float = 120.0, explain: Callable[[], str | None] | None = None) -> None:
        self.target = target
        self.base = target.url.rstrip("/") + f"/{client}/"
        self.description = description
        self.connections = connections
        self._timeout = timeout
        self._explain = explain or (lambda: None)
        self._pool: urllib3.PoolManager | None = None
        self._upload_connections: ChunkedUploads | None = None
        self._headers: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- the Backend protocol -------------------------------------------------------------

    def prepare(self, create: bool) -> None:
        response = self._request("HEAD", "config", "opening the repository", allow=(200, 404))
        if response.status == 200:
            return
        if not create:
            raise NoRepository(f"{self.description}: no repository at {self.base}")
        # The repository's folders, as restic's "init" makes them; the mirror then copies config.
        self._request("POST", "?create=true", "creating the repository")

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            yield from list_config(self.stat)
            return
        what = f"listing {file_type.value}"
        response = self._request("GET", f"{file_type.value}/", what, headers={"Accept": V2}, allow=(200, 404))
        if response.status == 404:
            return
        try:
            entries = json.loads(response.data)
        except ValueError:
            raise StorageError(f"{self.description}: {what}: the server's answer is not JSON") from None
        if not isinstance(entries, list) or (entries and not isinstance(entries[0], dict)):
            raise StorageError(f"{self.description}: {what}: the server does not speak REST protocol v2")
        for entry in entries:
            name = entry.get("name", "")
            if is_id(name):
                yield FileInfo(name, int(entry.get("size", 0)))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        what = f"loading {handle}"

        def translate(error: Exception) -> StorageError:
            return self._storage_error(what, error)

        if length == 0:
            yield BodyReader(None, translate)  # type: ignore[misc]
            return
        response = self._request("GET", handle.relative_path(), what, headers=range_header(offset, length),
                                 allow=(200, 206, 416), stream_body=True)
        if response.status == 416:  # an offset at the end: nothing left
            response.release_conn()
            yield BodyReader(None, translate)  # type: ignore[misc]
            return
        with streamed(response, translate) as reader:
            yield reader

    def save(self, handle: Handle, source: BinaryIO) -> int:
        what = f"saving {handle}"
        size = 0

        def body() -> Iterator[bytes]:
            nonlocal size
            digest = hashlib.sha256() if handle.content_addressed else None
            # Each chunk is sent once the next one is read: the last one stays here until
            # the whole content is known to match its name.
            pending: bytes | None = None
            while chunk := _read_chunk(source):
                if digest is not None:
                    digest.update(chunk)
                if pending is not None:
                    yield pending
                pending = chunk
                size += len(chunk)
            if digest is not None and digest.hexdigest() != handle.name:
                raise CorruptContent(handle, digest.hexdigest())
            if pending is not None:
                yield pending

        self._pool_manager()  # reads the password, sets the headers
        try:
            status, reason, answer = self._uploads().post(
                urlsplit(self.base).path + handle.relative_path(),
                {**self._headers, "Content-Type": "application/octet-stream"}, body())
        except (CorruptContent, SourceReadError):
            raise  # the server has already dropped the upload (see storage/upload.py)
        except Exception as error:
            failure = self._storage_error(what, error)
            if isinstance(failure, TransientError):
                self._await_discard(handle)
            raise failure from None
        if status == 404:  # for a save, a missing repository is a failure, not a missing file
            raise StorageError(f"{self.description}: {what}: no repository there (404)")
        if status != 200:
            raise self._status_error(what, status, answer or reason.encode())
        return size

    def _await_discard(self, handle: Handle, timeout: float = DISCARD_TIMEOUT) -> None:
        """After an upload broke off: wait until the server no longer shows the partial file.

        rclone's REST server writes in place and removes a broken upload a moment
        later on its own: a retry that raced that removal could see its complete file
        removed. So the retry waits (bounded) for the name to be free again.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.stat(handle)
            except NotFound:
                return
            except StorageError:
                return  # the server is unreachable: the retry will find out
            time.sleep(DISCARD_POLL)

    def stat(self, handle: Handle) -> FileInfo:
        response = self._request("HEAD", handle.relative_path(), f"stat {handle}")
        length = response.headers.get("Content-Length")
        if length is None:
            raise StorageError(f"{self.description}: stat {handle}: the server gave no size")
        return FileInfo(handle.name, int(length), _http_time(response.headers.get("Last-Modified")))

    def remove(self, handle: Handle) -> None:
        self._request("DELETE", handle.relative_path(), f"removing {handle}", allow=(200, 204, 404))

    def discard_partial_saves(self) -> None:
        # Nothing to find from here: the server keeps no broken upload (see the module's text).
        pass

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.clear()
                self._pool = None
            if self._upload_connections is not None:
                self._upload_connections.close()
                self._upload_connections = None

    # -- helpers ----------------------------------------------------------------------------

    def _uploads(self) -> ChunkedUploads:
        with self._lock:
            if self._upload_connections is None:
                self._upload_connections = ChunkedUploads(self.target.url, self.target.cacert, self._timeout,
                                                          self.connections)
            return self._upload_connections

    def _pool_manager(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pool is None:
                headers = {"User-Agent": "triplicate"}
                if self.target.username is not None:
                    password = self.target.password
                    if password is None and self.target.password_file is not None:
                        password = read_password(self.target.password_file)
                    token = base64.b64encode(f"{self.target.username}:{password or ''}".encode()).decode()
                    headers["Authorization"] = f"Basic {token}"
                options: dict[str, Any] = {}
                if self.target.cacert is not None:
                    options["ca_certs"] = str(self.target.cacert)
                self._headers = headers
                self._pool = urllib3.PoolManager(
                    num_pools=2, maxsize=self.connections, block=False, retries=False,
                    timeout=urllib3.Timeout(connect=min(self._timeout, 30), read=self._timeout), **options)
            return self._pool

    def _request(self, method: str, path: str, what: str, *, headers: dict[str, str] | None = None,
                 allow: tuple[int, ...] = (200,), stream_body: bool = False) -> Any:
        """One request; returns the response when its status is allowed, else raises StorageError."""
        pool = self._pool_manager()
        try:
            response = pool.request(
                method, self.base + path, headers={**self._headers, **(headers or {})},
                preload_content=not stream_body, redirect=False)
        except Exception as error:
            raise self._storage_error(what, error) from None
        if response.status in allow:
            return response
        if stream_body:
            response.drain_conn()
            response.release_conn()
        raise self._status_error(what, response.status, response.data if not stream_body else b"")

    def _status_error(self, what: str, status: int, body: bytes) -> StorageError:
        where = f"{self.description}: {what}"
        detail = (body.decode("utf-8", "replace").strip().splitlines() or [""])[0][:200]
        server = self._explain()
        said = f" ({server})" if server else (f" ({detail})" if detail else "")
        if status == 404:
            return NotFound(f"{where}: does not exist")
        if status == 401:
            return StorageError(f"{where}: authentication failed (check username and password_file)")
        if status == 403:
            return StorageError(f"{where}: refused by the server (403: an append-only or private repository?)")
        if status in (413, 507) or "no space left" in (detail + (server or "")).lower():
            return StorageError(f"{where}: disk full on the server{said}")
        if status == 500 and what.startswith("saving") and not server:
            # rclone serve restic answers a bare 500 to a full disk: say what it usually means.
            return TransientError(f"{where}: the server could not store it (500{said}; a full disk or "
                                  "permissions on the server: its log says which)")
        if status >= 500 or status == 429:
            return TransientError(f"{where}: the server answered {status}{said}")
        return StorageError(f"{where}: the server answered {status}{said}")

    def _storage_error(self, what: str, error: Exception) -> StorageError:
        where = f"{self.description}: {what}"
        if isinstance(error, StorageError):
            return error
        if isinstance(error, (SSLError, ssl.SSLError)):
            return StorageError(f"{where}: TLS failed ({_reason(error)}; set cacert for a private CA)")
        if isinstance(error, NewConnectionError):
            return TransientError(f"{where}: cannot reach {self.target.url} ({_reason(error)})")
        if isinstance(error, ConnectionRefusedError):
            return TransientError(f"{where}: cannot reach {self.target.url} (connection refused)")
        if isinstance(error, (Urllib3Timeout, ProtocolError, HTTPError, ConnectionError, TimeoutError,
                              http.client.HTTPException)):
            return TransientError(f"{where}: connection to {self.target.url} failed ({_reason(error)})")
        if isinstance(error, OSError):
            return TransientError(f"{where}: {_reason(error)}")
        return StorageError(f"{where}: {error!r}")


def _read_chunk(source: BinaryIO) -> bytes:
    """The next megabyte of ``source`` (b"" at its end); raises SourceReadError."""
    try:
        return bytes(source.read(CHUNK_SIZE))
    except OSError as error:
        raise SourceReadError(f"reading the source failed: {error.strerror or error}") from None


def _http_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _reason(error: BaseException) -> str:
    if "Connection refused" in str(error):
        return "connection refused"
    reason = getattr(error, "reason", None)
    if reason is not None and reason is not error:
        return _reason(reason) if isinstance(reason, BaseException) else str(reason)
    return str(error) or type(error).__name__
