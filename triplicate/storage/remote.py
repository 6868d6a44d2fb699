"""Pieces the remote backends (SFTP, S3, REST) share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from triplicate.storage.backend import FileInfo, NotFound, StorageError
from triplicate.storage.handle import FileType, Handle


def list_config(stat: Callable[[Handle], FileInfo]) -> Iterator[FileInfo]:
    """The listing of the config type: the config file when it exists, else nothing."""
    try:
        yield stat(Handle(FileType.CONFIG))
    except NotFound:
        pass


class BodyReader:
    """A response body being streamed (``body.read(size)``); its network failures become StorageErrors.

    ``body`` None reads as empty (a range starting at the end of the file).
    """

    def __init__(self, body: Any, translate: Callable[[Exception], StorageError]) -> None:
        self._body = body
        self._translate = translate

    def read(self, size: int = -1) -> bytes:
        if self._body is None:
            return b""
        try:
            data: bytes = self._body.read(None if size < 0 else size)
            return data
        except Exception as error:
            raise self._translate(error) from None


def range_header(offset: int, length: int | None) -> dict[str, str]:
    """The HTTP ``Range`` header for a load from ``offset`` for ``length`` bytes (none for a whole file)."""
    if not offset and length is None:
        return {}
    end = "" if length is None else str(offset + length - 1)
    return {"Range": f"bytes={offset}-{end}"}


@contextmanager
def streamed(response: Any, translate: Callable[[Exception], StorageError]) -> Iterator[BinaryIO]:
    """A urllib3 response's body as a reader; its connection is reused only when read to the end."""
    try:
        yield BodyReader(response, translate)  # type: ignore[misc]
    finally:
        if response.length_remaining:
            response.close()
        else:
            response.release_conn()
