"""``triplicate sync``: mirror one client's primary repository to its locations."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from triplicate.actions.holdback import ResticDependents
from triplicate.config.model import Config
from triplicate.engine.judgement import Outcome, is_failure, problem_text
from triplicate.engine.mirror import MirrorOptions, MirrorResult, Progress, SourceListing, list_source, mirror
from triplicate.errors import TriplicateError, UsageError
from triplicate.execute import ScopedPool
from triplicate.state.audit import AuditState, Verification
from triplicate.state.db import PRIMARY
from triplicate.state.locks import location_lock
from triplicate.state.replication import ReplicationState, RunRecord, SnapshotChange
from triplicate.state.retention import RetentionState
from triplicate.storage import FileType, StorageError, open_location, open_primary


@dataclass
class SyncReport:
    client: str
    locations: dict[str, MirrorResult]
    snapshots: SnapshotChange = field(default_factory=lambda: SnapshotChange([], []))

    @property
    def ok(self) -> bool:
        """No location failed (an incomplete location is not a failure)."""
        return all(result.ok for result in self.locations.values())

    @property
    def complete(self) -> bool:
        """Every location holds everything listed: the command's exit status 0."""
        return all(result.ok and result.complete for result in self.locations.values())

    def to_json(self) -> dict[str, object]:
        return {
            "client": self.client,
            "ok": self.ok,
            "complete": self.complete,
            "locations": {
                name: {
                    "ok": result.ok,
                    "complete": result.ok and result.complete,
                    "files_copied": result.files_copied,
                    "bytes_copied": result.bytes_copied,
                    "files_skipped_in_progress": result.files_skipped_in_progress,
                    "files_vanished": result.files_vanished,
                    "corrupt_files": result.corrupt_files,
                    "unreadable_files": result.unreadable_files,
                    "held_back": result.held_back,
                    "unsettled": {path: file.outcome.value for path, file in sorted(result.unsettled.items())},
                    "problems": result.problems,
                    "files_removed": result.files_removed,
                    "files_repaired": len(result.repaired),
                    "removals_deferred": result.removals_deferred,
                    "seconds": round(result.seconds, 3),
                    "error": result.error,
                }
                for name, result in self.locations.items()
            },
        }


def select_locations(config: Config, client: str, requested: list[str] | tuple[str, ...],
                     option: str = "--to") -> list[str]:
    """The client's locations, or the requested subset; raises UsageError naming a stranger (and ``option``)."""
    configured = config.client(client).replicate_to
    for name in requested:
        if name not in configured:
            raise UsageError(f"{option} {name}: not a location of client '{client}' (its locations: "
                             f"{', '.join(configured) or 'none'})")
    return list(requested) or list(configured)


