"""``triplicate audit``: are the snapshots each client wants where it wants them, fresh and intact?

For each client: is its newest backup recent enough (freshness)? For each of its
locations: is every snapshot of the primary there (presence, with how long the
missing ones have been missing), are the files its snapshots need there, and do
re-read files still hash to their names (integrity)? All of it without a key;
``restic check`` runs on top when asked and the client's key is configured.

Statuses follow the monitoring-plugin convention (OK, WARNING, CRITICAL,
UNKNOWN). A location that cannot be read is UNKNOWN on its own: the others are
still audited and reported. Safe to call from a daemon's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from triplicate import restic
from triplicate.actions.audit_report import AuditReport, ClientAudit, Finding, LocationAudit, Status, summary
from triplicate.actions.heal_config import agreed_config, disagreement, shares_a_key
from triplicate.actions.repository import restic_repository
from triplicate.actions.sync import primary_problems
from triplicate.config.model import Config
from triplicate.engine.mirror import LISTING_ORDER, Progress, SourceListing, list_source
from triplicate.engine.schedule import Schedule
from triplicate.engine.verify import VERIFIED_TYPES, choose_sample, verify_files
from triplicate.errors import UsageError
from triplicate.execute import CommandFailed, Interrupted, ScopedPool
from triplicate.state.audit import AuditRecord, AuditState, LocationAuditRecord
from triplicate.state.db import PRIMARY
from triplicate.state.replication import ReplicationState
from triplicate.storage import Backend, FileInfo, FileType, Handle, NotFound, StorageError, open_location, open_primary
from triplicate.storage.backend import NoRepository, NotAFolder
from triplicate.units import format_duration

log = logging.getLogger("triplicate.audit")

# Clients audited at once; each also audits its locations at once. Listing is I/O-bound.
CLIENT_WORKERS = 8
# How many names a reason quotes before "and N more" (the JSON lists them all).
QUOTED = 3
_STRANGER = "holds a different restic repository (its config differs from the primary's)"


@dataclass(frozen=True)
class AuditOptions:
    # Share of each location's files to re-read; None: each client's audit_verify_percent.
    verify_percent: float | None = None
    restic_check: bool = False
    read_data_subset: str | None = None  # restic check --read-data-subset (implies restic_check)
    record: bool = True  # store the results in the state database
    stop: threading.Event | None = None  # set to end verification early (daemon shutdown)
    progress: Callable[[str, str], Progress] | None = None  # (client, location) -> verification progress
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class _Context:
    """What every step of one audit shares."""

    config: Config
    options: AuditOptions
    replication: ReplicationState
    audits: AuditState
    # Per location, its `workers` reads at a time however many clients verify there at once
    # (one disk, or one server's connections); '@primary' for the primaries (repos_dir).
    readers: dict[str, threading.Semaphore]
    # Verify a sample of each primary's files too (not when the audit is limited to named locations).
    verify_primary: bool = True


def select(config: Config, clients: Iterable[str] = (), locations: Iterable[str] = ()) -> dict[str, list[str]]:
    """Client -> locations to audit: every enabled client (or the named ones), each with all its
    locations (or the requested ones it has). Raises UsageError naming an unknown client or location.
    """
    named = list(clients)
    for name in named:
        config.client(name)
    chosen = named or sorted(name for name, settings in config.clients.items() if settings.enabled)
    requested = list(locations)
    for name in requested:
        if name not in config.locations:
            known = ", ".join(sorted(config.locations)) or "none configured"
            raise UsageError(f"--location {name}: unknown location (known: {known})")
        if not any(name in config.client(client).replicate_to for client in chosen):
            raise UsageError(f"--location {name}: no audited client replicates there")
    return {
        client: [name for name in config.client(client).replicate_to if not requested or name in requested]
        for client in chosen
    }


def run_audit(config: Config, clients: Iterable[str] = (), locations: Iterable[str] = (),
              options: AuditOptions | None = None) -> AuditReport:
    """Audit the clients (default: every enabled one) at their locations and store the results.

    Never raises for a location or a primary that cannot be read (that is UNKNOWN in
    the report). Raises UsageError for an unknown client or location.
    """
    options = options or AuditOptions()
    plan = select(config, clients, locations)
    started = options.clock()
    readers = {name: threading.Semaphore(settings.workers or config.server.workers)
               for name, settings in config.locations.items()}
    readers[PRIMARY] = threading.Semaphore(config.server.workers)
    context = _Context(config, options, ReplicationState(config.server.state_dir),
                       AuditState(config.server.state_dir), readers, verify_primary=not list(locations))
    try:
        with ScopedPool(max_workers=max(1, min(CLIENT_WORKERS, len(plan))),
                                thread_name_prefix="audit") as pool:
            results = dict(zip(plan, pool.map(lambda client: _audit_client(context, client, plan[client]), plan),
                               strict=True))
        if options.record:
            for client, audit in results.items():
                context.audits.record_audit(_record(client, audit))
    finally:
        context.replication.close()
        context.audits.close()
    return AuditReport(started, options.clock(), results)


@dataclass(frozen=True)
class StatusChange:
    """A status that differs from the previous audit's, for a notification."""

    client: str
    location: str | None  # None: the client as a whole
    before: str | None  # None: never audited
    after: str
    reason: str


