"""Prometheus metrics for the daemon, computed from the state database on every scrape.

The database is the single source (a restart loses nothing, and ``status``
reads the same numbers); only the queue length is the daemon's own, live.
Served with prometheus-client on ``--metrics-listen ADDR:PORT``.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from triplicate.errors import UsageError
from triplicate.state.db import PRIMARY
from triplicate.state.replication import ReplicationState

LABELS = ["client", "location"]


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"``, ``"[::1]:9101"`` or ``":9101"`` -> (host, port); raises UsageError."""
    host, separator, port = text.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        number = int(port)
        if not separator or not 0 < number < 65536:
            raise ValueError
        if host != "localhost":
            ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--metrics-listen {text!r}: expected ADDR:PORT such as 127.0.0.1:9101") from None
    return host, number


class ReplicationCollector(Collector):
    """Per (client, location) numbers from the state database, plus live queue lengths.

    ``pairs`` returns the (client, location) pairs the daemon serves now;
    ``queue_length`` the live number of runs in progress or waiting for one.
    Called from the HTTP server's threads.
    """

    def __init__(self, state_dir: Path, pairs: Callable[[], list[tuple[str, str]]],
                 queue_length: Callable[[str, str], int]) -> None:
        self._state_dir = state_dir
        self._pairs = pairs
        self._queue_length = queue_length
        self._state: ReplicationState | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._state is None:
                self._state = ReplicationState(self._state_dir)
            now = time.time()
            rows = self._state.location_metrics(now)
            pairs = self._pairs()
            families = _families()
            for client, location in pairs:
                row = rows.get((client, location)) or _never_ran(self._state, client, location, now)
                labels = [client, location]
                families["last_success"].add_metric(labels, row["last_success"])
                families["snapshots"].add_metric(labels, row["snapshots"])
                families["bytes"].add_metric(labels, row["bytes_copied_total"])
                families["files"].add_metric(labels, row["files_copied_total"])
                families["failures"].add_metric(labels, row["failed_runs"])
                families["consecutive"].add_metric(labels, row["consecutive_failures"])
                families["lag"].add_metric(labels, row["lag"])
                families["queue"].add_metric(labels, self._queue_length(client, location))
            for client in sorted({client for client, _ in pairs}):
                families["primary"].add_metric([client], len(self._state.known_snapshots(client, PRIMARY)))
                unsettled = self._state.unsettled_files(client)
                families["unsettled"].add_metric([client], len(unsettled))
                families["unsettled_age"].add_metric(
                    [client], max((now - row.first_seen for row in unsettled), default=0.0))
        yield from families.values()


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
            "Age of the oldest primary snapshot the location lacks (0: up to date).", labels=LABELS),
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


def _never_ran(state: ReplicationState, client: str, location: str, now: float) -> dict[str, float]:
    return {
        "last_success": 0.0, "snapshots": len(state.known_snapshots(client, location)),
        "bytes_copied_total": 0, "files_copied_total": 0, "failed_runs": 0, "consecutive_failures": 0,
        "lag": state.replication_lag(client, location, now),
    }


class ChecksCollector(Collector):
    """The last audit of each served client and the last passed restore check per location."""

    def __init__(self, state_dir: Path, clients: Callable[[], list[str]]) -> None:
        self._state_dir = state_dir
        self._clients = clients

    def collect(self) -> Iterator[Metric]:
        from triplicate.actions.audit_report import audit_metric_families
        from triplicate.state.audit import last_audits
        from triplicate.state.restore_check import RestoreCheckState

        served = set(self._clients())
        audits = {client: record.to_json() for client, record in last_audits(self._state_dir).items()
                  if client in served}
        yield from audit_metric_families(audits)
        restore = GaugeMetricFamily(
            "triplicate_restore_check_last_success_timestamp_seconds",
            "When a restore check from the location last passed (Unix time).", labels=LABELS)
        with RestoreCheckState.opened(self._state_dir) as state:
            successes = state.last_successes()
        for (client, location), when in sorted(successes.items()):
            if client in served:
                restore.add_metric([client, location], when)
        yield restore


def serve(listen: str, *collectors: Collector) -> Any:
    """Serve ``collectors`` on ``listen`` (ADDR:PORT) in a daemon thread; return the server
    (``.shutdown()`` stops it). Raises UsageError for a bad address, OSError when it is taken."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