def sync_client(
    config: Config,
    client: str,
    locations: list[str],
    *,
    trigger: str = "cli",
    options: MirrorOptions | None = None,
    progress_for: Mapping[str, Progress] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> SyncReport:
    """Mirror ``client`` to ``locations`` concurrently, record the outcome, and report.

    A failure at one location never stops the others. ``on_wait(message)`` is told when a
    location waits for another sync of it ("waiting for another sync of web01 -> usb").
    Raises TriplicateError only when the primary repository itself cannot be read.
    """
    options = options or MirrorOptions(in_progress_grace=config.server.in_progress_grace)
    source = open_primary(config, client)
    try:
        source.prepare(create=False)
    except StorageError as error:
        raise TriplicateError(f"client '{client}': {error}") from None
    state = ReplicationState(config.server.state_dir)
    settings = config.client(client)
    # With the client's key, a bad pack holds back only what needs it (restic tells).
    dependents = (ResticDependents(config, client)
                  if settings.password_file is not None or settings.password_command else None)
    # The source is listed here while each location lists its replica in its own thread.
    listing: Future[SourceListing] = Future()

    def run(location: str) -> MirrorResult:
        replica = open_location(config, location, client)
        deletions = _deletions(config, client, location)
        location_options = replace(options, workers=replica.connections,
                                   progress=(progress_for or {}).get(location, options.progress),
                                   deletions=deletions, repair=_found_corrupt(config, client, location),
                                   known_mismatches=_known_mismatches(state, client), dependents=dependents,
                                   remembered=frozenset(row.path for row in state.unsettled_files(client)))
        started = time.time()
        try:
            waiting = None if on_wait is None else (
                lambda: on_wait(f"waiting for another sync of {client} -> {location}"))
            with location_lock(config.server.state_dir, client, location, on_wait=waiting):
                result = mirror(source, replica, listing.result, location_options)
        finally:
            replica.close()
            if deletions is not None:
                deletions.state.close()
        if listing.exception() is None:  # the primary's fault is not the location's: not recorded
            _judge_unsettled(state, client, result, options.in_progress_grace)
            _record(state, client, location, trigger, started, result)
        if result.repaired:  # copied again and verified on the way: good as of now
            with AuditState.opened(config.server.state_dir) as audits:
                audits.record_verifications(client, location, [
                    Verification(kind, name, time.time(), True) for kind, name in result.repaired])
        return result

    try:
        with ScopedPool(max_workers=max(1, len(locations)), thread_name_prefix="location") as pool:
            futures = [pool.submit(run, location) for location in locations]
            try:
                listing.set_result(list_source(source))
            except StorageError as error:
                listing.set_exception(error)
                raise TriplicateError(f"client '{client}': {error}") from None
            change = state.record_snapshots(client, PRIMARY, listing.result().snapshot_ids,
                                            listing.result().listed_at)
            _forget_gone(state, client, listing.result())
            results = {location: future.result() for location, future in zip(locations, futures, strict=True)}
    finally:
        state.close()
        source.close()
    return SyncReport(client, results, change)


def record_primary_snapshots(config: Config, client: str) -> None:
    """Record the snapshots now in ``client``'s primary, as a run does before it copies: those
    first seen now count their lag from now (status, metrics). For a run that waits for its
    client's schedule (the daemon), which looks every minute: the database is written only
    when the snapshots changed. Raises StorageError when the primary cannot be listed."""
    source = open_primary(config, client)
    try:
        source.prepare(create=False)  # a primary gone is not a primary without snapshots
        listed_at = time.time()
        names = {info.name for info in source.list(FileType.SNAPSHOT)}
    finally:
        source.close()
    state = ReplicationState(config.server.state_dir)
    try:
        if names != set(state.known_snapshots(client, PRIMARY)):  # no write while nothing changed
            state.record_snapshots(client, PRIMARY, names, listed_at)
    finally:
        state.close()


@dataclass
class _TrackedDeletions:
    """Deletion propagation for one replica, remembered in the state database."""

    delay: float
    state: RetentionState
    client: str
    location: str

    def absent_since(self, file_type: FileType, extra: set[str], now: float) -> dict[str, float]:
        return self.state.absent_since(self.client, self.location, file_type.value, extra, now)

    def forget(self, file_type: FileType, names: list[str]) -> None:
        self.state.forget_absent(self.client, self.location, file_type.value, names)


def _known_mismatches(state: ReplicationState, client: str) -> dict[str, tuple[int, float | None]]:
    """Primary files already read and found not to match their names: (size, mtime) then."""
    return {row.path: (row.size, row.mtime) for row in state.unsettled_files(client)
            if Outcome(row.outcome).content_mismatch}


def _judge_unsettled(state: ReplicationState, client: str, result: MirrorResult, grace: float) -> None:
    """Remember the files the run could not take; fail the run for those unsettled too long.

    A failure names each file and what to do about it (``result.problems``).
    """
    now = time.time()
    files = {path: (file.outcome.value, file.size, file.mtime) for path, file in result.unsettled.items()}
    since = state.note_unsettled(client, files, result.settled, now)
    for path, file in sorted(result.unsettled.items()):
        unsettled_for = now - since.get(path, now)
        if is_failure(file.outcome, unsettled_for, grace):
            result.problems.append(problem_text(client, path, file.outcome, unsettled_for))
    if result.problems:
        result.ok = False
        if result.held_back:
            snapshots = sum(path.startswith("snapshots/") for path in result.held_back)
            result.problems.append(f"Holding back {len(result.held_back)} new file(s) that may need it, "
                                   f"{snapshots} of them snapshot(s).")


@dataclass(frozen=True)
class PrimaryProblem:
    """A primary file unsettled for too long."""

    path: str  # data/ab/<id>
    outcome: Outcome
    text: str  # one line naming the file and what to do


def primary_problems(state: ReplicationState, config: Config, client: str, now: float) -> list[PrimaryProblem]:
    """The client's primary files unsettled for too long (for ``status`` and ``audit``)."""
    grace = config.server.in_progress_grace
    problems = []
    for row in state.unsettled_files(client):
        outcome = Outcome(row.outcome)
        if is_failure(outcome, now - row.first_seen, grace):
            problems.append(PrimaryProblem(row.path, outcome,
                                           problem_text(client, row.path, outcome, now - row.first_seen)))
    return problems


def _forget_gone(state: ReplicationState, client: str, listing: SourceListing) -> None:
    """Unsettled files no longer in the primary (a prune removed them) are no problem any more."""
    gone = []
    for row in state.unsettled_files(client):
        kind, _, rest = row.path.partition("/")
        listed = listing.files.get(FileType(kind), {}) if kind in FileType.__members__.values() else {}
        if rest.rpartition("/")[2] not in listed:
            gone.append(row.path)
    state.forget_unsettled(client, gone)


def _found_corrupt(config: Config, client: str, location: str) -> frozenset[tuple[str, str]]:
    """The replica's files whose last audit found them corrupt: the sync copies them again."""
    with AuditState.opened(config.server.state_dir) as audits:
        return frozenset(key for key, stamp in audits.stamps(client, location).items() if not stamp.ok)


def _deletions(config: Config, client: str, location: str) -> _TrackedDeletions | None:
    delay = config.locations[location].propagate_deletes
    if delay is None:
        return None
    return _TrackedDeletions(delay, RetentionState(config.server.state_dir), client, location)


def _record(state: ReplicationState, client: str, location: str, trigger: str, started: float,
            result: MirrorResult) -> None:
    finished = time.time()
    if result.replica_snapshots is not None:
        state.record_snapshots(client, location, result.replica_snapshots, finished)
    state.record_run(RunRecord(
        client=client, location=location, trigger=trigger, started=started, finished=finished,
        ok=result.ok, files_copied=result.files_copied, bytes_copied=result.bytes_copied,
        files_skipped_in_progress=result.files_skipped_in_progress,
        corrupt_files=result.corrupt_files,
        error=result.error or " ".join([*result.problems, *result.unreadable_files]) or None,
        interrupted=result.interrupted,
    ))
