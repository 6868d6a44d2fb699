"""``triplicate retention``: expire a client's old snapshots on the server, safely.

The policy is restic's own, judged against each snapshot's arrival on the server
(the state database's first sighting), never against the time a client wrote
into it, which ``restic backup --time`` can forge. Snapshots that were already
there when triplicate first looked fall back to their own time, and say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from triplicate.actions.repository import restic_repository
from triplicate.config.model import Config, RetentionSettings
from triplicate.engine.policy import Candidate, apply_policy, is_empty
from triplicate.errors import CannotRun, TriplicateError, UsageError
from triplicate.execute import Interrupted
from triplicate.restic import restic_run
from triplicate.state.db import PRIMARY
from triplicate.state.replication import ReplicationState
from triplicate.state.retention import RetentionRun, RetentionState, first_scan_time


class NoKey(CannotRun):
    """The client has no key configured: exit status 3."""


@dataclass
class Verdict:
    id: str
    time: str  # the time the policy judged, ISO 8601
    time_source: str  # "arrival" or "snapshot (predates the state database)"
    snapshot_time: str  # what the client wrote into the snapshot
    host: str
    paths: list[str]
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class RetentionReport:
    client: str
    dry_run: bool
    policy: dict[str, object]
    kept: list[Verdict] = field(default_factory=list)
    removed: list[Verdict] = field(default_factory=list)
    pruned: bool = False
    reclaimed_bytes: int = 0
    refused: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.refused is None and self.error is None

    def to_json(self) -> dict[str, object]:
        return {
            "client": self.client, "ok": self.ok, "dry_run": self.dry_run, "policy": self.policy,
            "kept": [verdict.to_json() for verdict in self.kept],
            "removed": [verdict.to_json() for verdict in self.removed],
            "pruned": self.pruned, "reclaimed_bytes": self.reclaimed_bytes,
            "refused": self.refused, "error": self.error,
        }


def retention_policy(config: Config, client: str) -> RetentionSettings | None:
    """The client's policy, else the server-wide one; None when neither is set or it keeps all."""
    policy = config.settings(client).retention
    return None if policy is None or is_empty(policy) else policy


def run_retention(config: Config, client: str, *, dry_run: bool = False, force: bool = False) -> RetentionReport:
    """Apply the client's policy to its primary repository and record the run.

    Raises UsageError when no policy is configured, NoKey (exit 3) without a key.
    """
    settings = config.client(client)
    policy = retention_policy(config, client)
    if policy is None:
        configured = config.settings(client).retention
        raise UsageError(
            f"client '{client}' has no retention policy (set [clients.{client}.retention] or [server.retention])"
            if configured is None else f"client '{client}': its retention section sets no keep_* rule")
    if settings.password_file is None and settings.password_command is None:
        raise NoKey(f"client '{client}' has no key: retention needs password_file or password_command")
    started = time.time()
    report = RetentionReport(client, dry_run, policy.model_dump(exclude_none=True))
    env = restic_repository(config, client, None).environment
    try:
        snapshots = _snapshots(env)
        candidates, verdicts = _candidates(config, client, snapshots)
        decision = apply_policy(candidates, policy, datetime.now().astimezone())
        report.kept = [_with_reasons(verdicts[c.id], decision.reasons[c.id]) for c in decision.keep]
        report.removed = [verdicts[c.id] for c in decision.remove]
        report.refused = None if force else _refusal(candidates, decision.remove, policy)
        if report.removed and not dry_run and report.refused is None:
            before = _repository_bytes(config, client)
            _restic_or_fail(["forget", *(verdict.id for verdict in report.removed)], env)
            if policy.prune:
                _restic_or_fail(["prune"], env)
                report.pruned = True
            report.reclaimed_bytes = max(0, before - _repository_bytes(config, client))
    except Interrupted:
        raise  # the daemon is stopping: not a failure to record
    except TriplicateError as error:
        report.error = str(error)
    _record(config, report, started)
    return report