def status_changes(previous: Mapping[str, AuditRecord | None], report: AuditReport) -> list[StatusChange]:
    """What changed since ``previous`` (client -> its last stored audit, read before this one ran).

    A client never audited before counts as a change only when it is not OK, so that
    a new installation does not notify "OK" for every client.
    """
    changes = []
    for client, audit in report.clients.items():
        before = previous.get(client)
        pairs: list[tuple[str | None, str | None, Status, str]] = [
            (None, before.status if before else None, audit.status, audit.reason)]
        for name, location in audit.locations.items():
            old = before.locations.get(name) if before else None
            pairs.append((name, old.status if old else None, location.status, summary(location.findings)))
        for where, old_status, new_status, reason in pairs:
            if old_status != new_status and not (old_status is None and new_status is Status.OK):
                changes.append(StatusChange(client, where, old_status, new_status.value, reason))
    return changes


def _audit_client(context: _Context, client: str, locations: list[str]) -> ClientAudit:
    audit = ClientAudit(started=context.options.clock())
    primary = open_primary(context.config, client)
    try:
        primary.prepare(create=False)
        listing = list_source(primary)
        primary_config = _read_config(primary)
        checked = _verify_primary(context, client, primary, listing) if context.verify_primary else None
    except StorageError as error:
        audit.findings.append(Finding(Status.UNKNOWN, f"primary repository: {error}"))
        for location in locations:
            audit.locations[location] = LocationAudit(
                [Finding(Status.UNKNOWN, "not audited: the primary repository could not be read")])
        audit.finished = context.options.clock()
        return audit
    finally:
        primary.close()
    now = context.options.clock()
    arrival = _arrivals(listing, context.replication.known_snapshots(client, PRIMARY))
    audit.snapshots = len(arrival)
    _judge_freshness(context.config, client, audit, listing, arrival, now)
    for problem in primary_problems(context.replication, context.config, client, now):
        audit.findings.append(Finding(Status.CRITICAL, problem.text))
    if checked is not None:
        audit.locations[PRIMARY] = checked
    configs: dict[str, bytes] = {}  # location -> its config file, when it has one
    with ScopedPool(max_workers=max(1, len(locations)), thread_name_prefix="audit-location") as pool:
        audited = pool.map(
            lambda location: _audit_location(context, client, location, listing, primary_config, arrival, now,
                                             configs),
            locations,
        )
        audit.locations.update(zip(locations, audited, strict=True))
    _judge_primary_config(context.config, client, audit, primary_config, configs)
    audit.finished = context.options.clock()
    return audit


