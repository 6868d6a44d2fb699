"""Any rclone remote (B2, Google Drive, S3, SFTP, ...), reached through rclone itself.

triplicate starts ``rclone serve restic`` for the remote on a private loopback
port, with a random password in an htpasswd file only this process can read, and
talks to it with the REST backend; close() stops it. So every backend rclone has
works, with rclone's own configuration file (``rclone_config``).
"""

from __future__ import annotations

import collections
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from triplicate import execute
from triplicate.storage.backend import FileInfo, StorageError
from triplicate.storage.handle import FileType, Handle
from triplicate.storage.rest import RestBackend, RestTarget

T = TypeVar("T")
START_TIMEOUT = 30.0
CHECK_TIMEOUT = 120.0
_SERVING = re.compile(r"Serving restic REST API on (http://127\.0\.0\.1:\d+/)")
_USER = "triplicate"
# rclone's "directory not found" exit status: the remote's folder (or bucket) is missing.
_DIRECTORY_NOT_FOUND = 3


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


class RcloneBackend:
    """The repository ``<remote>/<client>``, served by an ``rclone serve restic`` of our own."""

    def __init__(self, remote: str, rclone_config: Path | None, client: str, description: str,
                 connections: int = 4, timeout: float = 120.0) -> None:
        self.remote = remote
        self.rclone_config = rclone_config
        self.client = client
        self.description = description
        self.connections = connections
        self._timeout = timeout
        self._lock = threading.Lock()
        self._process: "execute.subprocess.Popen[bytes] | None" = None
        self._rest: RestBackend | None = None
        self._folder: Path | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=50)

    # -- the Backend protocol, through the REST backend -----------------------------------

    def prepare(self, create: bool) -> None:
        # The check and the server's start are two rclone processes: run them side by side.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rclone check") as pool:
            checked = pool.submit(self._check_remote)
            try:
                self._server()
            finally:
                checked.result()  # a missing folder is the error to report, whatever the server did
        self._guard(lambda rest: rest.prepare(create))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        return iter(self._guard(lambda rest: list(rest.list(file_type))))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        rest = self._server()
        with rest.load(handle, offset, length) as reader:
            yield reader

    def save(self, handle: Handle, source: BinaryIO) -> int:
        return self._guard(lambda rest: rest.save(handle, source))

    def stat(self, handle: Handle) -> FileInfo:
        return self._guard(lambda rest: rest.stat(handle))

    def remove(self, handle: Handle) -> None:
        self._guard(lambda rest: rest.remove(handle))

    def discard_partial_saves(self) -> None:
        pass  # rclone removes a partially written file when its upload breaks off

    def close(self) -> None:
        with self._lock:
            if self._rest is not None:
                self._rest.close()
                self._rest = None
            if self._process is not None:
                execute.stop(self._process)
                self._process = None
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    # -- the rclone server ----------------------------------------------------------------

    def _check_remote(self) -> None:
        """The remote's folder (or bucket) must exist: an unmounted disk is an error, never created."""
        argv = ["rclone", "lsf", "--max-depth", "1", "--dirs-only", self.remote]
        try:
            result = execute.run(argv, env=self._environment(), timeout=CHECK_TIMEOUT, check=False)
        except execute.CommandFailed as error:
            raise StorageError(f"{self.description}: {error}") from None
        if result.returncode == _DIRECTORY_NOT_FOUND:
            raise StorageError(f"{self.description}: rclone remote {self.remote} does not exist "
                               "(a missing folder or bucket); triplicate never creates it")
        if result.returncode != 0:
            raise StorageError(f"{self.description}: rclone cannot reach {self.remote}: {_last_line(result.stderr)}")

    def _environment(self) -> dict[str, str]:
        return execute.environment(rclone_environment(self.rclone_config))

    def _server(self) -> RestBackend:
        """The REST backend of our running rclone; starts it on first use. Raises StorageError."""
        with self._lock:
            if self._rest is None:
                self._start()
            assert self._rest is not None and self._process is not None
            if self._process.poll() is not None:
                raise StorageError(f"{self.description}: rclone serve restic stopped "
                                   f"(status {self._process.returncode}): {self._last_error() or 'no error logged'}")
            return self._rest

    def _start(self) -> None:
        import bcrypt

        self._folder = Path(tempfile.mkdtemp(prefix="triplicate-rclone-"))
        password = secrets.token_urlsafe(24)
        htpasswd = self._folder / "htpasswd"
        # The lowest bcrypt cost: rclone checks it on every request, and the password is random.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.touch(mode=0o600)
        htpasswd.write_text(f"{_USER}:{hashed}\n")
        # No object cache: a file removed on the far side must not be served from memory.
        argv = ["rclone", "serve", "restic", "--addr", "127.0.0.1:0", "--htpasswd", str(htpasswd),
                "--cache-objects=false", self.remote]
        try:
            process = execute.start(argv, env=self._environment(), capture_log=True)
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
            raise StorageError(f"{self.description}: rclone serve restic did not start: "
                               f"{self._last_error() or 'no address within ' + str(int(START_TIMEOUT)) + 's'}")
        target = RestTarget(address[0], _USER, password=password)
        self._rest = RestBackend(target, self.client, self.description, self.connections, self._timeout,
                                 explain=self._last_error)

    def _guard(self, operation: Callable[[RestBackend], T]) -> T:
        """Run an operation; when rclone itself died, say so rather than "connection refused"."""
        rest = self._server()
        try:
            return operation(rest)
        except StorageError:
            process = self._process
            if process is not None and process.poll() is not None:
                raise StorageError(f"{self.description}: rclone serve restic stopped: "
                                   f"{self._last_error() or 'no error logged'}") from None
            raise

    def _last_error(self) -> str | None:
        """rclone's last ERROR log line, without its date (why a request failed on the far side)."""
        for line in reversed(self._log):
            if "ERROR" in line or "Failed" in line or "CRITICAL" in line:
                return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+", "", line)
        return None


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return "no error output"
    return re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+", "", lines[-1])
