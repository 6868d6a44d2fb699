"""A repository on another machine over SFTP (asyncssh), host keys always verified.

One event loop thread per backend runs up to ``ssh_connections`` SSH
connections; the mirror's worker threads share them (an SFTP session carries
many requests at once, and asyncssh splits each read and write into parallel
requests). A save goes to ``<repo>/.triplicate-partial/<random>``, is hashed on
the way, fsynced (fsync@openssh.com) and renamed into place with
posix-rename@openssh.com: a final name only ever holds a complete, verified file.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
import stat as stat_module
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import asyncssh

from triplicate.storage.backend import (
    CHUNK_SIZE,
    FileInfo,
    NoRepository,
    NotAFolder,
    NotFound,
    StorageError,
    copy_verified,
)
from triplicate.storage.eventloop import LoopThread
from triplicate.storage.handle import FileType, Handle, is_id
from triplicate.storage.remote import list_config
from triplicate.storage.retry import TransientError

T = TypeVar("T")
PARTIAL_DIR = ".triplicate-partial"
_HEX2 = frozenset(f"{value:02x}" for value in range(256))
# Folders listed at once when listing data/ (its 256 sub-folders).
_LIST_CONCURRENCY = 32
# What says the SSH connection itself is gone (its session is then replaced).
_CONNECTION_FAILURES = (asyncssh.DisconnectError, asyncssh.ConnectionLost, asyncssh.SFTPConnectionLost,
                        asyncssh.SFTPNoConnection, asyncssh.ChannelOpenError, OSError)
ENCRYPTION_PREFERENCE = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                         "aes128-ctr", "aes192-ctr", "aes256-ctr")


@dataclass(frozen=True)
class SftpTarget:
    """Where and how to connect: the location's settings, resolved."""

    host: str
    port: int
    user: str | None
    path: str  # the location's folder on the server
    identity_file: Path | None
    known_hosts_file: Path


@dataclass(eq=False)
class _Session:
    connection: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    active: int = 0
    broken: bool = False


