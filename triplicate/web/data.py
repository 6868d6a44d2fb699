"""The state database as plain JSON values, for the API and the pages (read-only).

Every function opens the database without creating it (a mistyped state_dir
shows nothing rather than creating a folder) and closes it before returning;
the web service calls them in threads. Nothing here ever includes a secret:
no password, key or credential file path, only names, states and numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from triplicate import __version__
from triplicate.actions import JSON_VERSION
from triplicate.config.model import Config
from triplicate.engine.schedule import Schedule
from triplicate.metrics import location_view
from triplicate.state.audit import AuditState
from triplicate.state.db import PRIMARY
from triplicate.state.recover_drill import DrillRecord, RecoverDrillState
from triplicate.state.replication import ReplicationState
from triplicate.state.restore_check import RestoreCheckState
from triplicate.state.retention import RetentionState

API_VERSION = JSON_VERSION  # one version for the CLI's --json and the API's bodies (docs/json.md)
# The cell states of the dashboard's grid, best first.
STATES = ("ok", "never", "late", "failed")
# Location settings that are safe to show (no credential or key file).
PUBLIC_LOCATION_KEYS = ("type", "path", "mount_point", "host", "port", "user", "endpoint", "bucket", "prefix",
                        "region", "url", "username", "remote", "propagate_deletes")
DAY = 86400.0


@dataclass
class Stores:
    replication: ReplicationState
    audit: AuditState
    restore: RestoreCheckState
    retention: RetentionState
    drill: RecoverDrillState


@contextmanager
def opened(config: Config) -> Iterator[Stores]:
    """Every feature's store, open for reading for the ``with`` block."""
    state_dir = config.server.state_dir
    with ExitStack() as stack:
        yield Stores(
            stack.enter_context(ReplicationState.opened(state_dir, create=False)),
            stack.enter_context(AuditState.opened(state_dir, create=False)),
            stack.enter_context(RestoreCheckState.opened(state_dir, create=False)),
            stack.enter_context(RetentionState.opened(state_dir, create=False)),
            stack.enter_context(RecoverDrillState.opened(state_dir, create=False)),
        )


def server_info(config: Config) -> dict[str, Any]:
    """The server: version, names, how many clients, its locations' names."""
    return {
        "version": API_VERSION, "triplicate": __version__, "public_host": config.server.public_host,
        "syncd": config.server.syncd, "client_count": len(config.clients),
        "enabled_client_count": sum(1 for client in config.clients.values() if client.enabled),
        "location_names": sorted(config.locations), "primary": PRIMARY,
    }


def locations(config: Config) -> dict[str, Any]:
    """Every configured location: its kind, where it is (no credentials), the clients using it."""
    result = {}
    for name, location in sorted(config.locations.items()):
        settings = location.model_dump(mode="json", exclude_none=True)
        public = {key: settings[key] for key in PUBLIC_LOCATION_KEYS if key in settings}
        public["client_names"] = sorted(client for client, settings_ in config.clients.items()
                                        if name in settings_.replicate_to)
        result[name] = public
    return {"version": API_VERSION, "locations": result}


def overview(config: Config, now: float | None = None, names: list[str] | None = None) -> dict[str, Any]:
    """Every client with each of its locations judged (the dashboard's grid and ``/api/v1/clients``).

    A location's ``state``: "ok", "never" (no run yet), "late" (lag over max_lag past the
    client's replication schedule (engine/schedule.py), or the
    primary's newest snapshot older than expect_backup_every) or "failed" (its last run
    failed, or its last audit found it CRITICAL or UNKNOWN). ``names``: only these clients.
    """
    now = time.time() if now is None else now
    one = names[0] if names is not None and len(names) == 1 else None
    with opened(config) as stores:
        rows = stores.replication.location_metrics(now, one)
        primary = stores.replication.primary_snapshots()
        if one is None:
            audits = stores.audit.last_audits()
        else:
            record = stores.audit.last_audit(one)
            audits = {} if record is None else {one: record}
        restore = _last_restore_checks(stores.restore, one)
        clients = {}
        for name in names or sorted(config.clients):
            count, newest = primary.get(name, (0, None))
            clients[name] = _client(config, name, now, count, rows, newest, audits.get(name), restore.get(name, {}))
    return {"version": API_VERSION, "time": round(now, 3), "clients": clients}


