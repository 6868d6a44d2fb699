"""Mirror one restic repository into a replica without any key.

Order (restic's design.rst, "Read and Write Ordering"): the source is listed
snapshots first, then index, then data, so that everything a listed snapshot
needs is in the later listings; the replica receives config and keys, then
data, then index, then those snapshots. After every single file the replica
is a valid repository. Every file is hashed while it is copied (one read) and
a file whose content does not match its name is never written.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Protocol

from triplicate.engine.judgement import Outcome, judge_file, judge_mismatch
from triplicate.engine.parallel import run_each
from triplicate.storage.backend import (
    Backend,
    CorruptContent,
    FileInfo,
    NotFound,
    SourceReadError,
    StorageError,
    UnreadableFile,
)
from triplicate.storage.handle import FileType, Handle

# Phases in the order a replica receives them; each waits for the one before.
PHASES = (FileType.KEY, FileType.DATA, FileType.INDEX, FileType.SNAPSHOT)
# The order the source is listed in: the reverse of restic's write order.
LISTING_ORDER = (FileType.SNAPSHOT, FileType.INDEX, FileType.DATA, FileType.KEY, FileType.CONFIG)


@dataclass
class SourceListing:
    """What the source held, listed once per run in the safe order."""

    files: dict[FileType, dict[str, FileInfo]]
    listed_at: float

    @property
    def snapshot_ids(self) -> set[str]:
        return set(self.files[FileType.SNAPSHOT])


def list_source(source: Backend) -> SourceListing:
    """List the source in reader order (snapshots first). Raises StorageError."""
    started = time.time()
    files = {file_type: {info.name: info for info in source.list(file_type)} for file_type in LISTING_ORDER}
    return SourceListing(files, started)


@dataclass(frozen=True)
class UnsettledFile:
    """A source file not copied as listed: what it was judged, and its size and time as listed."""

    outcome: Outcome
    size: int
    mtime: float | None


@dataclass
class MirrorResult:
    """The outcome of mirroring to one location (the ``--json`` fields, and more)."""

    ok: bool = False
    files_copied: int = 0
    bytes_copied: int = 0
    files_skipped_in_progress: int = 0
    files_vanished: int = 0  # listed, then gone from the source before they were copied (a prune)
    corrupt_files: list[str] = field(default_factory=list)
    # One line per source file that could not be read as a file (a FIFO, a link, denied): the
    # storage layer's own words, naming the file.
    unreadable_files: list[str] = field(default_factory=list)
    # Every source file not copied as listed, by path (data/ab/<id>), with its judgement.
    unsettled: dict[str, UnsettledFile] = field(default_factory=dict)
    # Paths of ``MirrorOptions.remembered`` copied fine this time (settled since).
    settled: list[str] = field(default_factory=list)
    # Unsettled source files that have stayed so too long (set by the caller, who remembers
    # since when): each a failure of the run naming the file and what to do.
    problems: list[str] = field(default_factory=list)
    # New files not copied because a file they may need is corrupt in the source.
    held_back: list[str] = field(default_factory=list)
    error: str | None = None
    # The snapshot IDs on the replica after the run; None when it could not be listed.
    replica_snapshots: set[str] | None = None
    seconds: float = 0.0
    interrupted: bool = False
    files_removed: int = 0
    repaired: list[tuple[str, str]] = field(default_factory=list)  # (type, name) copied again
    removals_deferred: str | None = None  # why due deletions did not happen this run

    @property
    def complete(self) -> bool:
        """Everything listed was copied: nothing corrupt, being written, gone or held back.

        An incomplete run that is ``ok`` is no failure (a backup or a prune is running):
        the next run, soon, completes it.
        """
        return self.error is None and not self.unsettled and not self.held_back


class Progress:
    """Called as work is planned and done; the CLI draws a bar with it. Thread-safe no-op here."""

    def planned(self, files: int, size: int) -> None: ...

    def copied(self, size: int) -> None: ...


@dataclass
class MirrorOptions:
    workers: int = 4
    # A mismatching source file modified less than this long ago is still being
    # written (rclone's REST server writes in place): skipped now, retried later.
    in_progress_grace: float = 300.0
    stop: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)
    clock: Callable[[], float] = time.time
    # None: the replica is append-only (the default). Otherwise files gone from the
    # primary for ``deletions.delay`` seconds are removed from the replica too.
    deletions: Deletions | None = None
    # (type, name) of replica files an audit found corrupt: copied again from the
    # primary (verified, then renamed over the bad copy), as if the replica lacked them.
    repair: frozenset[tuple[str, str]] = frozenset()
    # Source paths whose content was read before and did not hash to the name, with the
    # (size, mtime) they had then: unchanged, they are judged again by time, not read again.
    known_mismatches: Mapping[str, tuple[int, float | None]] = field(default_factory=dict)
    # Every source path a run before could not take: one copied now is reported settled.
    remembered: frozenset[str] = frozenset()
    # With the client's key: what unsettled packs hold back, narrower than every new index
    # and snapshot (None: keyless, today's rule).
    dependents: Dependents | None = None
    # Source files modified less than this many seconds ago are left for a later run without
    # being read, as still being written (0: none). For runs during a backup through rclone's
    # endpoint, which writes in place: reading a pack still growing would spend the location's
    # bandwidth on a copy thrown away.
    settle: float = 0.0


@dataclass(frozen=True)
class HoldBack:
    """What a set of unsettled packs holds back, as the client's key tells."""

    index: frozenset[str]  # new index files that name one of them (or a pack they need)
    snapshots: frozenset[str] | None  # new snapshots that need their blobs; None: every new one


