"""Retries with backoff around any backend (restic's RetryBackend, in spirit).

Backends raise :class:`TransientError` for what may go away by itself (a timeout,
a reset connection, a 5xx answer, a server that is restarting) and plain
StorageError for what will not (wrong credentials, a missing bucket, a full
disk). Only the first kind is retried, and only here: no backend retries on its
own, so a failure is never retried twice over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import BinaryIO, TypeVar

from triplicate.storage.backend import Backend, FileInfo, StorageError
from triplicate.storage.handle import FileType, Handle

log = logging.getLogger("triplicate.storage.retry")
T = TypeVar("T")

# Four tries over about 3.5 s: a replica that stays unreachable longer is retried
# by the next run (the daemon has its own, much longer, backoff per location).
ATTEMPTS = 4
FIRST_DELAY = 0.5
MAX_DELAY = 8.0
MAX_RESUMES = 8  # times one load may resume a broken stream


class TransientError(StorageError):
    """A failure that may not happen again: worth retrying after a pause."""


class RetryingBackend:
    """Wraps ``backend``: transient failures are retried ``attempts`` times in all, with backoff.

    A save is retried only when its source can be rewound (a file); a load that
    fails half-way resumes where it stopped, so callers never see a transient
    error that a later try overcame.
    """

    def __init__(self, backend: Backend, attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY,
                 max_delay: float = MAX_DELAY, sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.description = backend.description
        self.connections = backend.connections
        self._attempts = max(1, attempts)
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._sleep = sleep

    def _retry(self, what: str, operation: Callable[[], T], rewind: Callable[[], None] | None = None) -> T:
        """Run ``operation`` until it does not raise TransientError; re-raises the last one."""
        delay = self._first_delay
        for attempt in range(1, self._attempts + 1):
            try:
                return operation()
            except TransientError as error:
                if attempt == self._attempts:
                    if self._attempts == 1:
                        raise
                    raise TransientError(f"{error} (tried {attempt} times)") from None
                log.info("%s: %s failed (%s); try %d of %d in %.1fs",
                         self.description, what, error, attempt + 1, self._attempts, delay)
                # Backoff between tries of a remote operation, not synchronisation.
                self._sleep(delay)
                delay = min(delay * 2, self._max_delay)
                if rewind is not None:
                    rewind()
        raise AssertionError("unreachable")

    def prepare(self, create: bool) -> None:
        self._retry("prepare", lambda: self.backend.prepare(create))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        # Collected before yielding: a listing retried half-way must still name each file once.
        return iter(self._retry(f"listing {file_type.value}", lambda: list(self.backend.list(file_type))))

    @contextmanager
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> Iterator[BinaryIO]:
        reader = _ResumingReader(self, handle, offset, length)
        try:
            reader.open()
            yield reader  # type: ignore[misc]
        finally:
            reader.close()

    def save(self, handle: Handle, source: BinaryIO) -> int:
        start = _position(source)
        rewind: Callable[[], None] | None = None
        if start is not None:
            def rewind() -> None:
                source.seek(start)
        if rewind is None:
            return self.backend.save(handle, source)
        return self._retry(f"saving {handle}", lambda: self.backend.save(handle, source), rewind)

    def stat(self, handle: Handle) -> FileInfo:
        return self._retry(f"stat {handle}", lambda: self.backend.stat(handle))

    def remove(self, handle: Handle) -> None:
        self._retry(f"removing {handle}", lambda: self.backend.remove(handle))

    def discard_partial_saves(self) -> None:
        self._retry("discarding partial saves", self.backend.discard_partial_saves)

    def close(self) -> None:
        self.backend.close()


class _ResumingReader:
    """Reads a file through the wrapped backend; a transient failure re-opens it where it stopped."""

    def __init__(self, owner: RetryingBackend, handle: Handle, offset: int, length: int | None) -> None:
        self._owner = owner
        self._handle = handle
        self._offset = offset
        self._length = length
        self._done = 0
        self._resumes = 0
        self._stack: ExitStack | None = None
        self._file: BinaryIO | None = None

    def open(self) -> None:
        """(Re)open from the current position; raises StorageError (NotFound...) after retries."""

        def attempt() -> None:
            self._drop()
            remaining = None if self._length is None else self._length - self._done
            stack = ExitStack()
            try:
                self._file = stack.enter_context(
                    self._owner.backend.load(self._handle, self._offset + self._done, remaining))
            except BaseException:
                stack.close()
                raise
            self._stack = stack

        self._owner._retry(f"loading {self._handle}", attempt)

    def read(self, size: int = -1) -> bytes:
        while True:
            try:
                assert self._file is not None
                data = self._file.read(size)
            except TransientError:
                # Resume where the stream broke, but not forever: a server that opens
                # files and then times out on every read must fail the run, so that the
                # daemon's backoff (and its notification) takes over.
                self._resumes += 1
                if self._resumes > MAX_RESUMES:
                    raise
                self.open()
                continue
            self._done += len(data)
            return data

    def _drop(self) -> None:
        if self._stack is not None:
            try:
                self._stack.close()
            except StorageError:
                pass  # closing a broken stream: what mattered was already read or lost
            self._stack = None
            self._file = None

    def close(self) -> None:
        self._drop()


def _position(source: BinaryIO) -> int | None:
    """Where a rewindable source stands now; None when it cannot be rewound."""
    try:
        if source.seekable():
            return source.tell()
    except (AttributeError, OSError, ValueError):
        pass
    return None
