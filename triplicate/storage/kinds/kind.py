"""What a kind of location declares (``LocationKind``) and what it is given (``Opening``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from triplicate.config.types import LocationSettings

if TYPE_CHECKING:
    from triplicate.storage.backend import Backend

SettingsT = TypeVar("SettingsT", bound=LocationSettings)


@dataclass(frozen=True)
class Opening:
    """One client's replica at one configured location, as the kind needs to know it."""

    location: str  # the location's configured name
    client: str
    workers: int  # files copied at once (the location's, else the server's)
    state_dir: Path  # the server's state folder, for files a kind must keep (an ssh wrapper)


@dataclass(frozen=True)
class ResticTarget:
    """How restic itself opens a repository: give ``repository`` as RESTIC_REPOSITORY (never
    ``-r``: a REST location's string holds its password), add ``environment`` to restic's,
    and mask every one of ``secrets`` in logs and messages."""

    repository: str
    environment: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LocationKind(Generic[SettingsT]):
    """A kind of location: its ``type`` name, its section, and two functions.

    ``open`` returns the backend of one client's replica; it does no I/O and never fails
    (an unreachable server surfaces from the backend's first call). ``restic`` returns
    how restic reaches the same replica; it raises StorageError when a credentials file
    cannot be read. ``remote`` kinds are wrapped in the retrying backend. An
    ``own_bandwidth`` kind is given the location's ``bwlimit`` by its ``open`` (its program
    copies the files itself): the throttling wrapper then leaves its sources alone.
    """

    name: str
    settings: type[SettingsT]
    open: Callable[[SettingsT, Opening], Backend]
    restic: Callable[[SettingsT, Opening], ResticTarget]
    remote: bool = True
    own_bandwidth: bool = False
