"""``triplicate heal``: repair every copy of a client's repository from any good copy.

Every file of every copy (the primary and each location) is hashed; a file that
does not hash to its name at one copy is replaced there by a copy from another
location that does, verified while it is copied, in restic's write order. A
primary file is replaced only once the good copy is complete, fsynced and
verified (a rename over it: the endpoint never serves half a file), and the bad
one is kept in ``state_dir/quarantine/<client>/``. What a replica merely lacks
is then copied by the ordinary sync. Keyless; with the client's key, restic adds
what only the index knows (actions/heal_losses.py): packs the primary lacks, and
the snapshots a lost file may hurt. After a heal the client is audited again, cheaply
(:func:`audit_after_heal`), so that ``status``, the web service and the metrics show
what is still wrong rather than the damage the last audit found.
"""

from __future__ import annotations

import functools
import io
import os
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from triplicate.actions.audit import AuditOptions, StatusChange, run_audit, status_changes
from triplicate.actions.audit_report import ClientAudit
from triplicate.actions.heal_config import ConfigChoice, choose, shares_a_key
from triplicate.actions.heal_losses import IndexView, LossFinder
from triplicate.actions.quarantine import Damaged, keep_aside
from triplicate.actions.recover import Unusable, open_copy
from triplicate.actions.sync import SyncReport, sync_client
from triplicate.config.model import Config
from triplicate.engine.mirror import MirrorOptions, Progress
from triplicate.engine.repair import (
    Copy,
    CopyCheck,
    check_copy,
    fetch,
    good_sources,
    in_write_order,
    listing,
    read_config,
)
from triplicate.errors import CannotRun, UsageError
from triplicate.execute import CommandFailed, Interrupted, ScopedPool
from triplicate.state.audit import AuditState, Verification, last_audit
from triplicate.state.db import PRIMARY
from triplicate.state.locks import client_locks
from triplicate.state.quarantine import QuarantineEntry, QuarantineState
from triplicate.state.replication import ReplicationState
from triplicate.storage import Backend, FileType, Handle, StorageError, open_primary
from triplicate.storage.local import LocalBackend

NO_GOOD_COPY = "no good copy anywhere"


@dataclass
class CopyReport:
    """One copy (the primary or a location): what hashing it found, or why it was left out."""

    verified_files: int = 0
    verified_bytes: int = 0
    bad_files: int = 0
    in_progress: int = 0
    problem: str | None = None  # left out: unreachable, another repository...
    note: str | None = None  # left out, but nothing wrong (no repository there yet)

    def to_json(self) -> dict[str, object]:
        return {"verified_files": self.verified_files, "verified_bytes": self.verified_bytes,
                "bad_files": self.bad_files, "not_judged_in_progress": self.in_progress,
                "problem": self.problem, "note": self.note}


@dataclass
class FileHeal:
    """One file bad at one copy or more: where, and what became of each bad copy."""

    file: str
    bad_at: dict[str, str]  # copy -> "corrupt" | "unreadable" | "missing" (the primary's index names it)
    healed_from: dict[str, str] = field(default_factory=dict)  # copy -> the copy its good file came from
    not_healed: dict[str, str] = field(default_factory=dict)  # copy -> why
    quarantined: str | None = None  # where the primary's bad file was kept
    # Lost files, with the client's key: the snapshots that may need it (None: unknown) and why.
    snapshots_needing: list[str] | None = None
    snapshots_note: str | None = None

    @property
    def lost(self) -> bool:
        """No copy anywhere hashes to the name: the file is lost."""
        return any(reason == NO_GOOD_COPY for reason in self.not_healed.values())

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "bad_at": self.bad_at, "healed_from": self.healed_from,
                "not_healed": self.not_healed, "lost": self.lost, "quarantined": self.quarantined,
                "snapshots_needing": self.snapshots_needing, "snapshots_note": self.snapshots_note}


@dataclass
class HealReport:
    client: str
    dry_run: bool
    copies: dict[str, CopyReport] = field(default_factory=dict)
    files: list[FileHeal] = field(default_factory=list)
    sync: SyncReport | None = None
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)  # what could not be looked at with the key
    audit: ClientAudit | None = None  # the audit recorded after the heal (None: none ran)
    audit_changes: list[StatusChange] = field(default_factory=list)  # its changes since the audit before

    @property
    def ok(self) -> bool:
        """Every copy was checked, every bad file healed (or, dry, healable), and the sync completed."""
        return (not self.interrupted and all(copy.problem is None for copy in self.copies.values())
                and all(not entry.not_healed for entry in self.files)
                and (self.sync is None or self.sync.complete))

    def to_json(self) -> dict[str, object]:
        return {"client": self.client, "dry_run": self.dry_run, "ok": self.ok, "interrupted": self.interrupted,
                "copies": {name: copy.to_json() for name, copy in self.copies.items()},
                "files": [entry.to_json() for entry in self.files],
                "lost": [entry.file for entry in self.files if entry.lost],
                "notes": self.notes, "sync": None if self.sync is None else self.sync.to_json(),
                "audit": None if self.audit is None else {"status": self.audit.status.value,
                                                          "reason": self.audit.reason}}