def _client(config: Config, name: str, now: float, snapshots: int, rows: dict[tuple[str, str], dict[str, Any]],
            newest: float | None, audit: Any, restore: dict[str, dict[str, Any]]) -> dict[str, Any]:
    settings = config.clients[name]
    expect = config.settings(name).expect_backup_every
    max_lag = config.settings(name).max_lag
    schedule = Schedule.of(settings)  # lag is judged from when the schedule replicates
    backups_late = isinstance(expect, (int, float)) and (newest is None or now - newest > expect)
    problems = []
    if backups_late:
        problems.append(f"no new backup for more than {expect:.0f}s")
    result_locations: dict[str, Any] = {}
    for location in [PRIMARY, *settings.replicate_to]:
        if location == PRIMARY:
            entry: dict[str, Any] = {
                "state": "late" if backups_late else ("ok" if newest is not None else "never"),
                "newest_snapshot": newest, "snapshots": snapshots,
            }
        else:
            entry = _location(rows.get((name, location)), now, max_lag, schedule)
        audit_location = audit.locations.get(location) if audit is not None else None
        entry["audit"] = audit_location.status if audit_location is not None else None
        if audit_location is not None and entry["audit"] in ("CRITICAL", "UNKNOWN") and location != PRIMARY:
            entry["state"] = "failed"
            problems.append(f"{location}: audit {entry['audit']}: {audit_location.reason}")
        entry["restore_check"] = restore.get(location)
        if entry.get("error") and entry["state"] == "failed":
            problems.append(f"{location}: {entry['error']}")
        elif entry["state"] == "late" and location != PRIMARY:
            problems.append(f"{location}: replication lag {entry['lag_seconds']:.0f}s over max_lag {max_lag:.0f}s"
                            + ("" if schedule.immediate else f" past its schedule ({schedule.describe()})"))
        result_locations[location] = entry
    states = [entry["state"] for entry in result_locations.values()]
    return {
        "enabled": settings.enabled, "port": settings.port,
        "state": max(states, key=STATES.index) if settings.enabled else "disabled",
        "problems": problems,
        "audit": None if audit is None else {"status": audit.status, "reason": audit.reason,
                                             "finished": audit.finished},
        "locations": result_locations,
    }


def _location(row: dict[str, Any] | None, now: float, max_lag: float, schedule: Schedule) -> dict[str, Any]:
    if row is None:
        return {"state": "never", "up": None, "snapshots": 0, "newest_snapshot": None, "lag_seconds": None,
                "last_success": None, "last_attempt": None, "error": None, "bytes_copied_total": 0,
                "failed_runs": 0, "consecutive_failures": 0}
    view = location_view(row, now)
    late = schedule.overdue(now - view.lag, now) > max_lag
    state = "never" if view.up is None else "failed" if not view.up else "late" if late else "ok"
    return {
        "state": state, "up": view.up, "snapshots": row["snapshots"], "newest_snapshot": row["newest"],
        "lag_seconds": round(view.lag, 1), "last_success": row["last_success"] or None,
        "last_attempt": row["last_attempt"], "error": view.error,
        "bytes_copied_total": row["bytes_copied_total"], "failed_runs": row["failed_runs"],
        "consecutive_failures": row["consecutive_failures"],
    }


