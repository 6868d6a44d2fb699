"""``triplicate recover``: rebuild a client's primary repository from the union of its locations.

Each file is taken from any location whose copy hashes to its name (verified
while it is copied: a bad copy is never written), in restic's write order
(config, keys, data, index, snapshots), so that the rebuilt repository is
valid after every file. A location holding another repository (its config
differs) is never a source. Files already in the target and hashing to their
names are kept, so a run that was interrupted (even by kill -9: every file is
written under a temporary name, fsynced, then renamed) simply goes on. Keyless.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from triplicate.actions.heal_config import agreed_config, disagreement
from triplicate.actions.quarantine import Damaged, keep_aside
from triplicate.config.model import Config
from triplicate.engine.mirror import Progress
from triplicate.engine.repair import Copy, check_copy, fetch, in_write_order, listing, read_config
from triplicate.errors import CannotRun
from triplicate.state.locks import client_locks
from triplicate.state.quarantine import QuarantineState
from triplicate.storage import FileInfo, FileType, Handle, StorageError, open_location
from triplicate.storage.backend import NoRepository
from triplicate.storage.local import PARTIAL_DIR, LocalBackend

CONTENT_TYPES = (FileType.KEY, FileType.DATA, FileType.INDEX, FileType.SNAPSHOT)
NO_SOURCE = "none of the locations to take it from is one of the client's"


@dataclass
class SourceReport:
    """One location as a source: what it gave (or, dry, would give), or why it was not used."""

    files: int = 0
    bytes: int = 0
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "problem": self.problem}


@dataclass
class RecoverReport:
    client: str
    target: str
    dry_run: bool = False
    sources: dict[str, SourceReport] = field(default_factory=dict)
    files_present: int = 0  # already in the target, hashing to their names: kept
    bytes_present: int = 0
    files_copied: int = 0  # (dry: to copy)
    bytes_copied: int = 0
    replaced: list[str] = field(default_factory=list)  # present but bad: replaced (the bad one kept aside)
    lost: dict[str, str] = field(default_factory=dict)  # file -> why no location could give it
    # file -> location -> why its copy was skipped for another's (corrupt, unreadable): heal it
    bad_copies: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        """Everything the locations hold is in the target, and every location could be used."""
        return not self.lost and not self.interrupted and all(
            source.problem is None for source in self.sources.values())

    def to_json(self) -> dict[str, object]:
        return {"client": self.client, "target": self.target, "dry_run": self.dry_run, "ok": self.ok,
                "interrupted": self.interrupted,
                "sources": {name: source.to_json() for name, source in self.sources.items()},
                "files_present": self.files_present, "bytes_present": self.bytes_present,
                "files_copied": self.files_copied, "bytes_copied": self.bytes_copied,
                "replaced": self.replaced, "lost": self.lost, "bad_copies": self.bad_copies,
                "seconds": round(self.seconds, 3)}


def select_sources(config: Config, client: str, requested: list[str] | tuple[str, ...]) -> list[str]:
    """The client's locations, or the requested ones in that order; raises UsageError naming a stranger."""
    from triplicate.actions.sync import select_locations

    return list(dict.fromkeys(select_locations(config, client, requested, option="--from")))


@dataclass(frozen=True)
class Target:
    """Where the repository is rebuilt: the client's primary, or a drill's scratch folder."""

    backend: LocalBackend
    primary: bool  # the primary: its bad files go to quarantine, a file being written is left alone
    owner: tuple[int, int] | None = None  # give the rebuilt files to the endpoint's user


def recover_client(config: Config, client: str, sources: list[str], *, dry_run: bool = False,
                   target: Target | None = None, stop: threading.Event | None = None,
                   progress: Progress | None = None) -> RecoverReport:
    """Rebuild ``client``'s repository (its primary unless ``target`` says otherwise) from ``sources``.

    Holds the client's replication locks when rebuilding its primary. Raises CannotRun
    when no location can give the repository (none reachable, or they disagree on which
    repository it is), UsageError for an unknown client.
    """
    started = time.monotonic()
    config.client(client)
    if target is None:
        from triplicate.service.tree import owner_ids

        target = Target(LocalBackend(config.primary_dir(client), f"primary repository {config.primary_dir(client)}"),
                        primary=True, owner=None if dry_run else owner_ids(config))
    report = RecoverReport(client, str(target.backend.root), dry_run)
    locks = (client_locks(config.server.state_dir, client, config.client(client).replicate_to)
             if target.primary and not dry_run else nullcontext())
    with ExitStack() as stack:
        stack.enter_context(locks)
        copies = _open_sources(config, client, sources, target, report, stack)
        _rebuild(config, client, copies, target, report, stop, progress or Progress())
    report.seconds = time.monotonic() - started
    return report