def heal_client(config: Config, client: str, *, dry_run: bool = False, stop: threading.Event | None = None,
                progress: Callable[[str], Progress] | None = None, only: Collection[str] | None = None,
                missing: Collection[str] = (), config_from: str | None = None,
                ) -> HealReport:
    """Hash every copy of ``client``'s repository and repair each bad file from a good copy.

    With ``dry_run`` nothing is written and no lock is taken: the report says what
    would be healed from where. Otherwise the client's replication locks are held
    while healing, then a sync copies what the locations lack. With the client's key,
    restic also names the packs the primary's index names that it lacks (healed as
    "missing") and the snapshots that may need each lost file. ``only`` (paths in the
    repository, e.g. ``data/ab/<id>``) hashes those files alone at every copy: the
    daemon heals what an audit or a sync found bad without re-reading everything.
    ``missing`` (paths, with ``only``) are packs the caller found the primary's index names
    and the primary lacks (:func:`packs_missing_at_primary`): healed as "missing" there.
    The primary's ``config`` is put back from a location when restic (with the key) cannot
    decrypt it, or from ``config_from`` on the operator's word (actions/heal_config.py).
    Unless dry or interrupted, the heal ends with :func:`audit_after_heal` (``report.audit``).
    Returns the report; raises UsageError for an unknown client or a refused ``config_from``,
    CannotRun when the primary repository cannot be read.
    """
    locations = list(config.client(client).replicate_to)
    if config_from is not None and config_from not in locations:
        raise UsageError(f"--config-from {config_from}: not a location of client '{client}' "
                         f"(its locations: {', '.join(locations) or 'none'})")
    primary = open_primary(config, client)
    try:
        primary.prepare(create=False)
        primary_config = read_config(primary)
    except StorageError as error:
        raise CannotRun(f"client '{client}': {error}; rebuild it from its locations with "
                        f"'triplicate recover {client}'") from None
    if primary_config is None:
        raise CannotRun(f"client '{client}': the primary repository has no config file; rebuild it from its "
                        f"locations with 'triplicate recover {client}'")
    report = HealReport(client, dry_run)
    with ExitStack() as stack:
        stack.enter_context(nullcontext() if dry_run else client_locks(config.server.state_dir, client, locations))
        copies, strangers = _open_copies(config, client, locations, primary, primary_config, report, stack)
        if strangers or config_from is not None:
            copies = _heal_config(config, client, copies, strangers, report, config_from)
        index_files = list(copies[0].files.get(FileType.INDEX, {}))  # the primary's, for restic
        gone = {Handle(FileType.DATA, path.rpartition("/")[2]) for path in missing
                if path.rpartition("/")[2] not in copies[0].files.get(FileType.DATA, {})}
        if only is not None:
            only = {*only, *(handle.relative_path() for handle in gone)}
            for copy in copies:
                copy.files = {file_type: {name: info for name, info in names.items()
                                          if Handle(file_type, name).relative_path() in only}
                              for file_type, names in copy.files.items()}
        losses = LossFinder(config, client, index_files) if config.settings(client).has_key else None
        with ScopedPool(max_workers=1, thread_name_prefix="heal-index") as pool:
            # restic reads the primary's index (for missing packs) while every copy is hashed.
            reading = pool.submit(losses.read_index) if losses is not None and only is None else None
            checks = _check_copies(config, client, copies, report, stop, progress)
            gone |= _missing_at_primary(reading, copies[0], checks[PRIMARY], report)
        tasks = _plan(copies, checks, gone, report)
        if not dry_run and not report.interrupted:
            _repair(config, client, tasks, copies, stop, report)
            _record_stamps(config, client, copies, checks, report)
    if not report.interrupted:
        _name_needing_snapshots(losses, report)  # restic reads only: no lock held meanwhile
    usable = [name for name in locations if name in report.copies and report.copies[name].problem is None]
    if not dry_run and not report.interrupted and usable:
        options = MirrorOptions(in_progress_grace=config.server.in_progress_grace,
                                stop=stop if stop is not None else threading.Event())
        report.sync = sync_client(config, client, usable, trigger="heal", options=options)
    if not dry_run and not report.interrupted and not (stop is not None and stop.is_set()):
        audit_after_heal(config, client, report, stop)
    return report


