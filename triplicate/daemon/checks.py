"""The daemon's scheduled checks: audit, restore check and retention, per client.

Each is the same action the CLI runs, started by the daemon's scheduler when due
(intervals from the configuration, last runs remembered across restarts), run in
a worker thread, and followed by notifications on a change of state: an audit
going from OK to CRITICAL and back, a restore check failing and recovering, a
retention run removing snapshots or being refused.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from triplicate.config.model import Config
from triplicate.daemon import heartbeat
from triplicate.daemon.scheduler import Job, JobFailed
from triplicate.errors import TriplicateError

if TYPE_CHECKING:
    from triplicate.actions.audit import StatusChange

log = logging.getLogger("triplicate.daemon")

WEEK = 7 * 86400.0
# How a scheduled check that could not run is recorded (status shows these as problems).
COULD_NOT_RUN = ("could not run", "failed unexpectedly")
# send(title, body, kind): kind is apprise's type, "failure", "warning", "success" or "info".
Notify = Callable[..., None]


def has_key(config: Config, client: str) -> bool:
    return config.settings(client).has_key


def audit_interval(config: Config, client: str) -> float | None:
    return config.settings(client).audit_every


def restore_check_interval(config: Config, client: str) -> float | None:
    """``restore_check_every``; weekly by default when the client has a key, else off."""
    if not has_key(config, client):
        return None
    every = config.client(client).restore_check_every
    return WEEK if every is None else every


def retention_interval(config: Config, client: str) -> float | None:
    """The policy's ``retention_every`` when a policy and a key are configured, else off."""
    from triplicate.actions.retention import retention_policy

    policy = retention_policy(config, client)
    return policy.retention_every if policy is not None and has_key(config, client) else None


def recover_drill_interval(config: Config, client: str) -> float | None:
    """``recover_drill_every`` (the client's, else the server's); off by default."""
    return config.settings(client).recover_drill_every


def check_jobs(get_config: Callable[[], Config], send: Notify,
               heal: Callable[[str, str], None] = lambda client, why: None,
               stop: threading.Event | None = None) -> list[Job]:
    """The scheduled checks, reading the configuration current when each runs.

    After each audit, ``heal(client, "audit")`` (called on the event loop) heals what it
    found damaged anywhere, at the primary or a location (daemon/healing.py). ``stop``
    set (the daemon stopping) ends an audit's verification early.
    """

    async def in_thread(name: str, client: str, work: Callable[[Config, str, Notify], str | None]) -> None:
        heartbeat.ping(get_config(), client, "start", f"{name} started")
        try:
            problem = await asyncio.to_thread(work, get_config(), client, send)
            if name == "audit":
                heal(client, "audit")
        except TriplicateError as error:
            log.warning("%s %s: %s", name, client, error)
            send(f"triplicate: {name} of {client} could not run", str(error), "warning")
            problem = f"could not run: {error}"
        except Exception as error:  # a scheduled check must never take the daemon down
            log.exception("%s %s failed unexpectedly", name, client)
            problem = f"failed unexpectedly: {type(error).__name__}: {error}"
        heartbeat.ping(get_config(), client, "fail" if problem else "success",
                       f"{name} {'failed: ' + problem if problem else 'passed'}")
        if problem is not None:
            raise JobFailed(problem)  # the scheduler records it (status shows it)

    async def freshness(client: str) -> None:
        await asyncio.to_thread(heartbeat.check_freshness, get_config(), client)

    def job(name: str, interval: Callable[[Config, str], float | None],
            work: Callable[[Config, str, Notify], str | None]) -> Job:
        async def action(client: str) -> None:
            await in_thread(name, client, work)

        return Job(name, interval, action, persist=True)

    return [
        job("audit", audit_interval, functools.partial(scheduled_audit, stop=stop)),
        job("restore-check", restore_check_interval, scheduled_restore_check),
        job("retention", retention_interval, scheduled_retention),
        job("recover-drill", recover_drill_interval, functools.partial(scheduled_recover_drill, stop=stop)),
        Job("backup-freshness", heartbeat.freshness_interval, freshness, persist=False),
    ]


