"""Any rclone remote (B2, Google Drive, S3, SFTP, ...), reached through rclone itself.

triplicate starts ``rclone rcd`` (rclone's remote-control server) on a private
loopback port, with a random password in an htpasswd file only this process can
read, and drives it over its JSON API; close() stops it. So every backend rclone
has works, with rclone's own configuration file (``rclone_config``).

Files do not cross an HTTP hop on their way out. A save from a local file (every
sync: the primary is a local folder) first reads the file here and checks that it
hashes to its name, then asks rclone to copy that file itself
(``operations/copyfile``), as ``rclone sync`` would. rclone's own after-copy hash
comparison is off (``--ignore-checksum``; the size is still checked): the content
is verified here with SHA-256, and, as for the other kinds, the transport (TLS,
SSH) and the far side are trusted with the write. A save from anything else is
first written, verified, to a private temporary file. Loads go through rclone's
object server (``--rc-serve``), with ranges.
"""

from __future__ import annotations

import base64
import collections
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import urllib3

from triplicate import execute
from triplicate.storage.backend import FileInfo, NotFound, StorageError, copy_verified
from triplicate.storage.handle import FileType, Handle, is_id
from triplicate.storage.remote import BodyReader, list_config, range_header, streamed
from triplicate.storage.retry import TransientError

START_TIMEOUT = 30.0
_SERVING = re.compile(r"Serving remote control on (http://127\.0\.0\.1:\d+/)")
_USER = "triplicate"
_TYPE_FOLDERS = ("keys", "data", "index", "snapshots", "locks")
# The slowest transfer rate a copy may have before it counts as hung (bytes per second).
_SLOWEST_RATE = 50_000


def rclone_environment(rclone_config: Path | None) -> dict[str, str]:
    """The environment for rclone (and for restic's rclone: backend).

    This machine's kind sets AWS_CA_BUNDLE, which makes rclone's S3 client fail
    (LoadCustomCABundleError); an empty value is ignored by it.
    """
    extra = {"AWS_CA_BUNDLE": ""}
    if rclone_config is not None:
        extra["RCLONE_CONFIG"] = str(rclone_config)
    return extra


def join_remote(remote: str, client: str) -> str:
    """``far:backups`` + ``web01`` -> ``far:backups/web01``; ``far:`` + ``web01`` -> ``far:web01``."""
    return remote + client if remote.endswith((":", "/")) else f"{remote}/{client}"