def _judge_primary_config(config: Config, client: str, audit: ClientAudit, primary_config: bytes | None,
                          configs: Mapping[str, bytes]) -> None:
    """When every location holding a copy's config differs from the primary's and they agree with one another,
    the primary's may be the damaged one (or rewritten on purpose): say so once, for the client, rather
    than blame each location (actions/heal_config.py)."""
    if primary_config is None or not configs or primary_config in configs.values() \
            or agreed_config(configs) is None:
        return
    names = [name for name in audit.locations if name in configs]  # in replicate_to order, not finishing order
    audit.findings.append(Finding(Status.CRITICAL, disagreement(client, names, config.settings(client).has_key)))
    for name in names:
        location = audit.locations[name]
        location.findings = [Finding(finding.status, "its config differs from the primary's, as every location's "
                                     "does (see the client's reason)") if finding.text == _STRANGER else finding
                             for finding in location.findings]


def _verify_primary(context: _Context, client: str, primary: Backend, listing: SourceListing) -> LocationAudit | None:
    """Re-read a sample of the primary's own files (the same share and rotation as a location's).

    Returns the primary's integrity, reported as location '@primary'; None when nothing is
    verified there (a share of 0 and no file last found bad). Files younger than
    in_progress_grace may still be being written by a backup: they are left for a later audit.
    """
    percent = context.options.verify_percent
    if percent is None:
        percent = context.config.settings(client).audit_verify_percent
    if percent <= 0 and not any(not stamp.ok for stamp in context.audits.stamps(client, PRIMARY).values()):
        return None
    result = LocationAudit(snapshots=len(listing.files[FileType.SNAPSHOT]))
    _verify(context, client, PRIMARY, primary, listing.files, context.options.clock(), result)
    if not result.findings:
        result.findings.append(Finding(Status.OK, f"{result.verified_files} file(s) hash to their names"))
    return result


def _arrivals(listing: SourceListing, first_seen: Mapping[str, float]) -> dict[str, float]:
    """Snapshot ID -> when it arrived on the server: the earlier of its file's modification
    time and the time the state database first saw it (the later one only says when we looked).
    """
    return {
        name: min(info.mtime if info.mtime is not None else float("inf"), first_seen.get(name, float("inf")))
        for name, info in listing.files[FileType.SNAPSHOT].items()
    }


def _judge_freshness(config: Config, client: str, audit: ClientAudit, listing: SourceListing,
                     arrival: Mapping[str, float], now: float) -> None:
    """Is the client still backing up? WARNING beyond expect_backup_every, CRITICAL beyond twice it."""
    expect = config.settings(client).expect_backup_every
    audit.expect_backup_every = expect
    if arrival:
        age = max(0.0, now - max(arrival.values()))
        audit.newest_snapshot_age_seconds = age
        what = f"newest snapshot is {format_duration(age)} old"
    else:
        created = listing.files[FileType.CONFIG].get("")
        age = max(0.0, now - created.mtime) if created and created.mtime is not None else 0.0
        what = f"no snapshot since the repository was created {format_duration(age)} ago"
        if audit.expect_backup_every is None:
            audit.findings.append(Finding(Status.OK, "no snapshot yet"))
    if audit.expect_backup_every is None:
        return
    limit = format_duration(audit.expect_backup_every)
    if age > 2 * audit.expect_backup_every:
        audit.findings.append(Finding(Status.CRITICAL, f"{what}: more than twice expect_backup_every ({limit})"))
    elif age > audit.expect_backup_every:
        audit.findings.append(Finding(Status.WARNING, f"{what}: more than expect_backup_every ({limit})"))