def scheduled_audit(config: Config, client: str, send: Notify, stop: threading.Event | None = None) -> str | None:
    """Audit one client with its own verify percentage; notify each change of status.
    Returns what is lost or unreadable (CRITICAL or UNKNOWN), else None."""
    from triplicate.actions.audit import AuditOptions, run_audit, status_changes
    from triplicate.state.audit import last_audits

    previous: dict[str, Any] = dict(last_audits(config.server.state_dir))
    report = run_audit(config, [client], options=AuditOptions(verify_percent=None, record=True, stop=stop))
    log.info("audit %s: %s", client, report.status.value)
    notify_changes(send, status_changes(previous, report))
    audit = report.clients.get(client)
    if report.status.value in ("OK", "WARNING"):  # a late replica warns; a loss or an unreadable copy fails
        return None
    return f"{report.status.value}: {audit.reason if audit is not None else 'see triplicate audit'}"


def notify_changes(send: Notify, changes: list[StatusChange]) -> None:
    """Notify each change of an audit's status (a client's, or a location's)."""
    for change in changes:
        where = f"{change.client} at {change.location}" if change.location else change.client
        send(f"triplicate: audit of {where} is {change.after}",
             f"Was {change.before or 'never audited'}, now {change.after}: {change.reason}",
             {"OK": "success", "WARNING": "warning"}.get(str(change.after), "failure"))


def scheduled_restore_check(config: Config, client: str, send: Notify) -> str | None:
    """Restore-check every location of one client; notify failures and recoveries.
    Returns which locations failed, else None."""
    from triplicate.actions.restore_check import run_restore_check, select_locations
    from triplicate.state.restore_check import RestoreCheckState

    with RestoreCheckState.opened(config.server.state_dir) as state:
        before = {name: record.ok for name, record in state.last_restore_checks(client).items()}
    report = run_restore_check(config, client, select_locations(config, client, []))
    log.info("restore check %s: %s", client, "passed" if report.ok else "FAILED")
    for location, result in report.locations.items():
        was = before.get(location)
        if not result.ok and was is not False:
            reasons = "; ".join(f"{failure.path}: {failure.reason}" for failure in result.failures[:5])
            send(f"triplicate: restore check of {client} at {location} FAILED", reasons or "failed", "failure")
        elif result.ok and was is False:
            send(f"triplicate: restore check of {client} at {location} passes again",
                 f"{result.files_checked} files restored and checked.", "success")
    failed = sorted(location for location, result in report.locations.items() if not result.ok)
    return f"failed at {', '.join(failed)}" if failed else None


def scheduled_retention(config: Config, client: str, send: Notify) -> str | None:
    """Apply one client's retention policy; notify what was removed, or why it was not.
    Returns why it did not run, else None."""
    from triplicate.actions.retention import run_retention
    from triplicate.units import format_bytes

    report = run_retention(config, client)
    if report.refused or report.error:
        log.warning("retention %s: %s", client, report.refused or report.error)
        send(f"triplicate: retention of {client} did not run", str(report.refused or report.error), "warning")
        return str(report.refused or report.error)
    if report.removed:
        log.info("retention %s: removed %d snapshot(s)", client, len(report.removed))
        send(f"triplicate: retention removed {len(report.removed)} snapshot(s) of {client}",
             "Removed: " + ", ".join(verdict.id[:8] for verdict in report.removed)
             + (f"; {format_bytes(report.reclaimed_bytes)} reclaimed" if report.pruned else ""), "info")
    return None


def scheduled_recover_drill(config: Config, client: str, send: Notify,
                            stop: threading.Event | None = None) -> str | None:
    """Rebuild one client from its locations into a scratch folder; notify failures and recoveries.
    Returns what failed, else None."""
    from triplicate.actions.recover_drill import run_drill

    report = run_drill(config, client, list(config.client(client).replicate_to), stop=stop)
    if report.rebuild.interrupted:
        return None
    log.info("recovery drill %s: %s in %.1fs", client, "passed" if report.ok else "FAILED", report.rebuild.seconds)
    if not report.ok and report.previous_ok is not False:
        send(f"triplicate: recovery drill of {client} FAILED", _drill_problem(report), "failure")
    elif report.ok and report.previous_ok is False:
        send(f"triplicate: recovery drill of {client} passes again",
             f"Rebuilt from its locations in {report.rebuild.seconds:.0f}s.", "success")
    return None if report.ok else _drill_problem(report)


def _drill_problem(report: Any) -> str:
    rebuild = report.rebuild
    problems = [f"{name}: {source.problem}" for name, source in rebuild.sources.items() if source.problem]
    problems += [f"lost {path}" for path in list(rebuild.lost)[:3]]
    if report.restic_check == "failed":
        problems.append("restic check failed")
    return "; ".join(problems) or "failed"
