"""An audit's result: statuses with their reasons per client and location, as JSON and as metrics.

One model, three renderings: ``to_json`` (``audit --json`` and the state
database), the table in ``cli/audit.py``, and Prometheus metrics
(``triplicate.metrics.audit_metric_families``, from the JSON so that stored audits export the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from triplicate.actions import JSON_VERSION


class Status(StrEnum):
    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    UNKNOWN = "UNKNOWN"

    @property
    def exit_code(self) -> int:
        """The monitoring-plugin exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
        return {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}[self.value]


# When combining, a proven loss outranks a place that could not be looked at, which
# outranks a delay (the order Icinga sorts problems by).
SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.UNKNOWN: 2, Status.CRITICAL: 3}


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=SEVERITY.__getitem__, default=Status.OK)


@dataclass(frozen=True)
class Finding:
    """One judgement: a status and the reason, in words for the sysadmin. OK findings are notes."""

    status: Status
    text: str


@dataclass
class LocationAudit:
    """One location of one client (the ``--json`` fields, and the findings behind its status)."""

    findings: list[Finding] = field(default_factory=list)
    missing_snapshots: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    corrupt_files: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)
    extra_snapshots: list[str] = field(default_factory=list)
    snapshots: int | None = None  # held here; None when the location could not be listed
    lag_seconds: float = 0.0
    newest_snapshot_age_seconds: float | None = None
    verified_files: int = 0
    verified_bytes: int = 0
    not_judged_in_progress: int = 0
    restic_check: dict[str, Any] | None = None

    @property
    def status(self) -> Status:
        return worst(finding.status for finding in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            **_reasons(self.findings),
            "missing_snapshots": self.missing_snapshots,
            "missing_files": self.missing_files,
            "corrupt_files": self.corrupt_files,
            "unreadable_files": self.unreadable_files,
            "extra_snapshots": self.extra_snapshots,
            "snapshots": self.snapshots,
            "lag_seconds": round(self.lag_seconds, 3),
            "newest_snapshot_age_seconds": _rounded(self.newest_snapshot_age_seconds),
            "verified_files": self.verified_files,
            "verified_bytes": self.verified_bytes,
            "not_judged_in_progress": self.not_judged_in_progress,
            "restic_check": self.restic_check,
        }


@dataclass
class ClientAudit:
    """One client: its primary's freshness and each location's audit."""

    started: float
    finished: float = 0.0
    findings: list[Finding] = field(default_factory=list)
    snapshots: int = 0
    newest_snapshot_age_seconds: float | None = None
    expect_backup_every: float | None = None
    locations: dict[str, LocationAudit] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return worst([*(finding.status for finding in self.findings),
                      *(location.status for location in self.locations.values())])

    @property
    def reason(self) -> str:
        """Everything that is not OK about the client, in one line, its locations named."""
        parts = [summary(self.findings)] + [
            f"{name}: {summary(location.findings)}" for name, location in self.locations.items()
            if location.status is not Status.OK
        ]
        return "; ".join(part for part in parts if part)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            **_reasons(self.findings),
            "snapshots": self.snapshots,
            "newest_snapshot_age_seconds": _rounded(self.newest_snapshot_age_seconds),
            "expect_backup_every_seconds": self.expect_backup_every,
            "started": round(self.started, 3),
            "finished": round(self.finished, 3),
            "locations": {name: location.to_json() for name, location in self.locations.items()},
        }


@dataclass
class AuditReport:
    started: float
    finished: float
    clients: dict[str, ClientAudit]

    @property
    def status(self) -> Status:
        return worst(client.status for client in self.clients.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "status": self.status.value,
            "exit_code": self.status.exit_code,
            "started": round(self.started, 3),
            "finished": round(self.finished, 3),
            "clients": {name: client.to_json() for name, client in self.clients.items()},
        }




def summary(findings: Iterable[Finding]) -> str:
    """The reasons for a status in one line ("" when all is well), worst first."""
    problems = sorted((finding for finding in findings if finding.status is not Status.OK),
                      key=lambda finding: -SEVERITY[finding.status])
    return "; ".join(finding.text for finding in problems)


def _reasons(findings: list[Finding]) -> dict[str, list[str]]:
    return {
        "reasons": [finding.text for finding in findings if finding.status is not Status.OK],
        "notes": [finding.text for finding in findings if finding.status is Status.OK],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- Nagios / Icinga --------------------------------------------------------------------------

PLUGIN = "TRIPLICATE"


def _problems(report: AuditReport) -> list[tuple[Status, str]]:
    """Every non-OK judgement as (status, "client -> location reason"), worst first."""
    found = []
    for name, client in report.clients.items():
        for finding in client.findings:
            if finding.status is not Status.OK:
                found.append((finding.status, f"{name}: {finding.text}"))
        for location_name, location in client.locations.items():
            for finding in location.findings:
                if finding.status is not Status.OK:
                    found.append((finding.status, f"{name} -> {location_name} {finding.text}"))
    return sorted(found, key=lambda item: -SEVERITY[item[0]])


def nagios_text(report: AuditReport, lag_thresholds: Mapping[str, tuple[float, float]]) -> str:
    """The monitoring-plugin output: one status line with perfdata, then one line per problem.

    ``lag_thresholds`` maps a client to (warning, critical) lag in seconds, as the
    audit judges it (in_progress_grace, max_lag). The first line names how many
    clients are in the worst state and the worst problems first, e.g.
    ``TRIPLICATE CRITICAL - 1 of 3 clients critical: web02 -> usb ... | web01_usb_lag=0s;300;3600 ...``.
    """
    status = report.status
    total = len(report.clients)
    counts = {level: sum(1 for client in report.clients.values() if client.status is level) for level in Status}
    if not report.clients:
        head = "no clients to audit"
    elif status is Status.OK:
        head = f"{total} of {total} clients OK"
    else:
        order = sorted((level for level in Status if level is not Status.OK and counts[level]),
                       key=lambda level: -SEVERITY[level])
        head = f"{counts[order[0]]} of {total} clients {order[0].value.lower()}" + "".join(
            f", {counts[level]} {level.value.lower()}" for level in order[1:])
    problems = _problems(report)
    shown = [text for _, text in problems[:3]]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    summary_text = f": {'; '.join(shown)}{more}" if shown else ""
    perfdata = []
    for name, client in report.clients.items():
        warning, critical = lag_thresholds.get(name, (0.0, 0.0))
        for location_name, location in client.locations.items():
            if location_name.startswith("@"):  # '@primary': its integrity only, no lag to plot
                continue
            label = f"{name}_{location_name}"
            perfdata.append(f"{label}_lag={location.lag_seconds:.0f}s;{warning:.0f};{critical:.0f};0")
            perfdata.append(f"{label}_missing_snapshots={len(location.missing_snapshots)};;1;0")
    first = f"{PLUGIN} {status.value} - {head}{summary_text}"
    if perfdata:
        first += " | " + " ".join(perfdata)
    details = [f"{level.value}: {text}" for level, text in problems]
    details += [f"{name}: {client.status.value}" for name, client in
                sorted(report.clients.items(), key=lambda item: (-SEVERITY[item[1].status], item[0]))]
    return "\n".join([first, *details]) + "\n"


# --- Prometheus -------------------------------------------------------------------------------

# Per (client, location): metric name -> (the location JSON field, help text).