def audit_after_heal(config: Config, client: str, report: HealReport, stop: threading.Event | None) -> None:
    """Audit ``client`` again and record it, so that the last audit says what the heal left.

    The cheap audit: a share of 0 re-reads only the files last found bad (heal stamped
    those it healed good, and those it could not heal bad), and lists each location;
    ``restic check`` runs again when the audit before found errors with it (else its
    finding would vanish unchecked). Sets ``report.audit`` and ``report.audit_changes``
    (the statuses that changed since the audit recorded before, for the daemon's notifications).
    """
    before = last_audit(config.server.state_dir, client)
    check_again = before is not None and any((location.report.get("restic_check") or {}).get("ok") is False
                                             for location in before.locations.values())
    audit = run_audit(config, [client], options=AuditOptions(verify_percent=0, restic_check=check_again,
                                                             stop=stop))
    report.audit = audit.clients[client]
    report.audit_changes = status_changes({client: before}, audit)


def _open_copies(config: Config, client: str, locations: list[str], primary: Backend, primary_config: bytes,
                 report: HealReport, stack: ExitStack) -> tuple[list[Copy], dict[str, tuple[bytes, Copy]]]:
    """The primary and every location that holds this repository, listed; the others are reported.
    Returns those copies, and the locations whose config differs from the primary's (with it)."""
    strangers: dict[str, tuple[bytes, Copy]] = {}
    try:
        copies = [Copy(PRIMARY, primary, listing(primary))]
    except StorageError as error:
        raise CannotRun(f"client '{client}': {error}") from None
    report.copies[PRIMARY] = CopyReport()
    for name in locations:
        report.copies[name] = entry = CopyReport()
        opened = open_copy(config, client, name, stack)
        if isinstance(opened, Unusable):
            if opened.empty:
                entry.note = f"{opened.reason}: the sync makes it; not used meanwhile"
            else:
                entry.problem = opened.reason
        elif opened[0] != primary_config:
            entry.problem = ("holds a different restic repository (its config differs from the primary's): "
                             "never used as a source nor repaired")
            strangers[name] = opened
        else:
            copies.append(opened[1])
    return copies, strangers


def _heal_config(config: Config, client: str, copies: list[Copy], strangers: dict[str, tuple[bytes, Copy]],
                 report: HealReport, config_from: str | None) -> list[Copy]:
    """Put a location's config back at the primary when heal_config.choose says so (the bad one kept in
    quarantine); its locations are then copies like the others. Returns the copies to heal with.
    Raises UsageError refusing ``config_from`` (nothing written)."""
    unusable = {name: entry.problem or entry.note or "" for name, entry in report.copies.items()
                if name not in strangers and (entry.problem or entry.note)}
    primary_keys = copies[0].files.get(FileType.KEY, {})
    kin = {name: config_file for name, (config_file, copy) in strangers.items()
           if shares_a_key(primary_keys, copy.files.get(FileType.KEY, {}))}
    unusable |= {name: "holds none of the primary's key files: another repository, not a copy of this one"
                 for name in strangers if name not in kin}
    try:
        choice = choose(config, client, kin, [copy.name for copy in copies[1:]], unusable, config_from)
    except Interrupted:
        raise
    except (CommandFailed, StorageError) as error:
        choice = ConfigChoice(note=f"restic could not read the primary's config: {error}")
    if choice.note is not None:
        report.notes.append(choice.note)
        for name in kin:
            report.copies[name].problem = ("its config differs from the primary's, as every location's does "
                                           "(see the note below)")
    if choice.source is None or choice.why is None:
        return copies
    entry = FileHeal("config", {PRIMARY: choice.why})
    report.files.append(entry)
    good = strangers[choice.source][0]
    if not report.dry_run:
        try:
            entry.quarantined = _put_config_back(config, client, copies[0].backend, good, choice.source)
        except StorageError as error:
            entry.not_healed[PRIMARY] = str(error)
            return copies
    entry.healed_from[PRIMARY] = choice.source
    for name, (config_file, copy) in strangers.items():
        if name in kin and config_file == good:
            report.copies[name].problem = None
            copies.append(copy)
    return copies