class Dependents(Protocol):
    """Asks restic, with the client's key, what needs the given packs (narrow hold-back)."""

    def __call__(self, packs: frozenset[str], new_index: list[str], new_snapshots: list[str]) -> HoldBack | None:
        """What ``packs`` hold back among ``new_index`` and ``new_snapshots``; None: cannot tell."""
        ...


class Deletions(Protocol):
    """Where deletion propagation remembers since when a replica's file is gone from the primary."""

    delay: float

    def absent_since(self, file_type: FileType, extra: set[str], now: float) -> dict[str, float]:
        """Record which files are extra now; return when each first was."""
        ...

    def forget(self, file_type: FileType, names: list[str]) -> None:
        """The files were removed from the replica."""
        ...


# restic refreshes its lock files every 5 minutes and calls one older than 30 stale.
STALE_LOCK_SECONDS = 30 * 60
# Propagated deletions follow restic's own order (forget, then prune): snapshots, index, data.
DELETION_ORDER = (FileType.SNAPSHOT, FileType.INDEX, FileType.DATA)


class _Stopped(Exception):
    pass


def mirror(
    source: Backend,
    replica: Backend,
    listing: SourceListing | Callable[[], SourceListing],
    options: MirrorOptions,
) -> MirrorResult:
    """Copy to ``replica`` what it lacks of the source's listing. Never deletes.

    ``listing`` may be a callable that waits for a listing made meanwhile by
    another thread: the replica is listed first (only this process writes it, under
    its lock, so its listing may come before the source's). Never raises
    StorageError: it becomes the result's ``error``.
    """
    result = MirrorResult()
    started = time.monotonic()
    try:
        replica.prepare(create=True)
        replica.discard_partial_saves()
        present = {file_type: _listed(replica, file_type) for file_type in PHASES}
        result.replica_snapshots = set(present[FileType.SNAPSHOT])
        repairing = {file_type: {name for kind, name in options.repair if kind == file_type.value}
                     for file_type in PHASES}
        if callable(listing):
            listing = listing()
        _copy_config(source, replica, listing, result)
        missing = {
            file_type: [info for name, info in listing.files[file_type].items()
                        if name not in present[file_type] or name in repairing[file_type]
                        or _short(present[file_type][name], info)]
            for file_type in PHASES
        }
        options.progress.planned(
            sum(len(infos) for infos in missing.values()),
            sum(info.size for infos in missing.values() for info in infos),
        )
        unsettled: set[FileType] = set()  # phases with a file not copied as listed
        narrow: HoldBack | None = None
        for file_type in PHASES:
            todo = missing[file_type]
            if file_type is FileType.INDEX and unsettled == {FileType.DATA} and options.dependents is not None:
                packs = frozenset(path.rpartition("/")[2] for path in result.unsettled if path.startswith("data/"))
                narrow = options.dependents(packs, [info.name for info in todo],
                                            [info.name for info in missing[FileType.SNAPSHOT]])
            if narrow is not None and file_type in (FileType.INDEX, FileType.SNAPSHOT) \
                    and not unsettled & {FileType.KEY, FileType.INDEX}:
                waiting = narrow.index if file_type is FileType.INDEX else narrow.snapshots
                held = todo if waiting is None else [info for info in todo if info.name in waiting]
                result.held_back += sorted(Handle(file_type, info.name).relative_path() for info in held)
                todo = [info for info in todo if waiting is not None and info.name not in waiting]
            elif _must_hold_back(file_type, unsettled):
                result.held_back += sorted(Handle(file_type, info.name).relative_path() for info in todo)
                continue
            if _copy_all(source, replica, file_type, todo, options, result):
                unsettled.add(file_type)
        result.ok = True  # the caller fails the run for unsettled files that stay so too long
        if options.deletions is not None:
            _propagate_deletions(source, replica, listing, present, options, result)
    except _Stopped:
        result.interrupted = True
        result.error = "interrupted"
    except StorageError as error:
        result.error = str(error)
    finally:
        result.seconds = time.monotonic() - started
    return result