def _open_sources(config: Config, client: str, sources: list[str], target: Target, report: RecoverReport,
                  stack: ExitStack) -> list[Copy]:
    """The locations that hold the repository, listed; the others reported. Raises CannotRun."""
    held: dict[str, tuple[bytes, Copy]] = {}
    for name in sources:
        report.sources[name] = SourceReport()
        opened = open_copy(config, client, name, stack)
        if isinstance(opened, Unusable):
            report.sources[name].problem = opened.reason
        else:
            held[name] = opened
    unusable = [f"{name}: {source.problem}" for name, source in report.sources.items() if source.problem]
    wanted = _reference_config(target, {name: config_file for name, (config_file, _) in held.items()}, client,
                               unusable, config.settings(client).has_key)
    copies = []
    for name, (config_file, copy) in held.items():
        if config_file != wanted:
            report.sources[name].problem = ("holds a different restic repository (its config differs): never "
                                            "used as a source")
        else:
            copies.append(copy)
    return copies


@dataclass(frozen=True)
class Unusable:
    """Why a location gives no copy: ``empty`` when it simply holds no repository (yet)."""

    reason: str
    empty: bool = False


def open_copy(config: Config, client: str, location: str, stack: ExitStack) -> tuple[bytes, Copy] | Unusable:
    """The client's repository at ``location``: its config file and its copy, listed; else why not.

    The backend is closed when ``stack`` closes. Never raises StorageError: the reason is returned.
    """
    backend = open_location(config, location, client)
    stack.callback(backend.close)
    try:
        backend.prepare(create=False)
        config_file = read_config(backend)
        if config_file is None:
            return Unusable("no config file: not a restic repository (yet)", empty=True)
        return config_file, Copy(location, backend, listing(backend))
    except NoRepository as error:
        return Unusable(str(error), empty=True)
    except StorageError as error:
        return Unusable(f"could not be read: {error}")


def _reference_config(target: Target, configs: dict[str, bytes], client: str, unusable: list[str],
                      has_key: bool) -> bytes:
    """The repository to rebuild: the target's own config, else the one most locations hold.
    A primary whose config differs from the one the locations agree on is said to be maybe damaged
    (heal_config.disagreement; ``has_key``: the client's key is configured).

    Raises CannotRun, naming why each location could not be used (``unusable``: "name: why").
    """
    try:
        existing = read_config(target.backend) if target.backend.root.is_dir() else None
    except StorageError as error:
        raise CannotRun(f"client '{client}': {error}") from None
    if existing is not None:
        if existing not in configs.values() and target.primary and agreed_config(configs) is not None:
            raise CannotRun(f"client '{client}': {disagreement(client, list(configs), has_key)}")
        if existing not in configs.values():
            strangers = [f"{name}: holds another repository (its config differs)" for name in configs]
            raise CannotRun(f"client '{client}': no location holds the repository at {target.backend.root} "
                            f"({'; '.join(strangers + unusable) or NO_SOURCE})")
        return existing
    if not configs:
        raise CannotRun(f"client '{client}': no location could give its repository "
                        f"({'; '.join(unusable) or NO_SOURCE})")
    counts = Counter(configs.values()).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        groups = ", ".join(sorted(name for name, config_file in configs.items() if config_file == counts[0][0]))
        others = ", ".join(sorted(name for name, config_file in configs.items() if config_file != counts[0][0]))
        raise CannotRun(f"client '{client}': the locations hold different repositories ({groups} | {others}); "
                        "choose the right one with --from")
    return counts[0][0]