def _put_config_back(config: Config, client: str, primary: Backend, good: bytes, source: str) -> str:
    """Write ``good`` as the primary's config (temporary name, fsync, rename) once the bad one is kept
    in quarantine and recorded. Returns where it was kept; raises StorageError (nothing replaced then)."""
    handle = Handle(FileType.CONFIG)
    kept: list[QuarantineEntry] = []
    assert isinstance(primary, LocalBackend)  # the primary is always a local folder
    primary.save(handle, io.BytesIO(good), before_rename=_keeping_aside(config, client, handle, primary, kept))
    with QuarantineState.opened(config.server.state_dir) as quarantine:
        for item in kept:
            quarantine.record(replace(item, reason=f"heal: config replaced by the copy at {source}"))
    return kept[0].kept_at


def _check_copies(config: Config, client: str, copies: list[Copy], report: HealReport,
                  stop: threading.Event | None, progress: Callable[[str], Progress] | None) -> dict[str, CopyCheck]:
    """Hash every file of every copy at once (one thread per copy)."""
    grace = config.server.in_progress_grace
    with ReplicationState.opened(config.server.state_dir) as replication:
        known = replication.source_corrupt_files(client)
    with AuditState.opened(config.server.state_dir) as audits:  # what an audit found bad in the primary
        known |= {Handle(FileType(kind), name).relative_path()
                  for (kind, name), stamp in audits.stamps(client, PRIMARY).items() if not stamp.ok}

    def check(copy: Copy) -> CopyCheck:
        primary = copy.name == PRIMARY
        known_bad = frozenset(Handle(file_type, name) for file_type, names in copy.files.items()
                              for name in names if primary and Handle(file_type, name).relative_path() in known)
        # Only the primary is written by others (the client's endpoint): a location's files are
        # written by triplicate alone, under the lock held now, so no mismatch there is "in progress".
        return check_copy(copy, workers=copy.backend.connections, grace=grace if primary else 0.0,
                          known_bad=known_bad, stop=stop, progress=progress(copy.name) if progress else None)

    with ScopedPool(max_workers=max(1, len(copies)), thread_name_prefix="heal-check") as pool:
        checks = dict(zip((copy.name for copy in copies), pool.map(check, copies), strict=True))
    for name, outcome in checks.items():
        entry = report.copies[name]
        entry.verified_files, entry.verified_bytes = outcome.verified_files, outcome.verified_bytes
        entry.bad_files, entry.in_progress = len(outcome.bad), outcome.in_progress
        report.interrupted = report.interrupted or outcome.interrupted
    return checks


@dataclass(frozen=True)
class _Task:
    handle: Handle
    target: Copy
    sources: list[Copy]
    entry: FileHeal


def _plan(copies: list[Copy], checks: dict[str, CopyCheck], missing: set[Handle], report: HealReport
          ) -> list[_Task]:
    """One task per bad copy of a file (or pack ``missing`` at the primary) that a good copy elsewhere
    can replace; the rest reported."""
    bad_handles = sorted({handle for check in checks.values() for handle in check.bad} | missing,
                         key=lambda handle: handle.relative_path())
    tasks = []
    for handle in bad_handles:
        bad_at = {copy.name: checks[copy.name].bad[handle] for copy in copies if handle in checks[copy.name].bad}
        if handle in missing:
            bad_at = {PRIMARY: "missing", **bad_at}
        entry = FileHeal(handle.relative_path(), bad_at)
        report.files.append(entry)
        for copy in copies:
            if copy.name not in bad_at:
                continue
            sources = good_sources(handle, copies, checks, copy.name)
            if sources:
                tasks.append(_Task(handle, copy, sources, entry))
                if report.dry_run:
                    entry.healed_from[copy.name] = sources[0].name
            else:
                entry.not_healed[copy.name] = NO_GOOD_COPY
    return tasks


def _repair(config: Config, client: str, tasks: list[_Task], copies: list[Copy], stop: threading.Event | None,
            report: HealReport) -> None:
    """Replace each bad copy from its first good source, in restic's write order."""
    lock = threading.Lock()
    quarantine = QuarantineState(config.server.state_dir)

    def work(task: _Task) -> None:
        kept: list[QuarantineEntry] = []
        try:
            fetched = fetch(task.handle, task.sources, _saver(config, client, task, kept))
        except StorageError as error:
            with lock:
                task.entry.not_healed[task.target.name] = str(error)
            return
        with lock:
            if fetched.source is None:
                problems = "; ".join(f"{name}: {problem}" for name, problem in fetched.problems.items())
                task.entry.not_healed[task.target.name] = f"every good copy failed while copied ({problems})"
                return
            task.entry.healed_from[task.target.name] = fetched.source
            for entry in kept:
                quarantine.record(replace(entry, reason=f"heal: replaced by the copy at {fetched.source}"))
                task.entry.quarantined = entry.kept_at

    try:
        workers = max(copy.backend.connections for copy in copies)
        report.interrupted = not in_write_order(tasks, lambda task: task.handle, work, workers, stop)
    finally:
        quarantine.close()