def _snapshots(env: dict[str, str]) -> list[dict[str, object]]:
    import json

    result = restic_run(["snapshots", "--json"], env, lock=False)
    if result.returncode != 0:
        from triplicate.restic import error_summary

        raise TriplicateError(f"restic snapshots: {error_summary(result.stderr.decode(errors='replace'))}")
    snapshots: list[dict[str, object]] = json.loads(result.text)
    return snapshots


def _candidates(config: Config, client: str, snapshots: list[dict[str, object]]
                ) -> tuple[list[Candidate], dict[str, Verdict]]:
    """Each snapshot with the time the policy judges: its arrival, when known."""
    state = ReplicationState(config.server.state_dir)
    try:
        state.record_snapshots(client, PRIMARY, {str(s["id"]) for s in snapshots}, time.time())
        arrivals = state.known_snapshots(client, PRIMARY)
        first_scan = first_scan_time(state.connection, client, PRIMARY)
    finally:
        state.close()
    candidates, verdicts = [], {}
    for snapshot in snapshots:
        identifier = str(snapshot["id"])
        own_time = _parse_time(str(snapshot["time"]))
        arrival = arrivals.get(identifier)
        if arrival is not None and (first_scan is None or arrival > first_scan):
            judged, source = datetime.fromtimestamp(arrival).astimezone(), "arrival"
        else:
            judged, source = own_time, "snapshot (predates the state database)"
        listed = snapshot.get("paths")
        paths = sorted(str(path) for path in listed) if isinstance(listed, list) else []
        host = str(snapshot.get("hostname", ""))
        candidates.append(Candidate(identifier, judged, (host, *paths)))
        verdicts[identifier] = Verdict(identifier, judged.isoformat(timespec="seconds"), source,
                                       str(snapshot["time"]), host, paths)
    return candidates, verdicts


def _parse_time(text: str) -> datetime:
    """restic's RFC 3339 time with nanoseconds, as an aware datetime."""
    if "." in text:
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits):]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _with_reasons(verdict: Verdict, reasons: list[str]) -> Verdict:
    verdict.reasons = reasons
    return verdict


def _refusal(candidates: list[Candidate], removed: list[Candidate], policy: RetentionSettings) -> str | None:
    """Why the guards refuse this removal (without --force), or None."""
    if not removed:
        return None
    removing = {candidate.id for candidate in removed}
    groups: dict[tuple[str, ...], list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.group, []).append(candidate)
    for group in groups.values():  # the newest of each host and paths, as restic groups them
        newest = max(group, key=lambda candidate: (candidate.time, candidate.id))
        if newest.id in removing:
            return f"refusing to remove the newest snapshot {newest.id[:8]} of {newest.group[0]} (use --force)"
    share = 100 * len(removed) / len(candidates)
    if share > policy.max_remove_percent:
        return (f"refusing to remove {len(removed)} of {len(candidates)} snapshots ({share:.0f}%, more than "
                f"max_remove_percent = {policy.max_remove_percent:g}); check the policy, or use --force")
    return None


def _restic_or_fail(arguments: list[str], env: dict[str, str]) -> None:
    from triplicate.restic import error_summary

    result = restic_run(arguments, env)
    if result.returncode != 0:
        raise TriplicateError(f"restic {arguments[0]}: {error_summary(result.stderr.decode(errors='replace'))}")


def _repository_bytes(config: Config, client: str) -> int:
    total = 0
    for path in config.primary_dir(client).rglob("*"):
        if path.is_file():
            total += path.stat().st_size
    return total


def _record(config: Config, report: RetentionReport, started: float) -> None:
    state = RetentionState(config.server.state_dir)
    try:
        state.record_run(RetentionRun(
            client=report.client, started=started, finished=time.time(), ok=report.ok, dry_run=report.dry_run,
            kept=len(report.kept), removed=[verdict.id for verdict in report.removed] if not report.dry_run
            and report.ok else [], reclaimed_bytes=report.reclaimed_bytes, error=report.error or report.refused,
        ))
    finally:
        state.close()
