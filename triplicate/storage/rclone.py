"""Any rclone remote (B2, Google Drive, S3, SFTP, ...), reached through rclone itself.

triplicate drives ``rclone rcd`` (rclone's remote-control server, private to this
process: storage/rclone_server.py) over its JSON API. So every backend rclone has
works, with rclone's own configuration file (``rclone_config``).

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

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from triplicate.storage import rclone_server
from triplicate.storage.backend import FileInfo, NoRepository, NotFound, StorageError, copy_verified
from triplicate.storage.handle import FileType, Handle, is_id
from triplicate.storage.rclone_server import RcError, RcloneServer, error_text, rclone_environment
from triplicate.storage.remote import BodyReader, list_config, range_header, streamed
from triplicate.storage.retry import TransientError

__all__ = ["RcloneBackend", "join_remote", "rclone_environment"]

_TYPE_FOLDERS = ("keys", "data", "index", "snapshots", "locks")
_POLL_MAX = 0.2  # seconds between two looks at a running copy, at most
_STALL_CHECK = 5.0  # seconds between two looks at a copy's progress
_STOP_WAIT = 30.0  # seconds a stopped copy is waited for
_DISK_FULL = ("no space left", "remaining disk space", "storage quota", "insufficient storage")
# rclone's messages for what retrying will not fix (a wrong configuration or path, denied access).
_PERMANENT = ("didn't find section", "didn't find backend", "permission denied", "failed to read private key",
              "is a file not a directory", "not a directory", "access denied", "unauthorized")


def join_remote(remote: str, client: str) -> str:
    """``far:backups`` + ``web01`` -> ``far:backups/web01``; ``far:`` + ``web01`` -> ``far:web01``."""
    return remote + client if remote.endswith((":", "/")) else f"{remote}/{client}"


class RcloneBackend:
    """The repository ``<remote>/<client>``, through the ``rclone rcd`` of its configuration file."""

    def __init__(self, remote: str, rclone_config: Path | None, client: str, description: str,
                 connections: int = 4, timeout: float = 120.0, bwlimit: str | None = None,
                 location: str | None = None, state_dir: Path | None = None) -> None:
        self.remote = remote
        self.bwlimit = bwlimit  # given to the rclone that copies (a server of this location's own)
        self.location = location
        self.state_dir = state_dir  # where the processes copying to the location share its bwlimit
        self.rclone_config = rclone_config
        self.client = client
        self.repository = join_remote(remote, client)
        self.description = description
        self.connections = connections
        self._timeout = timeout
        self._lock = threading.Lock()
        self._rclone: RcloneServer | None = None

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
            try:  # a folder that lost its config is a broken repository, not an absent one
                self._call("operations/list", "opening the repository", fs=self.repository, remote="",
                           opt={"dirsOnly": True})
                return
            except NotFound:
                raise NoRepository(f"{self.description}: no repository at {self.repository}") from None
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
                yield FileInfo(name, _size(entry), _rclone_time(entry.get("ModTime")))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        what = f"loading {handle}"

        def translate(error: Exception) -> StorageError:
            return self._storage_error(what, error)

        if length == 0:
            yield BodyReader(None, translate)  # type: ignore[misc]
            return
        path = quote(f"[{self.repository}]/{handle.relative_path()}", safe="/[]:")
        try:
            response = self._server().get(path, range_header(offset, length), self._timeout)
        except Exception as error:
            raise translate(error) from None
        if response.status not in (200, 206):
            body = response.data
            response.release_conn()
            if response.status == 416:  # an offset at the end: nothing left
                yield BodyReader(None, translate)  # type: ignore[misc]
                return
            failure = self._rc_error(what, RcError(response.status, error_text(body)))
            if isinstance(failure, NotFound):
                # rclone's object server answers 404 to any failure to open: only stat can tell.
                self.stat(handle)
                failure = TransientError(f"{self.description}: {what}: rclone could not open it "
                                         f"({error_text(body)})")
            raise failure
        with streamed(response, translate) as reader:
            yield reader

    def save(self, handle: Handle, source: BinaryIO) -> int:
        path = _local_file(source)
        if path is not None:
            size = copy_verified(handle, source, lambda chunk: None)
            self._copy_file(handle, path, size)
            return size
        try:
            descriptor, spooled = tempfile.mkstemp(prefix="triplicate-rclone-save.")
        except OSError as error:
            raise StorageError(f"{self.description}: saving {handle}: no temporary file "
                               f"({error.strerror or error})") from None
        try:
            with os.fdopen(descriptor, "wb") as out:
                size = copy_verified(handle, source, out.write)
            self._copy_file(handle, Path(spooled), size)
            return size
        except OSError as error:
            raise StorageError(f"{self.description}: saving {handle}: writing the temporary file failed "
                               f"({error.strerror or error})") from None
        finally:
            Path(spooled).unlink(missing_ok=True)

    def stat(self, handle: Handle) -> FileInfo:
        answer = self._call("operations/stat", f"stat {handle}", fs=self.repository, remote=handle.relative_path())
        item = answer.get("item")
        if not item:
            raise NotFound(f"{self.description}: stat {handle}: does not exist")
        return FileInfo(handle.name, _size(item), _rclone_time(item.get("ModTime")))

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
            server, self._rclone = self._rclone, None
        if server is not None:
            rclone_server.release(server)

    # -- the rclone server ------------------------------------------------------------------

    def _copy_file(self, handle: Handle, path: Path, size: int) -> None:
        """rclone copies the local file ``path`` to the handle's place (replacing what is there).

        rclone writes some remotes (a local disk, SFTP) in place under the final name,
        and a failed copy can leave a short file there (an empty one when the disk is
        too full to preallocate): it is removed before the error is raised.
        """
        what = f"saving {handle}"
        try:
            with self._server().copying():
                self._run_job(what, "operations/copyfile", srcFs=str(path.parent), srcRemote=path.name,
                              dstFs=self.repository, dstRemote=handle.relative_path())
        except StorageError as error:
            try:
                self.remove(handle)
            except StorageError:
                pass  # the error to report is the copy's; the mirror's size check catches a leftover
            if isinstance(error, NotFound) and path.exists():
                raise StorageError(f"{self.description}: {what}: rclone found no such folder on the far side "
                                   f"({error})") from None
            raise

    def _run_job(self, what: str, method: str, **params: Any) -> None:
        """Run an rc call as a job and wait for it, however long it takes while it makes progress.

        Copies run side by side and share the uplink, so no deadline fits them all:
        a job that has moved no byte for the location's timeout is stopped (and
        waited for, so that its clean-up cannot race a retry) and the save fails as
        transient.
        """
        job = int(self._call(method, what, _async=True, **params)["jobid"])
        group = f"job/{job}"
        delay, moved, last_check = 0.002, 0, time.monotonic()
        last_progress = last_check
        try:
            while True:
                status = self._call("job/status", what, jobid=job)
                if status.get("finished"):
                    break
                time.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
                now = time.monotonic()
                if now - last_check < min(_STALL_CHECK, self._timeout):
                    continue
                last_check = now
                before, moved = moved, int(self._call("core/stats", what, group=group).get("bytes") or 0)
                if moved != before:
                    last_progress = now
                elif now - last_progress >= self._timeout:
                    self._call("job/stop", what, jobid=job)
                    self._await_finished(job, what)
                    raise TransientError(f"{self.description}: {what}: no progress for "
                                         f"{self._timeout:.0f}s (stopped at {moved} bytes)")
        finally:
            try:
                self._call("core/stats-delete", what, group=group)  # rclone keeps a group's stats until then
            except StorageError:
                pass
        if not status.get("success"):
            raise self._rc_error(what, RcError(0, str(status.get("error") or "the job failed")))

    def _await_finished(self, job: int, what: str) -> None:
        deadline = time.monotonic() + _STOP_WAIT
        while time.monotonic() < deadline and not self._call("job/status", what, jobid=job).get("finished"):
            time.sleep(0.05)

    def _call(self, method: str, what: str, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """One rc call; returns its answer. Raises NotFound, StorageError or TransientError."""
        server = self._server()
        try:
            return server.call(method, params, timeout or self._timeout)
        except RcError as error:
            raise self._rc_error(what, error) from None
        except Exception as error:
            raise self._storage_error(what, error) from None

    def _rc_error(self, what: str, error: RcError) -> StorageError:
        where = f"{self.description}: {what}"
        message = error.message
        lowered = message.lower()
        if error.status == 404 or ("not found" in lowered and "section" not in lowered
                                   and "backend called" not in lowered):
            return NotFound(f"{where}: does not exist")
        if any(sign in lowered for sign in _DISK_FULL):
            return StorageError(f"{where}: disk full on the far side ({message})")
        if error.status == 401:
            return StorageError(f"{where}: rclone refused our password (401)")
        if error.status == 400 or any(sign in lowered for sign in _PERMANENT):
            return StorageError(f"{where}: rclone cannot reach {self.remote}: {message}")
        # rclone has already retried low-level errors itself; ours retries the call as a whole.
        return TransientError(f"{where}: rclone failed ({message})")

    def _storage_error(self, what: str, error: Exception) -> StorageError:
        if isinstance(error, StorageError):
            return error
        server = self._rclone
        if server is not None and not server.running:
            return StorageError(f"{self.description}: {what}: {server.stopped_error()}")
        return TransientError(f"{self.description}: {what}: rclone did not answer ({error})")

    def _server(self) -> RcloneServer:
        """The running rclone of this location's configuration file; started on first use."""
        with self._lock:
            if self._rclone is None:
                try:
                    self._rclone = rclone_server.acquire(self.rclone_config, self.bwlimit, self.location,
                                                         self.state_dir)
                except StorageError as error:
                    raise StorageError(f"{self.description}: {error}") from None
            if not self._rclone.running:
                raise StorageError(f"{self.description}: {self._rclone.stopped_error()}")
            return self._rclone


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
        # The real path: rclone copies a symbolic link as a link, not what it points to.
        return Path(os.path.realpath(name)) if os.path.samestat(opened, os.stat(name)) else None
    except (OSError, ValueError, AttributeError):
        return None


def _size(entry: dict[str, Any]) -> int | None:
    """A listed size; None when rclone does not know it (-1)."""
    size = int(entry.get("Size", 0))
    return size if size >= 0 else None


def _rclone_time(value: Any) -> float | None:
    """rclone's RFC 3339 times (nanoseconds included) as a timestamp."""
    if not isinstance(value, str) or not value:
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None
