"""``triplicate status``: each client's services (runit) and locations (the state database).

A client's status is a list of sections, each a titled list of rows (plain JSON
values) plus the problems it found. A feature adds its own section by appending
a collector to :data:`COLLECTORS`; the CLI renders every section the same way.
In JSON (docs/json.md) a section whose rows are named (a location, a service, a
job) is an object keyed by that name, and a section of one record is that
record or null.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triplicate.actions import sync
from triplicate.config.model import Config
from triplicate.engine.schedule import Schedule
from triplicate.service import runit
from triplicate.service.layout import SERVICES, Layout
from triplicate.state.db import PRIMARY
from triplicate.state.replication import BACKUP_TRIGGER, PRIMARY_PROBLEM_PREFIX, ReplicationState
from triplicate.storage.local import lock_times
from triplicate.units import format_bytes, format_duration, parse_bandwidth, rate_at


@dataclass
class StatusSection:
    key: str  # its key in the JSON output
    title: str
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    # The column naming each row: in JSON the rows are an object keyed by it, in the rows' order.
    # None: the section holds one record at most, in JSON that row or null.
    named_by: str | None = None
    # The JSON value when the rows (a table for people) are not its shape; None: from the rows.
    data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any] | None:
        """The section as JSON: ``data``, else the rows keyed by ``named_by``, else the one row or None."""
        if self.data is not None:
            return self.data
        if self.named_by is None:
            return self.rows[0] if self.rows else None
        return {row[self.named_by]: {key: value for key, value in row.items() if key != self.named_by}
                for row in self.rows}


@dataclass(frozen=True)
class StatusContext:
    """What every collector may read; ``replication`` is open for reading only."""

    config: Config
    client: str
    now: float
    layout: Layout
    replication: ReplicationState


Collector = Callable[[StatusContext], StatusSection]


@dataclass
class ClientStatus:
    name: str
    enabled: bool
    sections: list[StatusSection]

    @property
    def problems(self) -> list[str]:
        return [problem for section in self.sections for problem in section.problems]

    def to_json(self) -> dict[str, Any]:
        """The client's JSON, without its name (the key it is found under)."""
        result: dict[str, Any] = {"enabled": self.enabled, "ok": not self.problems, "problems": self.problems}
        result.update({section.key: section.to_json() for section in self.sections})
        return result


def services_section(context: StatusContext) -> StatusSection:
    """Each service's runit state and how long it has been in it (its uptime when running)."""
    layout, name = context.layout, context.client
    enabled = context.config.clients[name].enabled
    section = StatusSection("services", "services", [], named_by="service")
    folders = {"supervisor": layout.client_dir(name)}
    folders.update({service: layout.service_dir(name, service) for service in SERVICES
                    if layout.service_dir(name, service).is_dir()})  # no port: no REST endpoint
    if context.config.server.endpoint == "shared" and context.config.clients[name].port is not None:
        folders["rest (shared)"] = layout.shared_rest
    if context.config.server.syncd == "shared":
        folders["syncd (shared)"] = layout.shared_syncd
    for service, folder in folders.items():
        state = runit.service_state(folder)
        section.rows.append({"service": service, "state": state.state, "pid": state.pid,
                             "for_seconds": _rounded(state.seconds(context.now))})
        if enabled and not state.running:
            section.problems.append(f"{service}: {state.state} (enabled: should run)")
        elif not enabled and state.state not in ("unsupervised", "absent") and \
                folder not in (layout.shared_syncd, layout.shared_rest):
            section.problems.append(f"{service}: still supervised although the client is disabled")
    for orphan in runit.orphans(layout.client_dir(name)):
        section.problems.append(
            f"orphaned {orphan.program} (pid {orphan.pid}) runs {orphan.folder} outside supervision: stop it "
            f"with 'triplicate client disable {name}', then 'triplicate client enable {name}'")
    return section