def _last_restore_checks(state: RestoreCheckState, client: str | None) -> dict[str, dict[str, dict[str, Any]]]:
    """client -> location -> the newest restore check (ok, time), of ``client`` or of all."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for (name, location), (ok, when) in state.last_results().items():
        if client is None or name == client:
            result.setdefault(name, {})[location] = {"ok": ok, "time": when}
    return result


def client_detail(config: Config, name: str, now: float | None = None, days: int = 30) -> dict[str, Any]:
    """One client: its grid row, last audit, restore checks, retention and recovery drill, runs, and chart series.

    Raises UsageError for a client not in the configuration.
    """
    config.client(name)
    now = time.time() if now is None else now
    summary = overview(config, now, [name])["clients"][name]
    since = now - days * DAY
    with opened(config) as stores:
        audit = stores.audit.last_audit(name)
        restore = stores.restore.last_restore_checks(name)
        retention = stores.retention.last_run(name)
        drill = stores.drill.last_drill(name)
        arrivals = stores.replication.arrivals(name, since)
        runs = [_run(row) for row in stores.replication.recent_runs(name, since, 50)]
        daily = _bytes_per_day(stores.replication, name, since)
    primary = arrivals.get(PRIMARY, {})
    latency = {
        location: [[primary[snapshot], round(seen - primary[snapshot], 3)]
                   for snapshot, seen in sorted(found.items(), key=lambda item: item[1]) if snapshot in primary]
        for location, found in arrivals.items() if location != PRIMARY
    }
    return {
        "version": API_VERSION, "client": name, **summary, "endpoint": endpoint(config, name, now),
        "last_audit": None if audit is None else {
            "status": audit.status, "reason": audit.reason, "started": audit.started, "finished": audit.finished,
            "locations": {location: {"status": result.status, "reason": result.reason}
                          for location, result in audit.locations.items()}},
        "restore_checks": {location: _restore(record) for location, record in restore.items()},
        "retention": None if retention is None else _retention(retention),
        "recover_drill": None if drill is None else _drill(drill),
        "runs": runs,
        "charts": {"since": since, "arrivals": sorted(primary.values()), "latency": latency,
                   "bytes_per_day": daily},
    }


def endpoint(config: Config, name: str, now: float) -> dict[str, Any]:
    """The client's REST endpoint and watcher: URL (never the password), port, each service's
    runit state (the shared one's in a shared mode) and for how long it has been in it, and
    what the endpoint counted (``statistics``, null until it first reported)."""
    from triplicate.actions.clients import repository_url
    from triplicate.service import runit
    from triplicate.service.layout import Layout
    from triplicate.state.endpoint import EndpointState

    layout = Layout(config.server.state_dir)
    port = config.clients[name].port
    folders = {"rest": layout.service_dir(name, "rest"), "syncd": layout.service_dir(name, "syncd")}
    if config.server.endpoint == "shared":
        folders["rest"] = layout.shared_rest
    if config.server.syncd == "shared":
        folders["syncd"] = layout.shared_syncd
    services = {}
    for service, folder in folders.items():
        state = runit.service_state(folder)
        seconds = state.seconds(now)
        services[service] = {"state": state.state, "for_seconds": None if seconds is None else round(seconds, 1)}
    with EndpointState.opened(config.server.state_dir, create=False) as store:
        counts = store.counts(name)
    statistics = None if counts.updated is None else {
        **counts.figures(), "newest_snapshot": counts.newest_snapshot,
        "quota_bytes": config.settings(name).quota, "updated": counts.updated,
    }
    return {"url": repository_url(config, name) if port is not None else None, "port": port,
            "services": services, "statistics": statistics}


def _bytes_per_day(state: ReplicationState, client: str, since: float) -> dict[str, list[list[float]]]:
    with state._lock:
        rows = state.connection.execute(
            "SELECT location, CAST(started / 86400 AS INTEGER) AS day, SUM(bytes_copied) FROM runs"
            " WHERE client=? AND started>=? GROUP BY location, day ORDER BY day", (client, since),
        ).fetchall()
    result: dict[str, list[list[float]]] = {}
    for row in rows:
        result.setdefault(row[0], []).append([row[1] * DAY, row[2]])
    return result


def _run(row: Any) -> dict[str, Any]:
    return {"client": row["client"], "location": row["location"], "trigger": row["trigger"],
            "started": row["started"], "finished": row["finished"], "ok": bool(row["ok"]),
            "files_copied": row["files_copied"], "bytes_copied": row["bytes_copied"],
            "corrupt_files": json.loads(row["corrupt_files"]), "error": row["error"]}


def _restore(record: Any) -> dict[str, Any]:
    return {"time": record.time, "ok": record.ok,  # found under its location's name: neither named again
            "snapshot": record.snapshot, "files_checked": record.files_checked,
            "bytes_restored": record.bytes_restored, "seconds": record.seconds,
            "estimated_full_restore_seconds": record.estimated_full_restore_seconds,
            "failures": record.failures}


def _drill(record: DrillRecord) -> dict[str, Any]:
    """The last recovery drill: its rebuild's time is the recovery time objective measured."""
    return {"time": record.time, "ok": record.ok, "recovery_seconds": round(record.seconds, 3),
            "check_seconds": None if record.check_seconds is None else round(record.check_seconds, 3),
            "files": record.files, "bytes": record.bytes, "restic_check": record.restic_check,
            "sources": record.sources, "error": record.error}


def _retention(row: Any) -> dict[str, Any]:
    return {"client": row["client"], "started": row["started"], "finished": row["finished"], "ok": bool(row["ok"]),
            "dry_run": bool(row["dry_run"]), "kept": row["kept"], "removed": json.loads(row["removed"]),
            "reclaimed_bytes": row["reclaimed_bytes"], "error": row["error"]}


def history(config: Config, kind: str, client: str | None, limit: int, now: float | None = None) -> dict[str, Any]:
    """The newest ``limit`` records of ``kind`` ("runs", "audits", "restore-checks" or
    "retention-runs"), of one client or all; raises UsageError for an unknown client."""
    if client is not None:
        config.client(client)
    now = time.time() if now is None else now
    where, parameters = ("WHERE client=?", [client]) if client is not None else ("", [])
    with opened(config) as stores:
        if kind == "runs":
            items = [_run(row) for row in stores.replication.recent_runs(client, 0.0, limit)]
        elif kind == "audits":
            rows = stores.audit.connection.execute(
                f"SELECT client, started, finished, status, reason FROM audits {where} ORDER BY id DESC LIMIT ?",
                [*parameters, limit]).fetchall()
            items = [dict(row) for row in rows]
        elif kind == "restore-checks":
            rows = stores.restore.connection.execute(
                f"SELECT * FROM restore_checks {where} ORDER BY time DESC, id DESC LIMIT ?",
                [*parameters, limit]).fetchall()
            items = [{**dict(row), "ok": bool(row["ok"]), "failures": json.loads(row["failures"])} for row in rows]
        else:
            rows = stores.retention.connection.execute(
                f"SELECT * FROM retention_runs {where} ORDER BY started DESC LIMIT ?",
                [*parameters, limit]).fetchall()
            items = [_retention(row) for row in rows]
    return {"version": API_VERSION, "time": round(now, 3), kind.replace("-", "_"): items}