def _audit_location(context: _Context, client: str, location: str, listing: SourceListing,
                    primary_config: bytes | None, arrival: Mapping[str, float], now: float,
                    configs: dict[str, bytes]) -> LocationAudit:
    """Presence, lag, integrity (and restic check) at one location; never raises. Its config file,
    when it has one and shares a key file with the primary, is put in ``configs``."""
    result = LocationAudit()
    replica = open_location(context.config, location, client)
    try:
        try:
            replica.prepare(create=False)
        except NoRepository as missing:
            # Reachable, but nothing replicated here yet: every snapshot is missing, judged by its age;
            # unless no run can ever write there (a file where the client's folder goes).
            result.findings.append(Finding(Status.CRITICAL, str(missing)) if isinstance(missing, NotAFolder)
                                   else Finding(Status.OK, f"no repository here yet ({missing})"))
            empty: dict[FileType, dict[str, FileInfo]] = {file_type: {} for file_type in LISTING_ORDER}
            _judge_snapshots(context, client, location, empty, arrival, now, result)
            return result
        # Reader order, as for the primary: whatever a listed snapshot needs was there before it.
        present = {file_type: {info.name: info for info in replica.list(file_type)} for file_type in LISTING_ORDER}
        config_file = _read_config(replica)
        if config_file is not None and shares_a_key(listing.files[FileType.KEY], present[FileType.KEY]):
            configs[location] = config_file  # a copy of this repository (another holds none of its keys)
        if config_file != primary_config:
            result.findings.append(Finding(Status.CRITICAL, _config_problem(replica)))
            result.missing_files.append("config")
        _judge_snapshots(context, client, location, present, arrival, now, result)
        _judge_files(context, client, listing, present, arrival, now, result)
        _verify(context, client, location, replica, present, now, result)
    except StorageError as error:
        result.findings.append(Finding(Status.UNKNOWN, f"could not be read: {error}"))
        return result
    except Exception as error:  # a bug or a database failure: this location is UNKNOWN, the others go on
        log.exception("audit of %s at %s failed", client, location)
        result.findings.append(Finding(Status.UNKNOWN, f"audit failed: {type(error).__name__}: {error}"))
        return result
    finally:
        replica.close()
    if context.options.restic_check or context.options.read_data_subset:
        _restic_check(context, client, location, result)
    return result


def _read_config(backend: Backend) -> bytes | None:
    try:
        with backend.load(Handle(FileType.CONFIG)) as reader:
            return reader.read()
    except NotFound:
        return None


def _config_problem(replica: Backend) -> str:
    try:
        replica.stat(Handle(FileType.CONFIG))
    except NotFound:
        return "no config file: not a restic repository"
    return _STRANGER


def _judge_snapshots(context: _Context, client: str, location: str,
                     present: Mapping[FileType, Mapping[str, FileInfo]], arrival: Mapping[str, float],
                     now: float, result: LocationAudit) -> None:
    """Every primary snapshot should be here: a lost one is CRITICAL, a late one judged by its lag."""
    held = present[FileType.SNAPSHOT]
    result.snapshots = len(held)
    missing = sorted((name for name in arrival if name not in held), key=arrival.__getitem__)
    result.missing_snapshots = missing
    ages = {name: max(0.0, now - arrival[name]) for name in missing}
    result.lag_seconds = max(ages.values(), default=0.0)
    # What a sync or the daemon saw here once: such a snapshot was replicated, and has been lost since.
    replicated = context.replication.ever_held(client, location)
    lost = [name for name in missing if name in replicated]
    if lost:
        result.findings.append(Finding(Status.CRITICAL, f"{_count(lost, 'snapshot')} lost after being "
                                       f"replicated: {_quote(lost, short=True)}"))
    late = [name for name in missing if name not in replicated]
    _judge_delay(context.config, client, "snapshot", late, ages, result, now)
    result.extra_snapshots = sorted(name for name in held if name not in arrival)
    if result.extra_snapshots:
        result.findings.append(Finding(Status.OK, f"{_count(result.extra_snapshots, 'snapshot')} no longer "
                                       "in the primary (replicas keep them)"))
    newest = max((arrival.get(name, info.mtime or 0.0) for name, info in held.items()), default=None)
    result.newest_snapshot_age_seconds = None if newest is None else max(0.0, now - newest)