def _rebuild(config: Config, client: str, copies: list[Copy], target: Target, report: RecoverReport,
             stop: threading.Event | None, progress: Progress) -> None:
    backend = target.backend
    union: dict[Handle, tuple[list[Copy], int]] = {}
    for file_type in CONTENT_TYPES:
        for copy in copies:
            for name, info in copy.files[file_type].items():
                holders, size = union.setdefault(Handle(file_type, name), ([], info.size))
                holders.append(copy)
    present = _present(config, backend, union, target, report, stop)
    todo = {handle: holders for handle, (holders, _) in union.items() if handle not in present}
    if report.dry_run:
        for handle, holders in todo.items():
            size = union[handle][1]
            report.sources[holders[0].name].files += 1
            report.sources[holders[0].name].bytes += size
            report.files_copied += 1
            report.bytes_copied += size
        return
    try:
        _make_root(backend.root, target.owner)
        if target.primary:  # the endpoint streams its uploads there too: leave the young ones be
            _discard_stale_partials(backend.root / PARTIAL_DIR, config.server.in_progress_grace)
        else:
            backend.discard_partial_saves()
        if read_config(backend) is None:
            with copies[0].backend.load(Handle(FileType.CONFIG)) as reader:
                backend.save(Handle(FileType.CONFIG), reader)
    except (OSError, StorageError) as error:
        raise CannotRun(f"client '{client}': cannot write {backend.root}: {error}") from None
    progress.planned(len(todo), sum(union[handle][1] for handle in todo))
    lock = threading.Lock()
    quarantine = QuarantineState(config.server.state_dir) if target.primary else None

    def work(handle: Handle) -> None:
        fetched = fetch(handle, todo[handle], _saver(config, client, backend, handle, target, quarantine))
        with lock:
            if fetched.source is None:
                report.lost[handle.relative_path()] = "; ".join(
                    f"{name}: {problem}" for name, problem in fetched.problems.items()) or "no location has it"
            else:
                if fetched.problems:
                    report.bad_copies[handle.relative_path()] = fetched.problems
                report.sources[fetched.source].files += 1
                report.sources[fetched.source].bytes += fetched.size
                report.files_copied += 1
                report.bytes_copied += fetched.size
        progress.copied(union[handle][1])

    try:
        workers = max((copy.backend.connections for copy in copies), default=1)
        report.interrupted = not in_write_order(todo, lambda handle: handle, work, workers, stop)
    except StorageError as error:
        raise CannotRun(f"client '{client}': cannot write {backend.root}: {error}") from None
    finally:
        if quarantine is not None:
            quarantine.close()
        if target.owner is not None:
            _give(backend.root, target.owner)


def _present(config: Config, backend: LocalBackend, union: dict[Handle, tuple[list[Copy], int]], target: Target,
             report: RecoverReport, stop: threading.Event | None) -> set[Handle]:
    """The wanted files already in the target and hashing to their names (a resumed run keeps them).

    A bad one is to be replaced; at the primary, one modified within in_progress_grace
    (an upload in progress through the endpoint) is left alone and counted present.
    """
    if not backend.root.is_dir():
        return set()
    try:
        held = listing(backend)
    except StorageError as error:
        raise CannotRun(f"{backend.description}: {error}") from None
    wanted: dict[FileType, dict[str, FileInfo]] = {
        file_type: {name: info for name, info in held[file_type].items() if Handle(file_type, name) in union}
        for file_type in CONTENT_TYPES}
    grace = config.server.in_progress_grace if target.primary else 0.0
    check = check_copy(Copy("target", backend, wanted), workers=backend.connections, grace=grace, stop=stop)
    report.files_present = check.verified_files - len(check.bad)
    report.bytes_present = sum(info.size for file_type in CONTENT_TYPES for name, info in wanted[file_type].items()
                               if Handle(file_type, name) in check.good)
    report.replaced = sorted(handle.relative_path() for handle in check.bad)
    return {Handle(file_type, name) for file_type in CONTENT_TYPES for name in wanted[file_type]} - set(check.bad)


def _saver(config: Config, client: str, backend: LocalBackend, handle: Handle, target: Target,
           quarantine: QuarantineState | None) -> Callable[[BinaryIO], int]:
    """Save at the target; at the primary a bad file there is kept in quarantine before it is replaced."""

    def before_rename(partial: str) -> None:
        if target.owner is not None:
            os.chown(partial, *target.owner)
        original = backend.root / handle.relative_path()
        if quarantine is not None and original.exists():
            entry = keep_aside(config, client, Damaged(handle, None), "recover", move=False)
            quarantine.record(entry)

    return lambda reader: backend.save(handle, reader, before_rename=before_rename)


def _discard_stale_partials(folder: Path, grace: float) -> None:
    """Remove what killed saves left in the primary's partial folder (``folder``) more than ``grace`` seconds ago.

    A younger file may be an upload the client's endpoint is writing right now. Raises OSError.
    """
    if not folder.is_dir():
        return
    oldest = time.time() - grace
    for entry in os.scandir(folder):
        with contextlib.suppress(FileNotFoundError):  # renamed meanwhile: an upload just completed
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < oldest:
                os.unlink(entry.path)


def _make_root(root: Path, owner: tuple[int, int] | None) -> None:
    from triplicate.service.tree import make_folder

    make_folder(root, owner, 0o700)


def _give(root: Path, owner: tuple[int, int]) -> None:
    """Give the rebuilt repository's folders and files to the endpoint's user."""
    for folder, _, names in os.walk(root):
        os.chown(folder, *owner)
        for name in names:
            os.chown(os.path.join(folder, name), *owner)