def _propagate_deletions(
    source: Backend,
    replica: Backend,
    listing: SourceListing,
    present: dict[FileType, dict[str, FileInfo]],
    options: MirrorOptions,
    result: MirrorResult,
) -> None:
    """Remove from the replica what the primary has lacked for the configured delay.

    Only after a clean copy, in restic's order (snapshots, index, data), never
    while the primary holds a live lock (keyless, a prune's exclusive lock looks
    like any other), and never a file the primary has again.
    """
    assert options.deletions is not None
    now = options.clock()
    due: dict[FileType, list[str]] = {}
    for file_type in DELETION_ORDER:
        extra = present[file_type].keys() - listing.files[file_type].keys()
        since = options.deletions.absent_since(file_type, extra, now)
        due[file_type] = sorted(name for name, first in since.items() if now - first >= options.deletions.delay)
    if not any(due.values()):
        return
    if not result.complete:
        result.removals_deferred = "the copy was not clean"
        return
    live = [info.name for info in source.list(FileType.LOCK)
            if info.mtime is None or now - info.mtime < STALE_LOCK_SECONDS]
    if live:
        result.removals_deferred = f"the primary is locked ({len(live)} lock(s))"
        return
    for file_type in DELETION_ORDER:
        removed = []
        for name in due[file_type]:
            handle = Handle(file_type, name)
            try:
                source.stat(handle)
                continue  # the primary has it (again): keep it
            except NotFound:
                pass
            replica.remove(handle)
            removed.append(name)
        options.deletions.forget(file_type, removed)
        result.files_removed += len(removed)


def _must_hold_back(file_type: FileType, unsettled: set[FileType]) -> bool:
    """Whether the new files of ``file_type`` must wait: a file they may need was not copied.

    Without a key there is no telling which snapshot or index needs a pack that was
    corrupt, still being written or gone (a prune running meanwhile): so a phase with
    any such file holds back every later phase that may refer to it. A new index waits
    for its packs (restic check fails on an index naming a missing pack, while a pack
    no index names is harmless), and a new snapshot waits for keys, packs and index:
    the replica stays a valid repository after every file.
    """
    if file_type is FileType.SNAPSHOT:
        return bool(unsettled & {FileType.KEY, FileType.DATA, FileType.INDEX})
    if file_type is FileType.INDEX:
        return FileType.DATA in unsettled
    return False


def _listed(backend: Backend, file_type: FileType) -> dict[str, FileInfo]:
    return {info.name: info for info in backend.list(file_type)}


def _short(replica: FileInfo, source: FileInfo) -> bool:
    """Whether the replica's file is not the source's size (an upload cut short in place).

    Only when the replica's listing gave sizes (the remote kinds): a local replica
    writes under a temporary name, and its sizes would cost a stat each. A source
    file gone since the listing (a prune; no time) is not a reason to copy.
    """
    known = replica.known_size
    return known is not None and known != source.size and source.mtime is not None