def _judge_files(context: _Context, client: str, listing: SourceListing,
                 present: Mapping[FileType, Mapping[str, FileInfo]], arrival: Mapping[str, float],
                 now: float, result: LocationAudit) -> None:
    """The keys, data and index files of the primary should be here too.

    restic writes a snapshot after everything it needs, and a sync copies a snapshot
    only after every file listed before it. So a missing file written before a snapshot
    this location holds is a hole in that snapshot (CRITICAL: worse than no snapshot);
    a newer one is just not replicated yet, judged by its lag.
    """
    held_arrivals = [arrival[name] for name in present[FileType.SNAPSHOT] if name in arrival]
    newest_held = max(held_arrivals, default=None)
    holes: list[str] = []
    late: list[str] = []
    ages: dict[str, float] = {}
    for file_type in (FileType.KEY, FileType.DATA, FileType.INDEX):
        for name, info in listing.files[file_type].items():
            if name in present[file_type]:
                continue
            path = Handle(file_type, name).relative_path()
            result.missing_files.append(path)
            written = info.mtime if info.mtime is not None else 0.0
            if newest_held is not None and written <= newest_held:
                holes.append(path)
            else:
                late.append(path)
                ages[path] = max(0.0, now - written)
    if holes:
        result.findings.append(Finding(Status.CRITICAL, f"{_count(holes, 'file')} missing that snapshots held "
                                       f"here may need: {_quote(holes)}"))
    _judge_delay(context.config, client, "file", late, ages, result, now)


def _judge_delay(config: Config, client: str, noun: str, missing: list[str], ages: Mapping[str, float],
                 result: LocationAudit, now: float) -> None:
    """Not replicated yet: a note within in_progress_grace, WARNING up to max_lag past the
    client's schedule (engine/schedule.py; for most, past its arrival), CRITICAL beyond."""
    if not missing:
        return
    max_lag = config.settings(client).max_lag
    grace = config.server.in_progress_grace
    short = noun == "snapshot"
    schedule = Schedule.of(config.client(client))
    past = {name: schedule.overdue(now - ages[name], now) for name in missing}
    waiting = [] if schedule.immediate else [name for name in missing if ages[name] >= grace and not past[name]]
    overdue = [name for name in missing if past[name] >= max_lag]
    late = [name for name in missing if grace <= ages[name] and past[name] < max_lag and name not in waiting]
    pending = [name for name in missing if ages[name] < grace]
    if overdue:
        beyond = "" if schedule.immediate else f" past its schedule ({schedule.describe()})"
        oldest = format_duration(max(ages[name] for name in overdue))
        result.findings.append(Finding(Status.CRITICAL, f"{_count(overdue, noun)} missing for up to {oldest}, "
                                       f"more than max_lag ({format_duration(max_lag)}){beyond}: "
                                       f"{_quote(overdue, short)}"))
    if late:
        oldest = format_duration(max(ages[name] for name in late))
        result.findings.append(Finding(Status.WARNING, f"{_count(late, noun)} not replicated yet, missing for "
                                       f"up to {oldest} (max_lag {format_duration(max_lag)}): "
                                       f"{_quote(late, short)}"))
    if waiting:
        result.findings.append(Finding(Status.OK, f"{_count(waiting, noun)} waiting for the client's schedule "
                                       f"({schedule.describe()})"))
    if pending:
        result.findings.append(Finding(Status.OK, f"{_count(pending, noun)} written in the last "
                                       f"{format_duration(grace)}: not judged yet"))


