"""Pieces the remote backends (SFTP, S3, REST) share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

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
        except Exception as error:  # noqa: BLE001 - every failure becomes a StorageError
            raise self._translate(error) from None