class SftpBackend:
    """The repository ``<target.path>/<client>`` on an SFTP server."""

    def __init__(self, target: SftpTarget, client: str, description: str, connections: int = 4,
                 ssh_connections: int | None = None, timeout: float = 120.0) -> None:
        self.target = target
        self.root = posixpath.join(target.path, client)
        self.description = description
        self.connections = connections
        self._max_sessions = max(1, ssh_connections or connections)
        self._timeout = timeout
        self._loop: LoopThread | None = None
        self._sessions: list[_Session] = []
        self._pool_lock: asyncio.Lock | None = None
        self._credentials: tuple[Any, Any] | None = None
        self._known_dirs: set[str] = set()

    # -- the Backend protocol -------------------------------------------------------------

    def prepare(self, create: bool) -> None:
        # The location folder first: a missing one (a disk not mounted over there) is unreachable,
        # not a location that holds nothing yet.
        try:
            attributes = self._run("checking the location folder", lambda sftp: sftp.stat(self.target.path))
        except NotFound:
            raise StorageError(f"{self.description}: location folder {self.target.path} does not exist "
                               f"on {self.target.host}; triplicate never creates it") from None
        if attributes.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise StorageError(f"{self.description}: {self.target.path} is not a folder")
        if create:
            self._make_dir(self.root)
        else:
            try:
                attributes = self._run("opening the repository", lambda sftp: sftp.stat(self.root))
            except NotFound:
                raise NoRepository(f"{self.description}: no repository at {self.root}") from None
            if attributes.type != asyncssh.FILEXFER_TYPE_DIRECTORY:  # no run can ever write there: a fault
                raise NotAFolder(f"{self.description}: {self.root} is not a folder: nothing can be "
                                   "replicated there (move it aside)")

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            yield from list_config(self.stat)
            return
        folder = posixpath.join(self.root, file_type.value)
        what = f"listing {file_type.value}"
        if file_type is FileType.DATA:
            yield from self._run(what, lambda sftp: _list_data(sftp, folder))
        else:
            yield from self._run(what, lambda sftp: _list_folder(sftp, folder))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        path = self._path(handle)
        session = self._call(f"loading {handle}", self._acquire())
        try:
            file = self._call(f"loading {handle}", session.sftp.open(path, "rb"), session)
            try:
                yield _Reader(self, session, file, str(handle), offset, length)  # type: ignore[misc]
            finally:
                self._quietly(file.close())
        finally:
            self._release(session)

    def save(self, handle: Handle, source: BinaryIO) -> int:
        what = f"saving {handle}"
        partial_dir = posixpath.join(self.root, PARTIAL_DIR)
        partial = posixpath.join(partial_dir, f"{handle.name[:12] or 'config'}.{secrets.token_hex(8)}")
        target = self._path(handle)
        session = self._call(what, self._acquire())
        try:
            try:
                file = self._call(what, session.sftp.open(partial, "wb"), session)
            except NotFound:  # first save: make the partial folder
                self._make_dir(partial_dir)
                file = self._call(what, session.sftp.open(partial, "wb"), session)
            try:
                size = self._write_verified(handle, source, session, file)
                self._call(what, _fsync(file), session)
            finally:
                self._quietly(file.close())
            self._rename_into_place(session, partial, target, what)
        except BaseException as error:
            self._quietly(session.sftp.remove(partial))
            if isinstance(error, NotFound):  # for a save, a missing folder is a failure, not a missing file
                raise StorageError(f"{self.description}: {what}: a folder of the repository is missing") from None
            if isinstance(error, StorageError) and not isinstance(error, TransientError):
                raise self._explain_failure(error) from None
            raise
        finally:
            self._release(session)
        return size

    def stat(self, handle: Handle) -> FileInfo:
        attributes = self._run(f"stat {handle}", lambda sftp: sftp.stat(self._path(handle)))
        return FileInfo(handle.name, attributes.size or 0, attributes.mtime)

    def remove(self, handle: Handle) -> None:
        try:
            self._run(f"removing {handle}", lambda sftp: sftp.remove(self._path(handle)))
        except NotFound:
            pass

    def discard_partial_saves(self) -> None:
        partial_dir = posixpath.join(self.root, PARTIAL_DIR)

        async def discard(sftp: asyncssh.SFTPClient) -> None:
            try:
                names = await sftp.listdir(partial_dir)
            except asyncssh.SFTPNoSuchFile:
                return
            for name in names:
                if name not in (".", ".."):
                    try:
                        await sftp.remove(posixpath.join(partial_dir, name))
                    except asyncssh.SFTPNoSuchFile:
                        pass

        self._run("discarding partial saves", discard)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop(self._close_sessions())
            self._loop = None

    # -- helpers ----------------------------------------------------------------------------

    def _path(self, handle: Handle) -> str:
        return posixpath.join(self.root, handle.relative_path())

    def _write_verified(self, handle: Handle, source: BinaryIO, session: _Session,
                        file: asyncssh.SFTPClientFile) -> int:
        """Stream ``source`` into ``file``; one write in flight while the next chunk is read and hashed."""
        pending: Future[int] | None = None
        offset = 0
        what = f"saving {handle}"

        def write(chunk: memoryview) -> None:
            nonlocal pending, offset
            data = bytes(chunk)  # the reader reuses its buffer: the write in flight needs its own
            if pending is not None:
                self._wait(what, pending, session)
            pending = self._loop_thread().submit(file.write(data, offset))
            offset += len(data)

        try:
            size = copy_verified(handle, source, write)
            if pending is not None:
                self._wait(what, pending, session)
                pending = None
        finally:
            if pending is not None:
                pending.cancel()
        return size

    def _rename_into_place(self, session: _Session, partial: str, target: str, what: str) -> None:
        folder = posixpath.dirname(target)
        if folder != self.root and folder not in self._known_dirs:
            self._make_dir(folder)
        self._call(what, session.sftp.posix_rename(partial, target), session)

    def _make_dir(self, path: str) -> None:
        """Create ``path`` unless it is there already, and its parents inside the repository."""

        async def make(sftp: asyncssh.SFTPClient, folder: str) -> None:
            try:
                await sftp.mkdir(folder, asyncssh.SFTPAttrs(permissions=0o700))
            except asyncssh.SFTPNoSuchFile:
                if folder == self.root:  # never make the location's folder itself
                    raise
                await make(sftp, posixpath.dirname(folder))
                await make(sftp, folder)
            except asyncssh.SFTPFailure:  # OpenSSH's answer when it exists already
                if not await sftp.isdir(folder):
                    raise

        if path not in self._known_dirs:
            self._run(f"creating {path}", lambda sftp: make(sftp, path))
            self._known_dirs.add(path)

    def _explain_failure(self, error: StorageError) -> StorageError:
        """SFTP version 3 says only "Failure" for a full disk: ask the server how much space is left."""
        if "Failure" not in str(error):
            return error
        try:
            space = self._run("checking free space", lambda sftp: sftp.statvfs(self.root))
        except StorageError:
            return error
        if space.bavail * space.frsize < 4 * CHUNK_SIZE:
            return StorageError(f"{self.description}: disk full on {self.target.host} "
                                f"({space.bavail * space.frsize} bytes free in {self.target.path})")
        return error

    # -- the loop and its sessions --------------------------------------------------------

    def _loop_thread(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread(f"sftp {self.target.host}")
        return self._loop

    def _run(self, what: str, operation: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        """Run one operation on a pooled session; raises StorageError (NotFound, TransientError)."""

        async def on_session() -> T:
            session = await self._acquire()
            try:
                return await operation(session.sftp)
            except _CONNECTION_FAILURES:
                session.broken = True
                raise
            finally:
                self._release_in_loop(session)

        return self._call(what, on_session())

    def _call(self, what: str, coroutine: Awaitable[T], session: _Session | None = None) -> T:
        try:
            return self._loop_thread().call(coroutine, self._timeout)
        except Exception as error:
            raise self._storage_error(what, error, session) from None

    def _wait(self, what: str, future: Future[T], session: _Session) -> T:
        try:
            return future.result(self._timeout)
        except Exception as error:
            future.cancel()
            raise self._storage_error(what, error, session) from None

    def _quietly(self, coroutine: Awaitable[object]) -> None:
        """Run a clean-up step whose failure changes nothing (closing, removing a partial file)."""
        try:
            self._loop_thread().call(coroutine, self._timeout)
        except Exception:
            pass

    async def _acquire(self) -> _Session:
        """The least busy session; a new connection while there are fewer than the limit and all are busy."""
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            self._sessions = [session for session in self._sessions if not session.broken]
            idle = min(self._sessions, key=lambda session: session.active, default=None)
            if idle is None or (idle.active and len(self._sessions) < self._max_sessions):
                idle = await self._connect()
                self._sessions.append(idle)
            idle.active += 1
            return idle

    def _release(self, session: _Session) -> None:
        self._loop_thread().loop.call_soon_threadsafe(self._release_in_loop, session)

    def _release_in_loop(self, session: _Session) -> None:
        session.active -= 1
        if session.broken and not session.active:
            session.connection.close()

    async def _connect(self) -> _Session:
        known_hosts, client_keys = self._load_credentials()
        options: dict[str, Any] = {
            "port": self.target.port,
            "known_hosts": known_hosts,
            "config": None,  # the location's settings alone decide, as for restic's ssh (see __init__)
            "connect_timeout": min(self._timeout, 30),
            "keepalive_interval": 15,
            "keepalive_count_max": 4,
            # AES-GCM first: with the processor's AES instructions it moved packs about 20%
            # faster than asyncssh's default ChaCha20 here (docs/benchmarks-remote.md).
            "encryption_algs": ENCRYPTION_PREFERENCE,
        }
        if self.target.user:
            options["username"] = self.target.user
        if client_keys is not None:
            options["client_keys"] = client_keys
            options["agent_path"] = None
        connection = await asyncssh.connect(self.target.host, **options)
        try:
            sftp = await connection.start_sftp_client()
        except BaseException:
            connection.close()
            raise
        return _Session(connection, sftp)

    def _load_credentials(self) -> tuple[Any, Any]:
        """Read known_hosts and the identity once; errors are permanent StorageErrors."""
        if self._credentials is None:
            try:
                known_hosts = asyncssh.read_known_hosts(str(self.target.known_hosts_file))
            except (OSError, ValueError) as error:
                raise StorageError(f"known_hosts_file {self.target.known_hosts_file}: cannot read "
                                   f"({getattr(error, 'strerror', None) or error}); host keys must be verified"
                                   ) from None
            client_keys = None
            if self.target.identity_file is not None:
                try:
                    client_keys = [asyncssh.read_private_key(str(self.target.identity_file))]
                except (OSError, asyncssh.KeyImportError) as error:
                    raise StorageError(f"identity_file {self.target.identity_file}: cannot read "
                                       f"({getattr(error, 'strerror', None) or error})") from None
            self._credentials = (known_hosts, client_keys)
        return self._credentials

    async def _close_sessions(self) -> None:
        for session in self._sessions:
            session.connection.close()
        for session in self._sessions:
            await session.connection.wait_closed()
        self._sessions = []

    def _storage_error(self, what: str, error: BaseException, session: _Session | None) -> StorageError:
        """Translate asyncssh's and the network's exceptions; marks a dead session as broken."""
        where = f"{self.description}: {what}"
        target = f"{self.target.host}:{self.target.port}"
        if isinstance(error, StorageError):
            return error
        if isinstance(error, (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath)):
            return NotFound(f"{where}: does not exist")
        if isinstance(error, asyncssh.HostKeyNotVerifiable):
            return StorageError(f"{where}: the host key of {target} is not in {self.target.known_hosts_file}; "
                                "refusing to connect (check its fingerprint, then add it)")
        if isinstance(error, asyncssh.PermissionDenied):
            user = self.target.user or "the current user"
            return StorageError(f"{where}: authentication failed on {target} as {user} (check identity_file)")
        if isinstance(error, asyncssh.SFTPPermissionDenied):
            return StorageError(f"{where}: permission denied")
        if isinstance(error, (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded)):
            return StorageError(f"{where}: disk full on {self.target.host}")
        if isinstance(error, asyncssh.SFTPError) and not isinstance(
                error, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
            return StorageError(f"{where}: the server answered {error.reason or 'Failure'!r}")
        if session is not None:
            session.broken = True
        if isinstance(error, (*_CONNECTION_FAILURES, TimeoutError, asyncio.TimeoutError, EOFError)):
            return TransientError(f"{where}: connection to {target} failed ({_reason(error)})")
        if isinstance(error, asyncssh.Error):
            return StorageError(f"{where}: {_reason(error)}")
        return StorageError(f"{where}: {error!r}")


class _Reader:
    """A file being read over SFTP, a megabyte per request (asyncssh splits it into parallel reads)."""

    def __init__(self, backend: SftpBackend, session: _Session, file: asyncssh.SFTPClientFile, what: str,
                 offset: int, length: int | None) -> None:
        self._backend = backend
        self._session = session
        self._file = file
        self._what = f"loading {what}"
        self._position = offset
        self._remaining = length

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = []
            while part := self.read(CHUNK_SIZE):
                parts.append(part)
            return b"".join(parts)
        if self._remaining is not None:
            size = min(size, self._remaining)
        if size == 0:
            return b""
        # The file is opened in binary mode: asyncssh's read gives bytes (typed as str or bytes).
        data = cast(bytes, self._backend._call(self._what, self._file.read(size, self._position), self._session))
        self._position += len(data)
        if self._remaining is not None:
            self._remaining -= len(data)
        return data


async def _fsync(file: asyncssh.SFTPClientFile) -> None:
    """Flush to the server's disk when it offers fsync@openssh.com; other servers cannot."""
    try:
        await file.fsync()
    except asyncssh.SFTPOpUnsupported:
        pass


def _info(entry: asyncssh.SFTPName) -> FileInfo | None:
    attributes = entry.attrs
    name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode()
    regular = attributes.type == asyncssh.FILEXFER_TYPE_REGULAR or (
        attributes.permissions is not None and stat_module.S_ISREG(attributes.permissions))
    if not regular or not is_id(name):
        return None
    return FileInfo(name, attributes.size or 0, attributes.mtime)


async def _list_folder(sftp: asyncssh.SFTPClient, folder: str) -> list[FileInfo]:
    try:
        entries = await sftp.readdir(folder)
    except asyncssh.SFTPNoSuchFile:
        return []
    return [info for entry in entries if (info := _info(entry)) is not None]


async def _list_data(sftp: asyncssh.SFTPClient, folder: str) -> list[FileInfo]:
    """data/ has up to 256 sub-folders: list them concurrently, not one round trip after another."""
    try:
        entries = await sftp.readdir(folder)
    except asyncssh.SFTPNoSuchFile:
        return []
    subfolders = [entry.filename for entry in entries
                  if entry.filename in _HEX2 and entry.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY]
    limit = asyncio.Semaphore(_LIST_CONCURRENCY)

    async def one(name: str) -> list[FileInfo]:
        async with limit:
            return await _list_folder(sftp, posixpath.join(folder, name))

    found: list[FileInfo] = []
    for infos in await asyncio.gather(*(one(str(name)) for name in subfolders)):
        found += infos
    return found


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    text = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
    return str(text) or type(error).__name__