def _verify(context: _Context, client: str, location: str, replica: Backend,
            present: Mapping[FileType, Mapping[str, FileInfo]], now: float, result: LocationAudit) -> None:
    """Re-read the rotating sample (and every file last found bad) and compare each hash with its name."""
    options = context.options
    percent = options.verify_percent
    if percent is None:
        percent = context.config.settings(client).audit_verify_percent
    grace = context.config.server.in_progress_grace
    stamps = context.audits.stamps(client, location)
    listed = {file_type: present[file_type] for file_type in VERIFIED_TYPES}
    gone = [key for key in stamps if key[1] not in listed.get(FileType(key[0]), {})]
    if gone:
        context.audits.forget_stamps(client, location, gone)
    sample = choose_sample(listed, stamps, percent, now, grace)
    if percent > 0 and sample.in_progress:
        result.not_judged_in_progress = sample.in_progress
        result.findings.append(Finding(Status.OK, f"{sample.in_progress} file(s) modified in the last "
                                       f"{format_duration(grace)}: not verified this time"))
    if not sample.files:
        return
    progress = options.progress(client, location) if options.progress else None
    outcome = verify_files(replica, sample.files, workers=replica.connections, grace=grace,
                           clock=options.clock, stop=options.stop, progress=progress,
                           limit=context.readers[location])
    context.audits.record_verifications(client, location, outcome.stamps)
    result.verified_files = outcome.verified_files
    result.verified_bytes = outcome.verified_bytes
    result.corrupt_files = outcome.corrupt_files
    result.unreadable_files = outcome.unreadable_files
    result.not_judged_in_progress += outcome.in_progress
    if outcome.corrupt_files:
        result.findings.append(Finding(Status.CRITICAL, f"{_count(outcome.corrupt_files, 'corrupt file')} "
                                       f"(content does not hash to the name): {_quote(outcome.corrupt_files)}"))
    if outcome.unreadable_files:
        result.findings.append(Finding(Status.CRITICAL, f"{_count(outcome.unreadable_files, 'file')} could "
                                       f"not be read: {_quote(outcome.unreadable_files)}"))
    if outcome.in_progress:
        result.findings.append(Finding(Status.OK, f"{outcome.in_progress} file(s) changed while being "
                                       "verified: not judged this time"))
    if outcome.interrupted:
        result.findings.append(Finding(Status.OK, "verification interrupted"))


def _restic_check(context: _Context, client: str, location: str, result: LocationAudit) -> None:
    """``restic check`` with the client's key, when it has one; reported alongside the keyless audit."""
    settings = context.config.client(client)
    if settings.password_file is None and not settings.password_command:
        result.findings.append(Finding(Status.OK, "restic check not run: the client has no password_file "
                                       "or password_command"))
        return
    repository = restic_repository(context.config, client, location)
    subset = context.options.read_data_subset
    try:
        outcome = restic.check(repository.environment, subset, secrets=repository.secrets)
    except Interrupted:
        raise  # the daemon is stopping: no finding to record
    except CommandFailed as error:
        result.findings.append(Finding(Status.UNKNOWN, f"restic check could not run: {error}"))
        return
    stderr = outcome.stderr.decode("utf-8", "replace")
    # Retries are restic's own chatter; the lines that stay are its findings.
    errors = [line.strip() for line in stderr.splitlines() if line.strip() and "retrying after" not in line]
    result.restic_check = {"ok": outcome.returncode == 0, "exit_code": outcome.returncode,
                           "read_data_subset": subset, "errors": errors[:20]}
    if outcome.returncode == 0:
        read = f", read {subset} of the data" if subset else ""
        result.findings.append(Finding(Status.OK, f"restic check: no errors found{read}"))
        return
    if restic.key_problem(stderr):
        result.findings.append(Finding(Status.UNKNOWN, f"restic check: {restic.error_summary(stderr)}"))
    else:
        first = next((line for line in errors if not line.startswith("Fatal:")), restic.error_summary(stderr))
        result.findings.append(Finding(Status.CRITICAL, f"restic check found errors: {first}"))


def _record(client: str, audit: ClientAudit) -> AuditRecord:
    data = audit.to_json()
    locations = data.pop("locations")
    return AuditRecord(
        client=client, started=audit.started, finished=audit.finished, status=audit.status.value,
        reason=audit.reason, report=data,
        locations={
            name: LocationAuditRecord(location.status.value, summary(location.findings), locations[name])
            for name, location in audit.locations.items()
        },
    )


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}" if len(items) == 1 else f"{len(items)} {noun}s"


def _quote(names: list[str], short: bool = False) -> str:
    """The first few names (snapshot IDs shortened to 8 characters, as restic prints them)."""
    shown = [name[:8] if short else name for name in names[:QUOTED]]
    more = f" and {len(names) - QUOTED} more" if len(names) > QUOTED else ""
    return ", ".join(shown) + more