def _copy_config(source: Backend, replica: Backend, listing: SourceListing, result: MirrorResult) -> None:
    """Copy ``config`` if the replica has none; refuse a replica of another repository."""
    if not listing.files[FileType.CONFIG]:
        raise StorageError("the source has no config file: not a restic repository (yet)")
    handle = Handle(FileType.CONFIG)
    with source.load(handle) as reader:
        wanted = reader.read()
    try:
        with replica.load(handle) as reader:
            existing = reader.read()
    except NotFound:
        result.bytes_copied += replica.save(handle, io.BytesIO(wanted))
        result.files_copied += 1
        return
    if existing != wanted:
        # When every location says so, it may be the primary's config that is damaged: the audit tells.
        raise StorageError(f"{replica.description} holds a different restic repository (its config differs; "
                           "if every location says so, 'triplicate audit' tells whether the primary's may be damaged)")


def _copy_all(
    source: Backend,
    replica: Backend,
    file_type: FileType,
    todo: Iterable[FileInfo],
    options: MirrorOptions,
    result: MirrorResult,
) -> bool:
    """Copy files of one phase in parallel; return whether any was not copied as listed
    (corrupt, still being written, vanished). Raises StorageError."""
    lock = threading.Lock()
    unsettled: list[str] = []

    def copy_one(info: FileInfo) -> None:
        if options.stop.is_set():
            raise _Stopped()
        handle = Handle(file_type, info.name)
        path = handle.relative_path()
        try:
            outcome = _copy_file(source, replica, handle, info, options)
        except UnreadableFile as error:  # this file only (a FIFO, a link, denied): the others are copied
            outcome = Outcome.UNREADABLE
            with lock:
                result.unreadable_files.append(str(error))
        with lock:
            if outcome is None:
                if file_type is FileType.SNAPSHOT and result.replica_snapshots is not None:
                    result.replica_snapshots.add(info.name)
                if (file_type.value, info.name) in options.repair:
                    result.repaired.append((file_type.value, info.name))
                if path in options.remembered:
                    result.settled.append(path)
                result.files_copied += 1
                result.bytes_copied += info.size
            else:
                if outcome is Outcome.IN_PROGRESS:
                    result.files_skipped_in_progress += 1
                elif outcome is Outcome.VANISHED:
                    result.files_vanished += 1
                elif outcome is Outcome.CORRUPT:
                    result.corrupt_files.append(path)
                result.unsettled[path] = UnsettledFile(outcome, info.size, info.mtime)
                unsettled.append(path)
        options.progress.copied(info.size)

    run_each(copy_one, todo, min(options.workers, replica.connections), "copy")
    result.corrupt_files.sort()
    result.unreadable_files.sort()
    return bool(unsettled)


def _copy_file(source: Backend, replica: Backend, handle: Handle, info: FileInfo,
               options: MirrorOptions) -> Outcome | None:
    """Copy one file; return None when copied, else why not (:func:`judge_mismatch`).

    A file already found not to match its name, unchanged since (same size and
    time), is judged again by time without being read. Problems of the source file
    become an outcome; the replica's raise StorageError.
    """
    if options.settle and info.mtime is not None and options.clock() - info.mtime < options.settle:
        return Outcome.IN_PROGRESS
    known = options.known_mismatches.get(handle.relative_path())
    if known is not None and info.mtime is not None and known == (info.size, info.mtime):
        return judge_mismatch(info.mtime, options.clock(), options.in_progress_grace)
    with ExitStack() as stack:
        try:
            reader = stack.enter_context(source.load(handle))
        except NotFound:
            return Outcome.VANISHED  # removed from the source since it was listed (a prune)
        except UnreadableFile:
            raise  # the caller keeps the storage layer's words, which name the file
        except StorageError:
            return Outcome.UNREADABLE
        try:
            replica.save(handle, reader)
        except NotFound:
            return Outcome.VANISHED
        except CorruptContent:
            return judge_file(source, handle, options.clock(), options.in_progress_grace)
        except UnreadableFile:
            raise
        except SourceReadError:
            return Outcome.UNREADABLE
    return None