def locations_section(context: StatusContext) -> StatusSection:
    """Per location (and the primary): snapshots, newest snapshot's age, lag, last sync."""
    config, name, now = context.config, context.client, context.now
    state = context.replication
    section = StatusSection("locations", "locations", [], named_by="location")
    primary = state.known_snapshots(name, PRIMARY)
    newest = max(primary.values(), default=None)
    # The primary's own integrity problems are the primary's, not each replica's.
    primary_problems = sync.primary_problems(state, config, name, now)
    section.rows.append({"location": PRIMARY, "snapshots": len(primary),
                         "newest_age_seconds": _rounded(None if newest is None else now - newest),
                         "lag_seconds": None, "last_sync": None, "last_sync_age_seconds": None,
                         "error": "; ".join(f"{problem.path} {problem.outcome.description}"
                                            for problem in primary_problems) or None, "bwlimit": None})
    section.problems += [problem.text for problem in primary_problems]
    expect_every = config.settings(name).expect_backup_every
    if expect_every is not None and (newest is None or now - newest > expect_every):
        section.problems.append(f"no new backup for more than {format_duration(expect_every)}")
    health = state.location_health(name)
    max_lag = config.settings(name).max_lag
    schedule = Schedule.of(config.clients[name])  # lag is judged from when the schedule replicates
    backup_since = _backup_started(config.primary_dir(name))
    for location in config.clients[name].replicate_to:
        present = state.known_snapshots(name, location)
        # A snapshot's age is counted from its arrival on the server (snapshot files are
        # encrypted: triplicate never reads their time), else from its arrival there.
        arrivals = [primary.get(snapshot, seen) for snapshot, seen in present.items()]
        newest_here = max(arrivals, default=None)
        lag = state.replication_lag(name, location, now)
        row = health.get(location)
        result, attempt, error = _last_sync(row)
        held = result == "failed" and (error or "").startswith(PRIMARY_PROBLEM_PREFIX)
        if held:
            error = f"held back by the primary's problems (see {PRIMARY})"
        section.rows.append({"location": location, "snapshots": len(present),
                             "newest_age_seconds": _rounded(None if newest_here is None else now - newest_here),
                             "lag_seconds": _rounded(lag), "last_sync": result,
                             "last_sync_age_seconds": _rounded(None if attempt is None else now - attempt),
                             "error": error, "bwlimit": bwlimit_text(config.locations[location].bwlimit, now),
                             "copying": _copying_during_backup(state, name, location, backup_since)})
        if result == "failed" and not held:
            section.problems.append(f"{location}: last sync failed: {error}")
        if isinstance(max_lag, (int, float)) and lag and schedule.overdue(now - lag, now) > max_lag:
            section.problems.append(f"{location}: replication lag {format_duration(lag)} exceeds "
                                    f"max_lag {format_duration(max_lag)}"
                                    + ("" if schedule.immediate else f" past its schedule ({schedule.describe()})"))
    return section


def _backup_started(primary: Path) -> float | None:
    """When the oldest lock in the primary was made (restic holds one for a whole backup), or None."""
    return min(lock_times(primary), default=None)


def _copying_during_backup(state: ReplicationState, client: str, location: str, since: float | None) -> str | None:
    """"copying during backup (N files, M MB ahead)": what the endpoint's announcements had copied
    to ``location`` since the running backup took its lock (docs/daemon.md), or None."""
    if since is None:
        return None
    files, size = state.copied_since(client, location, since - 1, BACKUP_TRIGGER)
    return f"copying during backup ({files} files, {format_bytes(size)} ahead)" if files else None


def bwlimit_text(bwlimit: str | None, now: float) -> str | None:
    """A location's ``bwlimit`` as written; a timetable with the rate in force at ``now``."""
    if bwlimit is None or "," not in bwlimit:
        return bwlimit
    local = time.localtime(now)
    rate = rate_at(parse_bandwidth(bwlimit), local.tm_hour * 60 + local.tm_min)
    return f"{bwlimit} (now {'off' if rate is None else format_bytes(rate) + '/s'})"


def _last_sync(row: Any) -> tuple[str, float | None, str | None]:
    """("never" | "ok" | "failed", when it was attempted, its error)."""
    if row is None or row["last_attempt"] is None:
        return "never", None, None
    ok = row["last_success"] is not None and row["last_success"] >= row["last_attempt"]
    return ("ok" if ok else "failed"), row["last_attempt"], row["last_error"]


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def audit_section(context: StatusContext) -> StatusSection:
    """The last audit: the client's status and each location's, with the reason."""
    from triplicate.state.audit import AuditState

    section = StatusSection("audit", "last audit", [])
    with AuditState.opened(context.config.server.state_dir, create=False) as state:
        record = state.last_audit(context.client)
    if record is None:
        return section
    age = _rounded(context.now - record.finished)
    section.rows.append({"location": "(client)", "status": record.status, "age_seconds": age,
                         "reason": record.reason})
    for location, result in record.locations.items():
        section.rows.append({"location": location, "status": result.status, "age_seconds": age,
                             "reason": result.reason})
    # As audit --json says it: the client's status, then its locations by name.
    section.data = {"status": record.status, "age_seconds": age, "reason": record.reason,
                    "locations": {location: {"status": result.status, "reason": result.reason}
                                  for location, result in record.locations.items()}}
    if record.status not in ("OK", "WARNING"):
        section.problems.append(f"last audit: {record.status}: {record.reason}")
    return section


def restore_check_section(context: StatusContext) -> StatusSection:
    """The last restore check of each location: passed or failed, files, estimated full restore."""
    from triplicate.state.restore_check import RestoreCheckState

    section = StatusSection("restore_check", "last restore check", [], named_by="location")
    with RestoreCheckState.opened(context.config.server.state_dir, create=False) as state:
        records = state.last_restore_checks(context.client)
    for location, record in records.items():
        reason = "; ".join(f"{failure.get('path') or location}: {failure.get('reason')}"
                           for failure in record.failures[:3])
        section.rows.append({"location": location, "result": "passed" if record.ok else "failed",
                             "age_seconds": _rounded(context.now - record.time), "files": record.files_checked,
                             "full_restore_estimate_seconds": _rounded(record.estimated_full_restore_seconds),
                             "reason": reason or None})
        if not record.ok:
            section.problems.append(f"{location}: last restore check failed: {reason}")
    return section


