"""The storage interface every kind of location implements.

Modelled on restic's ``internal/backend``: list a file type with sizes, load
(streaming, with a range), save (atomic, verified), stat, remove. Cross-cutting
behaviour (verification of content-addressed files) is shared code here, not a
flag inside each implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

from triplicate.errors import TriplicateError
from triplicate.storage.handle import FileType, Handle

CHUNK_SIZE = 1 << 20


class FileInfo:
    """A listed file: its name (a 64-hex ID, or "" for config), size and modification time.

    A backend that learns size and time only by asking again (a local folder: one
    stat per file) subclasses this and overrides ``_resolve``, called on first use,
    so that a listing that only needs names (the replica's side of a diff) costs
    no stat.
    """

    __slots__ = ("_mtime", "_size", "name")

    def __init__(self, name: str, size: int | None = 0, mtime: float | None = None) -> None:
        self.name = name
        self._size: int | None = size
        self._mtime = mtime

    def _resolve(self) -> None:
        """Fill ``_size`` and ``_mtime`` when they are None."""

    @property
    def size(self) -> int:
        if self._size is None:
            self._resolve()
        return self._size or 0

    @property
    def known_size(self) -> int | None:
        """The size when the listing gave it, None when learning it would cost a stat."""
        return self._size

    @property
    def mtime(self) -> float | None:
        if self._size is None:
            self._resolve()
        return self._mtime

    def __repr__(self) -> str:
        return f"FileInfo({self.name!r}, size={self.size}, mtime={self.mtime})"


class StorageError(TriplicateError):
    """A location could not do what was asked (unreachable, denied, full...)."""


class NotFound(StorageError):
    """The file does not exist at the location."""


class NoRepository(StorageError):
    """The location is there but holds no repository for the client (nothing replicated yet)."""


class NotAFolder(NoRepository):
    """Something other than a folder is where the client's folder goes: no repository there, and
    no run can ever write one (a fault to report, not "nothing replicated yet")."""


class UnreadableFile(StorageError):
    """One file is there but cannot be read as a file (not a regular file, denied, a read error).

    The location itself may be fine: the other files can still be copied.
    """


class SourceReadError(StorageError):
    """Reading what was being saved failed; nothing was saved."""


class CorruptContent(StorageError):
    """Content did not hash to the file's name: nothing was saved."""

    def __init__(self, handle: Handle, actual: str) -> None:
        self.handle = handle
        self.actual = actual
        super().__init__(f"{handle}: content hashes to {actual[:16]}..., not to its name")


class Backend(Protocol):
    """One restic repository at one place.

    Contracts, as in restic:
    - ``list`` yields every file of a type exactly once; only final names (64 hex,
      or config) appear; a missing type folder is an empty listing.
    - ``load`` opens a file for streaming reads, from ``offset`` for ``length`` bytes
      (all of it when None); raises NotFound.
    - ``save`` stores a whole file atomically: it reads ``source`` to its end and the
      file appears under its final name only once complete and durable. For a
      content-addressed handle the content is hashed on the way and a mismatch
      raises CorruptContent and leaves nothing behind.
    - ``stat`` returns the file's FileInfo; raises NotFound.
    - ``remove`` deletes a file; removing a missing file is not an error.
    """

    description: str
    connections: int

    def prepare(self, create: bool) -> None:
        """Check the location is reachable; with ``create``, make the repository's folder."""

    def list(self, file_type: FileType) -> Iterator[FileInfo]: ...

    def load(
        self, handle: Handle, offset: int = 0, length: int | None = None
    ) -> AbstractContextManager[BinaryIO]: ...

    def save(self, handle: Handle, source: BinaryIO) -> int: ...

    def stat(self, handle: Handle) -> FileInfo: ...

    def remove(self, handle: Handle) -> None: ...

    def discard_partial_saves(self) -> None:
        """Remove what saves interrupted by a crash left behind (never a final name)."""

    def close(self) -> None: ...


class Forwarding:
    """A wrapper around a backend that passes every call on: a cross-cutting wrapper (bandwidth
    limits, a test's injected faults) subclasses it and overrides only what it changes."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.description = backend.description
        self.connections = backend.connections

    def prepare(self, create: bool) -> None:
        self.backend.prepare(create)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        return self.backend.list(file_type)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> AbstractContextManager[BinaryIO]:
        return self.backend.load(handle, offset, length)

    def save(self, handle: Handle, source: BinaryIO) -> int:
        return self.backend.save(handle, source)

    def stat(self, handle: Handle) -> FileInfo:
        return self.backend.stat(handle)

    def remove(self, handle: Handle) -> None:
        self.backend.remove(handle)

    def discard_partial_saves(self) -> None:
        self.backend.discard_partial_saves()

    def close(self) -> None:
        self.backend.close()


def stream(source: BinaryIO, write: Callable[[memoryview], object], digest: hashlib._Hash | None = None) -> int:
    """Copy ``source`` to its end into ``write`` in 1 MiB chunks, feeding ``digest``; return bytes."""
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    total = 0
    readinto = getattr(source, "readinto", None)
    while True:
        try:
            if readinto is not None:
                count = readinto(buffer)
                chunk = view[:count] if count else view[:0]
            else:
                data = source.read(CHUNK_SIZE)
                count = len(data)
                chunk = memoryview(data)
        except OSError as error:
            raise SourceReadError(f"reading the source failed: {error.strerror or error}") from None
        if not count:
            return total
        if digest is not None:
            digest.update(chunk)
        write(chunk)
        total += count


def copy_verified(handle: Handle, source: BinaryIO, write: Callable[[memoryview], object]) -> int:
    """Stream ``source`` into ``write``, hashing on the way; return the byte count.

    For a content-addressed handle, raises CorruptContent after the last chunk
    when the SHA-256 is not the handle's name, so a caller that commits only
    after this returns never commits a bad file.
    """
    if not handle.content_addressed:
        return stream(source, write)
    digest = hashlib.sha256()
    total = stream(source, write, digest)
    if digest.hexdigest() != handle.name:
        raise CorruptContent(handle, digest.hexdigest())
    return total


def hash_file(backend: Backend, handle: Handle) -> tuple[str, int]:
    """Read a whole file once and return its SHA-256 (hex) and size."""
    digest = hashlib.sha256()
    with backend.load(handle) as source:
        size = stream(source, lambda chunk: None, digest)
    return digest.hexdigest(), size