def _saver(config: Config, client: str, task: _Task, kept: list[QuarantineEntry]) -> Callable[[BinaryIO], int]:
    """How the good copy is written at the task's target; at the primary, the bad one is kept first."""
    backend = task.target.backend
    if task.target.name != PRIMARY:
        return lambda reader: backend.save(task.handle, reader)
    assert isinstance(backend, LocalBackend)  # the primary is always a local folder
    original = backend.root / task.handle.relative_path()
    if not original.exists():  # missing: nothing to keep aside; owned as the repository's config is
        return lambda reader: backend.save(task.handle, reader, before_rename=functools.partial(
            _owned_like, backend.root / "config"))

    return lambda reader: backend.save(task.handle, reader,
                                       before_rename=_keeping_aside(config, client, task.handle, backend, kept))


def _keeping_aside(config: Config, client: str, handle: Handle, primary: LocalBackend, kept: list[QuarantineEntry]
                   ) -> Callable[[str], None]:
    """What runs before the good copy is renamed over the primary's bad ``handle``: the bad one is kept
    aside (its entry appended to ``kept``) and the good one given its owner and mode."""
    original = primary.root / handle.relative_path()

    def before_rename(partial: str) -> None:
        # Verified, complete and fsynced: keep the bad file aside, then the rename replaces it.
        _owned_like(original, partial)
        kept.append(keep_aside(config, client, Damaged(handle, None), "heal", move=False))

    return before_rename


def _record_stamps(config: Config, client: str, copies: list[Copy], checks: dict[str, CopyCheck],
                   report: HealReport) -> None:
    """Tell the audit what heal found at each location, and which files are good again."""
    now = time.time()
    healed = {(name, entry.file) for entry in report.files for name in entry.healed_from}
    with AuditState.opened(config.server.state_dir) as audits:
        for copy in copies:
            stamps = [stamp if (copy.name, Handle(FileType(stamp.type), stamp.name).relative_path()) not in healed
                      else Verification(stamp.type, stamp.name, now, True) for stamp in checks[copy.name].stamps]
            audits.record_verifications(client, copy.name, stamps)



def _owned_like(model: Path, partial: str) -> None:
    """Give ``partial`` the owner and mode of ``model`` (restic's files are read-only: 0o444 or so)."""
    status = os.stat(model)
    if os.geteuid() == 0:
        os.chown(partial, status.st_uid, status.st_gid)
    os.chmod(partial, status.st_mode & 0o7777)


def _missing_at_primary(reading: Future[IndexView] | None, primary: Copy, check: CopyCheck, report: HealReport,
                        ) -> set[Handle]:
    """The packs the primary's index names that the primary lacks, once restic has read the index
    (``reading``; None: not looked for). An index file found bad at the primary is healed, not noted."""
    if reading is None:
        return set()
    try:
        view = reading.result()
    except Interrupted:
        report.interrupted = True
        return set()
    listed = primary.files.get(FileType.DATA, {})
    unreadable = {index: error for index, error in view.unreadable.items()
                  if Handle(FileType.INDEX, index) not in check.bad}
    if unreadable:
        index, error = next(iter(unreadable.items()))
        others = f" and {len(unreadable) - 1} other index file(s)" if len(unreadable) > 1 else ""
        report.notes.append(f"restic could not read the primary's index/{index}{others} (the packs they name "
                            f"were not looked for): {error}")
    return {Handle(FileType.DATA, pack) for pack in view.packs if pack not in listed}


def _name_needing_snapshots(losses: LossFinder | None, report: HealReport) -> None:
    """For each lost file, the snapshots that may need it (with the key), else why they are not named."""
    for entry in report.files:
        if not entry.lost:
            continue
        if losses is None:
            entry.snapshots_note = "no password_file or password_command: restic cannot tell which snapshots need it"
            continue
        kind, _, rest = entry.file.partition("/")
        needing = losses.needing(Handle(FileType(kind), rest.rpartition("/")[2]))
        entry.snapshots_needing, entry.snapshots_note = needing.snapshots, needing.note