class _RcError(Exception):
    """rclone answered a call with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RcloneBackend:
    """The repository ``<remote>/<client>``, through an ``rclone rcd`` of our own."""

    def __init__(self, remote: str, rclone_config: Path | None, client: str, description: str,
                 connections: int = 4, timeout: float = 120.0) -> None:
        self.remote = remote
        self.rclone_config = rclone_config
        self.client = client
        self.repository = join_remote(remote, client)
        self.description = description
        self.connections = connections
        self._timeout = timeout
        self._lock = threading.Lock()
        self._process: "execute.subprocess.Popen[bytes] | None" = None
        self._url: str | None = None
        self._pool: urllib3.PoolManager | None = None
        self._headers: dict[str, str] = {}
        self._folder: Path | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=50)

    # -- the Backend protocol ---------------------------------------------------------------

    def prepare(self, create: bool) -> None:
        try:
            self._call("operations/list", "checking the remote", fs=self.remote, remote="",
                       opt={"dirsOnly": True})
        except NotFound:
            raise StorageError(f"{self.description}: rclone remote {self.remote} does not exist "
                               "(a missing folder or bucket); triplicate never creates it") from None
        try:
            self.stat(Handle(FileType.CONFIG))
            return
        except NotFound:
            pass
        if not create:
            raise StorageError(f"{self.description}: no repository at {self.repository}")
        # The repository's folders, as restic's "init" makes them (none on an object store).
        for folder in ("", *_TYPE_FOLDERS):
            self._call("operations/mkdir", "creating the repository", fs=self.repository, remote=folder)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            yield from list_config(self.stat)
            return
        try:
            answer = self._call("operations/list", f"listing {file_type.value}", fs=self.repository,
                                remote=file_type.value, opt={"recurse": True, "filesOnly": True, "noMimeType": True})
        except NotFound:
            return  # no such folder yet: an empty listing
        for entry in answer.get("list") or []:
            name = entry.get("Name", "")
            if is_id(name) and not entry.get("IsDir"):
                yield FileInfo(name, int(entry.get("Size", 0)), _rclone_time(entry.get("ModTime")))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        what = f"loading {handle}"

        def translate(error: Exception) -> StorageError:
            return self._storage_error(what, error)

        if length == 0:
            yield BodyReader(None, translate)  # type: ignore[misc]
            return
        headers = {**self._headers, **range_header(offset, length)}
        url = self._server() + quote(f"[{self.repository}]/{handle.relative_path()}", safe="/[]:")
        try:
            response = self._http().request("GET", url, headers=headers, preload_content=False, redirect=False)
        except Exception as error:  # noqa: BLE001 - every failure becomes a StorageError
            raise translate(error) from None
        if response.status not in (200, 206):
            body = response.data
            response.release_conn()
            if response.status == 416:  # an offset at the end: nothing left
                yield BodyReader(None, translate)  # type: ignore[misc]
                return
            raise self._rc_error(what, _RcError(response.status, _error_text(body)))
        with streamed(response, translate) as reader:
            yield reader

    def save(self, handle: Handle, source: BinaryIO) -> int:
        path = _local_file(source)
        if path is not None:
            size = copy_verified(handle, source, lambda chunk: None)
            self._copy_file(handle, path, size)
            return size
        self._server()
        assert self._folder is not None
        descriptor, spooled = tempfile.mkstemp(dir=self._folder, prefix="save.")
        try:
            with os.fdopen(descriptor, "wb") as out:
                size = copy_verified(handle, source, out.write)
            self._copy_file(handle, Path(spooled), size)
            return size
        finally:
            Path(spooled).unlink(missing_ok=True)

    def stat(self, handle: Handle) -> FileInfo:
        answer = self._call("operations/stat", f"stat {handle}", fs=self.repository, remote=handle.relative_path())
        item = answer.get("item")
        if not item:
            raise NotFound(f"{self.description}: stat {handle}: does not exist")
        return FileInfo(handle.name, int(item.get("Size", 0)), _rclone_time(item.get("ModTime")))

    def remove(self, handle: Handle) -> None:
        try:
            self._call("operations/deletefile", f"removing {handle}", fs=self.repository,
                       remote=handle.relative_path())
        except NotFound:
            pass

    def discard_partial_saves(self) -> None:
        pass  # rclone removes a partially written file when its copy fails

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.clear()
                self._pool = None
            if self._process is not None:
                execute.stop(self._process)
                self._process = None
            self._url = None
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    # -- the rclone server ------------------------------------------------------------------

    def _copy_file(self, handle: Handle, path: Path, size: int) -> None:
        """rclone copies the local file ``path`` to the handle's place (overwriting: a repair).

        rclone writes some remotes (a local disk, SFTP) in place under the final name,
        and a failed copy can leave a short file there (an empty one when the disk is
        too full to preallocate): it is removed before the error is raised.
        """
        try:
            self._call("operations/copyfile", f"saving {handle}", timeout=self._timeout + size / _SLOWEST_RATE,
                       srcFs=str(path.parent), srcRemote=path.name,
                       dstFs=self.repository, dstRemote=handle.relative_path())
        except StorageError:
            try:
                self.remove(handle)
            except StorageError:
                pass  # the error to report is the copy's; the mirror's size check catches a leftover
            raise

    def _call(self, method: str, what: str, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """One rc call; returns its answer. Raises NotFound, StorageError or TransientError."""
        url = self._server() + method
        try:
            response = self._http().request(
                "POST", url, body=json.dumps(params).encode(), redirect=False,
                headers={**self._headers, "Content-Type": "application/json"},
                timeout=urllib3.Timeout(connect=10, read=timeout or self._timeout))
        except Exception as error:  # noqa: BLE001 - every failure becomes a StorageError
            raise self._storage_error(what, error) from None
        if response.status != 200:
            raise self._rc_error(what, _RcError(response.status, _error_text(response.data)))
        try:
            answer = json.loads(response.data)
        except ValueError:
            raise StorageError(f"{self.description}: {what}: rclone's answer is not JSON") from None
        return answer if isinstance(answer, dict) else {}

    def _rc_error(self, what: str, error: _RcError) -> StorageError:
        where = f"{self.description}: {what}"
        message = error.message
        lowered = message.lower()
        if error.status == 404 or ("not found" in lowered and "section" not in lowered):
            return NotFound(f"{where}: does not exist")
        if any(sign in lowered for sign in ("no space left", "remaining disk space", "quota")):
            return StorageError(f"{where}: disk full on the far side ({message})")
        if error.status == 401:
            return StorageError(f"{where}: rclone refused our password (401)")
        if "didn't find section" in lowered or "permission denied" in lowered or error.status == 400:
            return StorageError(f"{where}: rclone cannot reach {self.remote}: {message}")
        # rclone has already retried low-level errors itself; ours retries the call as a whole.
        return TransientError(f"{where}: rclone failed ({message})")

    def _storage_error(self, what: str, error: Exception) -> StorageError:
        if isinstance(error, StorageError):
            return error
        process = self._process
        if process is not None and process.poll() is not None:
            return StorageError(f"{self.description}: {what}: rclone rcd stopped "
                                f"(status {process.returncode}): {self._last_error() or 'no error logged'}")
        return TransientError(f"{self.description}: {what}: rclone did not answer ({error})")

    def _http(self) -> urllib3.PoolManager:
        self._server()
        assert self._pool is not None
        return self._pool

    def _server(self) -> str:
        """The URL of our running rclone; starts it on first use. Raises StorageError."""
        with self._lock:
            if self._url is None:
                self._start()
            assert self._url is not None and self._process is not None
            if self._process.poll() is not None:
                raise StorageError(f"{self.description}: rclone rcd stopped "
                                   f"(status {self._process.returncode}): {self._last_error() or 'no error logged'}")
            return self._url

    def _start(self) -> None:
        import bcrypt

        self._folder = Path(tempfile.mkdtemp(prefix="triplicate-rclone-"))
        password = secrets.token_urlsafe(24)
        htpasswd = self._folder / "htpasswd"
        # The lowest bcrypt cost: rclone checks it on every request, and the password is random.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.touch(mode=0o600)
        htpasswd.write_text(f"{_USER}:{hashed}\n")
        argv = ["rclone", "rcd", "--rc-addr", "127.0.0.1:0", "--rc-htpasswd", str(htpasswd), "--rc-serve",
                # Always copy when asked (a repair overwrites a corrupt file of the same size);
                # the content was verified here (see the module's text).
                "--no-check-dest", "--ignore-checksum"]
        try:
            process = execute.start(argv, env=execute.environment(rclone_environment(self.rclone_config)),
                                    capture_log=True)
        except execute.CommandFailed as error:
            raise StorageError(f"{self.description}: {error}") from None
        self._process = process
        found = threading.Event()
        address: list[str] = []

        def read_log() -> None:
            assert process.stderr is not None
            for raw in process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self._log.append(line)
                match = _SERVING.search(line)
                if match and not found.is_set():
                    address.append(match.group(1))
                    found.set()
            found.set()  # the log ended: rclone exited

        threading.Thread(target=read_log, name="rclone log", daemon=True).start()
        if not found.wait(START_TIMEOUT) or not address:
            execute.stop(process)
            raise StorageError(f"{self.description}: rclone rcd did not start: "
                               f"{self._last_error() or 'no address within ' + str(int(START_TIMEOUT)) + 's'}")
        token = base64.b64encode(f"{_USER}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._pool = urllib3.PoolManager(num_pools=1, maxsize=max(self.connections, 4), block=False, retries=False,
                                         timeout=urllib3.Timeout(connect=10, read=self._timeout))
        self._url = address[0]

    def _last_error(self) -> str | None:
        """rclone's last ERROR log line, without its date (why a call failed on the far side)."""
        for line in reversed(self._log):
            if "ERROR" in line or "Failed" in line or "CRITICAL" in line:
                return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+", "", line)
        return None


def _local_file(source: BinaryIO) -> Path | None:
    """The path of ``source`` when it is a regular local file read from its start, else None.

    The open file and the path must be the same file (not one replaced since).
    """
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not os.path.isabs(name):
        return None
    try:
        opened = os.fstat(source.fileno())
        if source.tell() != 0:
            return None
        return Path(name) if os.path.samestat(opened, os.stat(name)) else None
    except (OSError, ValueError, AttributeError):
        return None


def _error_text(body: bytes) -> str:
    """The "error" of rclone's JSON error answer, else the body's first line."""
    text = body.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
        if isinstance(answer, dict) and answer.get("error"):
            return str(answer["error"])
    except ValueError:
        pass
    return (text.strip().splitlines() or ["no error text"])[0][:200]


def _rclone_time(value: Any) -> float | None:
    """rclone's RFC 3339 times (nanoseconds included) as a timestamp."""
    if not isinstance(value, str) or not value:
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None
