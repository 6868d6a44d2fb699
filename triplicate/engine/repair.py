"""Keyless repair across copies: which copy of each file is good, and copying from any good one.

Every restic file but ``config`` is named by the SHA-256 of its content, so any
copy that hashes to its name *is* the file, wherever it lies. ``survey`` hashes
every file of every copy (the primary and each location); ``fetch`` copies one
file from the first source whose content verifies on the way (the storage
layer's ``copy_verified``: a bad source is never written under the final name),
and ``in_write_order`` runs work phase by phase in restic's write order (keys,
data, index, snapshots) so that the repository written to stays valid after
every file.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

from triplicate.engine.mirror import Progress
from triplicate.engine.parallel import run_each
from triplicate.engine.verify import VERIFIED_TYPES, verify_files
from triplicate.state.audit import Verification
from triplicate.storage.backend import Backend, CorruptContent, FileInfo, NotFound, SourceReadError, StorageError
from triplicate.storage.handle import COPY_ORDER, FileType, Handle

Item = TypeVar("Item")


@dataclass
class Copy:
    """One copy of a client's repository: the primary or a location, with its listing."""

    name: str
    backend: Backend
    files: dict[FileType, dict[str, FileInfo]]


@dataclass
class CopyCheck:
    """What hashing every file of one copy found."""

    verified_files: int = 0
    verified_bytes: int = 0
    good: set[Handle] = field(default_factory=set)
    bad: dict[Handle, str] = field(default_factory=dict)  # handle -> "corrupt" or "unreadable"
    in_progress: int = 0  # mismatching but modified within the grace: not judged
    interrupted: bool = False
    stamps: list[Verification] = field(default_factory=list)  # for the audit's table


def check_copy(copy: Copy, *, workers: int, grace: float, known_bad: frozenset[Handle] = frozenset(),
               stop: threading.Event | None = None, progress: Progress | None = None) -> CopyCheck:
    """Hash every content-addressed file of ``copy``; never raises StorageError.

    A mismatching file modified less than ``grace`` ago may still be being written and
    is not judged, unless it is in ``known_bad`` (found damaged before).
    """
    files = [(Handle(file_type, name), info.size) for file_type in VERIFIED_TYPES
             for name, info in copy.files.get(file_type, {}).items()]
    check = CopyCheck()
    for chosen, patience in (([item for item in files if item[0] in known_bad], 0.0),
                             ([item for item in files if item[0] not in known_bad], grace)):
        if not chosen:
            continue
        outcome = verify_files(copy.backend, chosen, workers=workers, grace=patience, stop=stop, progress=progress)
        check.verified_files += outcome.verified_files
        check.verified_bytes += outcome.verified_bytes
        check.in_progress += outcome.in_progress
        check.interrupted = check.interrupted or outcome.interrupted
        check.stamps += outcome.stamps
        unreadable = set(outcome.unreadable_files)
        for stamp in outcome.stamps:
            handle = Handle(FileType(stamp.type), stamp.name)
            if stamp.ok:
                check.good.add(handle)
            else:
                check.bad[handle] = "unreadable" if handle.relative_path() in unreadable else "corrupt"
    return check



@dataclass(frozen=True)
class Fetched:
    """How one file was fetched: from which source (None: from none), its size, each source's problem."""

    source: str | None
    size: int
    problems: dict[str, str]


def fetch(handle: Handle, sources: Sequence[Copy], save: Callable[[BinaryIO], int]) -> Fetched:
    """Save ``handle`` from the first of ``sources`` whose copy verifies while it is copied.

    ``save`` writes the stream at the destination and must raise CorruptContent (and
    write nothing) when it does not hash to the name: every Backend's save does. A
    source that is missing, unreadable or corrupt is skipped for the next one. Raises
    StorageError when the destination itself fails (full, denied): no other source helps.
    """
    problems: dict[str, str] = {}
    for source in sources:
        with ExitStack() as stack:
            try:
                reader = stack.enter_context(source.backend.load(handle))
            except NotFound:
                problems[source.name] = "not there"
                continue
            except StorageError as error:
                problems[source.name] = str(error)
                continue
            try:
                return Fetched(source.name, save(reader), problems)
            except CorruptContent as error:
                problems[source.name] = f"content hashes to {error.actual[:16]}..., not to its name"
            except SourceReadError as error:
                problems[source.name] = str(error)
    return Fetched(None, 0, problems)


def in_write_order(items: Iterable[Item], handle_of: Callable[[Item], Handle], work: Callable[[Item], None],
                   workers: int, stop: threading.Event | None = None) -> bool:
    """Run ``work`` on each item, phase by phase in restic's write order, ``workers`` at a time.

    Each phase starts only once the one before has finished. Returns False when
    ``stop`` was set (the rest was not done). An exception from ``work`` stops the
    phase and is raised.
    """
    phases: dict[FileType, list[Item]] = {file_type: [] for file_type in COPY_ORDER}
    for item in items:
        phases[handle_of(item).type].append(item)
    for file_type in COPY_ORDER:
        todo = sorted(phases[file_type], key=lambda item: handle_of(item).name)
        if not todo:
            continue
        if stop is not None and stop.is_set():
            return False
        run_each(functools.partial(_unless_stopped, work, stop=stop), todo, workers, "repair")
    return stop is None or not stop.is_set()


def _unless_stopped(work: Callable[[Item], None], item: Item, stop: threading.Event | None) -> None:
    if stop is None or not stop.is_set():
        work(item)


def listing(backend: Backend) -> dict[FileType, dict[str, FileInfo]]:
    """Every file of every type at ``backend`` (config included). Raises StorageError."""
    return {file_type: {info.name: info for info in backend.list(file_type)} for file_type in COPY_ORDER}


def good_sources(handle: Handle, copies: Sequence[Copy], checks: Mapping[str, CopyCheck], exclude: str
                 ) -> list[Copy]:
    """The copies (other than ``exclude``) whose file hashed to its name, in the given order."""
    return [copy for copy in copies if copy.name != exclude and handle in checks[copy.name].good]


def read_config(backend: Backend) -> bytes | None:
    """The repository's config file, None when there is none. Raises StorageError."""
    try:
        with backend.load(Handle(FileType.CONFIG)) as reader:
            return reader.read()
    except NotFound:
        return None
