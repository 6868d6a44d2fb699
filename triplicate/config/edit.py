"""Changing clients in the configuration file while keeping its comments and layout (tomlkit).

An edit is validated as a whole before it is written, written atomically, and
refused when someone else changed the file since it was read.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from triplicate.config.load import load_config, parse_config
from triplicate.config.model import Config
from triplicate.errors import ConfigError, TriplicateError
from triplicate.fsutil import atomic_write


class ConfigEditor:
    """One read-modify-write of the configuration file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: Config = load_config(path)  # refuse to edit a file that is already invalid
        self.original = path.read_bytes()
        self.document = tomlkit.parse(self.original.decode("utf-8"))

    def _clients(self, create: bool) -> Any:
        if "clients" not in self.document:
            if not create:
                raise KeyError("clients")
            # A super table: only [clients.NAME] headers appear, no bare [clients].
            self.document["clients"] = tomlkit.table(is_super_table=True)
        return self.document["clients"]

    def add_client(self, name: str, values: dict[str, Any]) -> None:
        table = tomlkit.table()
        for key, value in values.items():
            table[key] = value
        self._clients(create=True)[name] = table

    def set_client(self, name: str, key: str, value: Any) -> None:
        client = self._clients(create=False)[name]
        client[key] = value

    def remove_client(self, name: str) -> None:
        clients = self._clients(create=False)
        del clients[name]
        if isinstance(clients, Table) and not clients.value:
            del self.document["clients"]

    def text(self) -> str:
        return tomlkit.dumps(self.document)

    def validated(self) -> Config:
        """The edited configuration; raises ConfigError listing its problems (nothing is written)."""
        return parse_config(self.text(), str(self.path))

    def save(self) -> Config:
        """Validate and write the edited file atomically, keeping its mode and owner; return it.

        Raises ConfigError when the result is invalid, TriplicateError when the file
        changed on disk since it was read.
        """
        config = self.validated()
        if self.path.read_bytes() != self.original:
            raise TriplicateError(f"{self.path}: changed by someone else meanwhile; nothing written, try again")
        status = self.path.stat()
        atomic_write(self.path, self.text(), mode=status.st_mode & 0o777)
        if os.geteuid() == 0 and (status.st_uid, status.st_gid) != (0, 0):
            os.chown(self.path, status.st_uid, status.st_gid)
        self.config = config
        return config


@contextmanager
def config_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the configuration file for one read-modify-write.

    Locks the file itself (creates nothing). An atomic write replaces the file's
    inode, so after waiting we make sure we hold the lock of the current file.
    """
    while True:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ConfigError([f"no configuration file (create one with 'triplicate -c {path} init')"],
                              str(path)) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    try:
        yield
    finally:
        os.close(descriptor)
