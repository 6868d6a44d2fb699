"""Prometheus metrics, computed from the state database on every scrape: the one rendering
shared by the daemon (``syncd --metrics-listen``) and the web service (``/metrics``).

The database is the single source (a restart loses nothing, and ``status``
reads the same numbers); only the queue length is the daemon's own, live.
Every gauge an operator alerts on is live: timestamps (not ages frozen at the
last audit), and a location whose last run failed is down (``location_up`` 0)
with a lag that keeps growing from its last success, never 0.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from triplicate.engine.schedule import Schedule
from triplicate.errors import UsageError
from triplicate.state.db import PRIMARY, database_path
from triplicate.state.replication import ReplicationState

LABELS = ["client", "location"]
# An audit's status as its monitoring-plugin exit code (actions/audit_report.py's Status).
STATUS_VALUES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def parse_listen(text: str, what: str = "--metrics-listen") -> tuple[str, int]:
    """``"127.0.0.1:9101"``, ``"[::1]:9101"`` or ``":9101"`` -> (host, port); raises UsageError
    naming ``what`` (the option or key the address came from)."""
    host, separator, port = text.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
        if not separator or not 0 < number < 65536:
            raise ValueError
        if host != "localhost":
            ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected ADDR:PORT such as 127.0.0.1:9101") from None
    return host, number


class ReplicationCollector(Collector):
    """Per (client, location) numbers from the state database, plus live queue lengths.

    ``pairs`` returns the (client, location) pairs the daemon serves now;
    ``queue_length`` the live number of runs in progress or waiting for one (the
    daemon's own; the web service has none); ``schedule`` a client's replication
    schedule (engine/schedule.py; None: every client is replicated at once), which the
    overdue gauge judges the lag against. Called from the HTTP server's threads.
    """

    def __init__(self, state_dir: Path, pairs: Callable[[], list[tuple[str, str]]],
                 queue_length: Callable[[str, str], int] | None = None,
                 schedule: Callable[[str], Schedule] | None = None) -> None:
        self._state_dir = state_dir
        self._pairs = pairs
        self._queue_length = queue_length
        self._schedule = schedule or (lambda client: Schedule())
        self._state: ReplicationState | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            # Read only: before the database exists (nothing ran yet) an empty one in memory
            # for this scrape, never created here; the real one is kept once it exists.
            exists = database_path(self._state_dir).exists()  # (looked at before opening: never a stale memory one)
            state = self._state if self._state is not None else ReplicationState(self._state_dir, create=False)
            if self._state is None and exists:
                self._state = state
            try:
                families = self._families(state)
            finally:
                if state is not self._state:
                    state.close()
        yield from families.values()

    def _families(self, state: ReplicationState) -> dict[str, Any]:
        """Every family of the served (client, location) pairs, filled from ``state``; returns them by key."""
        now = time.time()
        rows = state.location_metrics(now)
        pairs = self._pairs()
        families = _families()
        primary = state.primary_snapshots()
        for client, location in pairs:
            row = rows.get((client, location)) or _never_ran(state, client, location, now)
            labels = [client, location]
            view = location_view(row, now)
            families["last_success"].add_metric(labels, row["last_success"])
            families["snapshots"].add_metric(labels, row["snapshots"])
            families["bytes"].add_metric(labels, row["bytes_copied_total"])
            families["files"].add_metric(labels, row["files_copied_total"])
            families["failures"].add_metric(labels, row["failed_runs"])
            families["consecutive"].add_metric(labels, row["consecutive_failures"])
            families["lag"].add_metric(labels, view.lag)
            families["overdue"].add_metric(labels, self._schedule(client).overdue(now - view.lag, now))
            if view.up is not None:
                families["up"].add_metric(labels, float(view.up))
            if row.get("newest") is not None:
                families["newest"].add_metric(labels, row["newest"])
            if self._queue_length is not None:
                families["queue"].add_metric(labels, self._queue_length(client, location))
        for client in sorted({client for client, _ in pairs}):
            count, newest = primary.get(client, (0, None))
            families["primary"].add_metric([client], count)
            if newest is not None:
                families["newest"].add_metric([client, PRIMARY], newest)
            unsettled = state.unsettled_files(client)
            families["unsettled"].add_metric([client], len(unsettled))
            families["unsettled_age"].add_metric(
                [client], max((now - row.first_seen for row in unsettled), default=0.0))
        if self._queue_length is None:
            del families["queue"]
        return families


@dataclass(frozen=True)
class LocationView:
    """What a location's numbers mean to an operator: up (None: never ran) and an honest lag."""

    up: bool | None
    lag: float
    error: str | None


def location_view(row: Mapping[str, Any], now: float) -> LocationView:
    """Judge one row of :meth:`ReplicationState.location_metrics` at ``now``.

    A location whose last run failed is down, and its lag is at least the time since
    it was last known to hold everything (its last success, else its first run): an
    unreadable location never reports lag 0.
    """
    attempt = row.get("last_attempt")
    if attempt is None:
        return LocationView(None, float(row["lag"]), None)
    success = row["last_success"] or None
    up = success is not None and success >= attempt
    lag = float(row["lag"])
    if not up:
        since = success if success is not None else (row.get("first_run") or attempt)
        lag = max(lag, now - since)
    return LocationView(up, lag, None if up else row.get("last_error"))


def _families() -> dict[str, Any]:
    return {
        "last_success": GaugeMetricFamily(
            "triplicate_last_success_timestamp_seconds",
            "When the last successful replication run finished (Unix time; 0: never).", labels=LABELS),
        "snapshots": GaugeMetricFamily(
            "triplicate_snapshots_replicated", "Snapshots present at the location at its last listing.",
            labels=LABELS),
        "bytes": CounterMetricFamily(
            "triplicate_bytes_copied", "Bytes copied to the location, all runs.", labels=LABELS),
        "files": CounterMetricFamily(
            "triplicate_files_copied", "Files copied to the location, all runs.", labels=LABELS),
        "failures": CounterMetricFamily(
            "triplicate_failures", "Failed replication runs, all history.", labels=LABELS),
        "consecutive": GaugeMetricFamily(
            "triplicate_consecutive_failures", "Failed runs since the last success.", labels=LABELS),
        "lag": GaugeMetricFamily(
            "triplicate_replication_lag_seconds",
            "Age of the oldest primary snapshot the location lacks (0: up to date); while the location "
            "is down, at least the time since its last success.", labels=LABELS),
        "overdue": GaugeMetricFamily(
            "triplicate_replication_overdue_seconds",
            "The lag past when the client's schedule replicates (replicate_every, _at, _window); "
            "the lag itself for a client replicated at once; 0 while within its schedule.", labels=LABELS),
        "up": GaugeMetricFamily(
            "triplicate_location_up",
            "1 when the last replication run to the location succeeded, 0 when it failed.", labels=LABELS),
        "newest": GaugeMetricFamily(
            "triplicate_newest_snapshot_timestamp_seconds",
            "Arrival on the server (Unix time) of the newest snapshot the location holds at its last "
            "listing; location '@primary' is the client's own repository.", labels=LABELS),
        "queue": GaugeMetricFamily(
            "triplicate_queue_length", "Replication runs in progress or queued.", labels=LABELS),
        "primary": GaugeMetricFamily(
            "triplicate_primary_snapshots", "Snapshots in the client's primary repository.",
            labels=["client"]),
        "unsettled": GaugeMetricFamily(
            "triplicate_primary_unsettled_files",
            "Primary files not copied as listed (being written, vanished, corrupt, unreadable).",
            labels=["client"]),
        "unsettled_age": GaugeMetricFamily(
            "triplicate_primary_unsettled_seconds",
            "How long the oldest of them has been so (a failure beyond in_progress_grace; 0: none).",
            labels=["client"]),
    }


def _never_ran(state: ReplicationState, client: str, location: str, now: float) -> dict[str, Any]:
    return {
        "last_success": 0.0, "snapshots": len(state.known_snapshots(client, location)),
        "bytes_copied_total": 0, "files_copied_total": 0, "failed_runs": 0, "consecutive_failures": 0,
        "lag": state.replication_lag(client, location, now), "newest": None, "last_attempt": None,
        "last_error": None, "first_run": None,
    }


class ChecksCollector(Collector):
    """The last audit of each served client and the last passed restore check per location."""

    def __init__(self, state_dir: Path, clients: Callable[[], list[str]]) -> None:
        self._state_dir = state_dir
        self._clients = clients

    def collect(self) -> Iterator[Metric]:
        from triplicate.state.audit import last_audits
        from triplicate.state.restore_check import RestoreCheckState

        served = set(self._clients())
        audits = {client: record.to_json() for client, record in last_audits(self._state_dir).items()
                  if client in served}
        yield from audit_metric_families(audits)
        restore = GaugeMetricFamily(
            "triplicate_restore_check_last_success_timestamp_seconds",
            "When a restore check from the location last passed (Unix time).", labels=LABELS)
        last_ok = GaugeMetricFamily(
            "triplicate_restore_check_ok",
            "1 when the location's last restore check passed, 0 when it failed.", labels=LABELS)
        last_time = GaugeMetricFamily(
            "triplicate_restore_check_last_run_timestamp_seconds",
            "When the location's last restore check finished, passed or not (Unix time).", labels=LABELS)
        with RestoreCheckState.opened(self._state_dir, create=False) as state:
            successes = state.last_successes()
            last = state.last_results()
        for (client, location), when in sorted(successes.items()):
            if client in served:
                restore.add_metric([client, location], when)
        for (client, location), (ok, when) in sorted(last.items()):
            if client in served:
                last_ok.add_metric([client, location], float(ok))
                last_time.add_metric([client, location], when)
        yield from (restore, last_ok, last_time)
        yield from _drill_metrics(self._state_dir, served)
        yield from endpoint_metric_families(self._state_dir, sorted(served))


def _drill_metrics(state_dir: Path, served: set[str]) -> Iterator[Metric]:
    """The last recovery drill per client: how long the rebuild took (the recovery time objective), and if it passed."""
    from triplicate.state.recover_drill import RecoverDrillState

    seconds = GaugeMetricFamily("triplicate_recover_drill_seconds",
                                "How long the last recovery drill took to rebuild the repository from the locations.",
                                labels=["client"])
    passed = GaugeMetricFamily("triplicate_recover_drill_ok", "Whether the last recovery drill passed (1) or not (0).",
                               labels=["client"])
    with RecoverDrillState.opened(state_dir, create=False) as state:
        drills = state.last_drills()
    for client, record in sorted(drills.items()):
        if client in served:
            seconds.add_metric([client], record.seconds)
            passed.add_metric([client], 1.0 if record.ok else 0.0)
    yield seconds
    yield passed


def endpoint_metric_families(state_dir: Path, clients: list[str]) -> Iterator[Metric]:
    """What the REST endpoint counted per client (docs/web.md, "Metrics")."""
    from triplicate.state.endpoint import EndpointState

    received = CounterMetricFamily("triplicate_endpoint_received_bytes", "Bytes of files received and kept.",
                                   labels=["client"])
    files = CounterMetricFamily("triplicate_endpoint_received_files", "Files received and kept.", labels=["client"])
    logins = CounterMetricFamily("triplicate_endpoint_failed_logins", "Requests refused with 401.",
                                 labels=["client"])
    requests = CounterMetricFamily("triplicate_endpoint_requests", "Requests by method and status.",
                                   labels=["client", "method", "status"])
    rejected = CounterMetricFamily("triplicate_endpoint_rejected_uploads", "Refused requests by reason.",
                                   labels=["client", "reason"])
    newest = GaugeMetricFamily("triplicate_endpoint_newest_snapshot_timestamp_seconds",
                               "When the newest snapshot file landed (Unix time).", labels=["client"])
    size = GaugeMetricFamily("triplicate_endpoint_repository_bytes", "The repository's size.", labels=["client"])
    with EndpointState.opened(state_dir, create=False) as state:
        for client in clients:
            counts = state.counts(client)
            if counts.updated is None:
                continue
            received.add_metric([client], counts.counters.get("bytes_received", 0))
            files.add_metric([client], counts.counters.get("files_received", 0))
            logins.add_metric([client], counts.counters.get("auth_failures", 0))
            for key, value in counts.requests().items():
                method, _, status = key.partition(" ")
                requests.add_metric([client, method, status], value)
            for reason, value in counts.rejected().items():
                rejected.add_metric([client, reason], value)
            if counts.newest_snapshot is not None:
                newest.add_metric([client], counts.newest_snapshot)
            if counts.repository_bytes is not None:
                size.add_metric([client], counts.repository_bytes)
    yield from (received, files, logins, requests, rejected, newest, size)


class BuildCollector(Collector):
    """``triplicate_build_info{version,python}`` 1: which triplicate answers."""

    def collect(self) -> Iterator[Metric]:
        import platform

        from triplicate import __version__

        info = GaugeMetricFamily("triplicate_build_info", "The running triplicate's version (always 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info


def registry(*collectors: Collector, process: bool = True, build: bool = True) -> CollectorRegistry:
    """A registry of ``collectors``, (with ``build``) the build info and (with ``process``)
    process_* of this process."""
    from prometheus_client import ProcessCollector

    result = CollectorRegistry(auto_describe=False)
    for collector in (*collectors, *([BuildCollector()] if build else [])):
        result.register(collector)
    if process:
        ProcessCollector(registry=result)
    return result


def exposition(source: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (version 0.0.4) of every metric in ``source``."""
    from prometheus_client import generate_latest

    return generate_latest(source)


def serve(listen: str, *collectors: Collector) -> Any:
    """Serve ``collectors`` on ``listen`` (ADDR:PORT) in a daemon thread; return the server
    (``.shutdown()`` stops it). Raises UsageError for a bad address, OSError when it is taken."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=registry(*collectors))
    return server


# -- audits: the same gauges for the daemon, the web service and `audit --prometheus FILE` --

LOCATION_METRICS = {
    "triplicate_audit_location_status": ("status", "Audit status of a client's location: 0 OK, 1 WARNING, "
                                         "2 CRITICAL, 3 UNKNOWN"),
    "triplicate_audit_missing_snapshots": ("missing_snapshots", "Primary snapshots the location lacks"),
    "triplicate_audit_missing_files": ("missing_files", "Primary keys/data/index files the location lacks"),
    "triplicate_audit_corrupt_files": ("corrupt_files", "Files whose content does not hash to their name"),
    "triplicate_audit_unreadable_files": ("unreadable_files", "Files that could not be read"),
    "triplicate_audit_lag_seconds": ("lag_seconds", "How long the oldest missing snapshot has been missing"),
    "triplicate_audit_location_newest_snapshot_age_seconds": (
        "newest_snapshot_age_seconds", "Age of the newest snapshot at the location (from its arrival)"),
    "triplicate_audit_verified_files": ("verified_files", "Files re-read and verified by the last audit"),
    "triplicate_audit_verified_bytes": ("verified_bytes", "Bytes re-read and verified by the last audit"),
}
CLIENT_METRICS = {
    "triplicate_audit_status": ("status", "Audit status of a client (worst of its primary and locations): "
                                "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"),
    "triplicate_audit_newest_snapshot_age_seconds": (
        "newest_snapshot_age_seconds", "Age of the client's newest snapshot on the primary (from its arrival)"),
    "triplicate_audit_snapshots": ("snapshots", "Snapshots in the client's primary repository"),
    "triplicate_audit_last_run_timestamp_seconds": ("finished", "When the client's last audit finished"),
}


def audit_metric_families(clients: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    """Gauges for ``{client: client JSON}`` (as in ``AuditReport.to_json()["clients"]``).

    A value that is unknown (no snapshot, so no age) is left out rather than exported as 0.
    """
    families: list[Metric] = []
    for name, (key, text) in CLIENT_METRICS.items():
        family = GaugeMetricFamily(name, text, labels=["client"])
        for client, data in clients.items():
            if (value := _number(data.get(key))) is not None:
                family.add_metric([client], value)
        families.append(family)
    for name, (key, text) in LOCATION_METRICS.items():
        family = GaugeMetricFamily(name, text, labels=["client", "location"])
        for client, data in clients.items():
            for location, values in data.get("locations", {}).items():
                if (value := _number(values.get(key))) is not None:
                    family.add_metric([client, location], value)
        families.append(family)
    return families


def prometheus_text(clients: Mapping[str, Mapping[str, Any]]) -> str:
    """The node_exporter textfile for ``{client: client JSON}``."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(_Families(audit_metric_families(clients)))
    return generate_latest(registry).decode("utf-8")


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _number(value: Any) -> float | None:
    """A JSON field as a metric value: a status as its exit code, a list as its length."""
    if value is None:
        return None
    if isinstance(value, str):
        return float(STATUS_VALUES[value])
    if isinstance(value, list):
        return float(len(value))
    return float(value)