def retention_section(context: StatusContext) -> StatusSection:
    """The last retention run: when, what it removed, the space it reclaimed."""
    from triplicate.state.retention import RetentionState

    section = StatusSection("retention", "last retention", [])
    with RetentionState.opened(context.config.server.state_dir, create=False) as state:
        row = state.last_run(context.client)
    if row is None:
        return section
    removed = json.loads(row["removed"])
    section.rows.append({"result": "ok" if row["ok"] else "failed",
                         "age_seconds": _rounded(context.now - row["finished"]),
                         "kept": row["kept"], "removed": len(removed), "reclaimed_bytes": row["reclaimed_bytes"],
                         "error": row["error"]})
    if not row["ok"]:
        section.problems.append(f"last retention: {row['error']}")
    return section


def scheduled_section(context: StatusContext) -> StatusSection:
    """The daemon's scheduled checks (audit, restore check, retention...): each one's last run.
    A check that could not run is a problem here; what a check found is its own section's."""
    from triplicate.daemon.checks import COULD_NOT_RUN
    from triplicate.state.daemon import DaemonState

    section = StatusSection("scheduled", "scheduled checks", [], named_by="job")
    with DaemonState.opened(context.config.server.state_dir, create=False) as state:
        runs = state.job_runs(context.client)
        hook = state.hook_last_run(context.client)
    if hook is not None:
        started, ok = hook
        runs.append(("on_change hook", started, ok, None if ok else "failed (the daemon's log says why)"))
        if not ok:
            section.problems.append("on_change hook: its last run failed (the daemon's log says why)")
    for job, started, ok, error in runs:
        section.rows.append({"job": job, "result": "ok" if ok else "failed",
                             "age_seconds": _rounded(context.now - started),
                             "error": error})
        if error is not None and error.startswith(COULD_NOT_RUN):
            section.problems.append(f"scheduled {job}: {error}")
    return section


def recover_drill_section(context: StatusContext) -> StatusSection:
    """The last recovery drill: the time a rebuild from the locations took (the recovery time objective)."""
    from triplicate.state.recover_drill import RecoverDrillState

    section = StatusSection("recover_drill", "last recovery drill", [])
    with RecoverDrillState.opened(context.config.server.state_dir, create=False) as state:
        record = state.last_drill(context.client)
    if record is None:
        return section
    section.rows.append({"result": "passed" if record.ok else "failed",
                         "age_seconds": _rounded(context.now - record.time),
                         "recovery_seconds": _rounded(record.seconds), "bytes": record.bytes,
                         "restic_check": record.restic_check, "error": record.error})
    if not record.ok:
        section.problems.append(f"last recovery drill failed: {record.error}")
    return section


def endpoint_section(context: StatusContext) -> StatusSection:
    """What the REST endpoint counted: bytes and files received, requests, refusals, the newest snapshot."""
    from triplicate.state.endpoint import EndpointState

    section = StatusSection("endpoint", "endpoint", [])
    with EndpointState.opened(context.config.server.state_dir, create=False) as state:
        counts = state.counts(context.client)
    if counts.updated is None:
        return section
    quota = context.config.settings(context.client).quota
    newest = counts.newest_snapshot
    figures = counts.figures()
    section.rows.append({
        "received_bytes": figures["received_bytes"], "files": figures["files"],
        "newest_snapshot_age_seconds": _rounded(None if newest is None else context.now - newest),
        "repository_bytes": figures["repository_bytes"], "quota_bytes": quota,
        "failed_logins": figures["failed_logins"], "rejected": figures["rejected"], "requests": figures["requests"],
    })
    if isinstance(quota, int) and counts.repository_bytes is not None and counts.repository_bytes >= 0.95 * quota:
        section.problems.append(f"repository at {counts.repository_bytes * 100 // max(quota, 1)}% of its quota")
    return section


COLLECTORS: list[Collector] = [services_section, locations_section, audit_section, restore_check_section,
                               retention_section, recover_drill_section, endpoint_section, scheduled_section]


def collect_status(config: Config, names: list[str] | None = None, now: float | None = None) -> list[ClientStatus]:
    """The status of the named clients (all when None). Raises UsageError for an unknown name."""
    for name in names or []:
        config.client(name)
    now = time.time() if now is None else now
    layout = Layout(config.server.state_dir)
    replication = ReplicationState(config.server.state_dir, create=False)  # status writes nothing
    try:
        statuses = []
        for name in names or sorted(config.clients):
            context = StatusContext(config, name, now, layout, replication)
            sections = [collect(context) for collect in COLLECTORS]
            statuses.append(ClientStatus(name, config.clients[name].enabled, sections))
    finally:
        replication.close()
    return statuses
