"""restic's forget policy (keep-last, -hourly, -daily, -weekly, -monthly, -yearly, -within).

The same algorithm as restic's ``ApplyPolicy``, judged on whatever time the
caller gives each snapshot: triplicate gives each snapshot's arrival on the
server, which a client cannot forge with ``restic backup --time``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from triplicate.config.model import RetentionSettings


@dataclass(frozen=True)
class Candidate:
    """One snapshot as the policy sees it."""

    id: str
    time: datetime  # timezone-aware; its zone decides hour and day boundaries
    group: tuple[str, ...] = ()  # restic's default grouping: host and paths


@dataclass
class Decision:
    keep: list[Candidate] = field(default_factory=list)
    remove: list[Candidate] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)


def _hour(moment: datetime, _: int) -> int:
    return moment.year * 1_000_000 + moment.month * 10_000 + moment.day * 100 + moment.hour


def _day(moment: datetime, _: int) -> int:
    return moment.year * 10_000 + moment.month * 100 + moment.day


def _week(moment: datetime, _: int) -> int:
    year, week, _weekday = moment.isocalendar()
    return year * 100 + week


def _month(moment: datetime, _: int) -> int:
    return moment.year * 100 + moment.month


def _year(moment: datetime, _: int) -> int:
    return moment.year


def _always(_: datetime, number: int) -> int:
    return number


Bucketer = Callable[[datetime, int], int]


def is_empty(policy: RetentionSettings) -> bool:
    return all(
        getattr(policy, key) is None
        for key in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                    "keep_yearly", "keep_within")
    )


def apply_policy(candidates: Iterable[Candidate], policy: RetentionSettings, now: datetime) -> Decision:
    """Decide, group by group, which snapshots the policy keeps; an empty policy keeps all."""
    decision = Decision()
    groups: dict[tuple[str, ...], list[Candidate]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.group, []).append(candidate)
    for group in groups.values():
        _apply_to_group(group, policy, now, decision)
    return decision


def _apply_to_group(group: list[Candidate], policy: RetentionSettings, now: datetime, decision: Decision) -> None:
    ordered = sorted(group, key=lambda candidate: (candidate.time, candidate.id), reverse=True)
    if is_empty(policy):
        for candidate in ordered:
            decision.keep.append(candidate)
            decision.reasons[candidate.id] = ["policy is empty"]
        return
    buckets: list[list[object]] = [
        [count, bucketer, None, reason]
        for count, bucketer, reason in (
            (policy.keep_last, _always, "last snapshot"),
            (policy.keep_hourly, _hour, "hourly snapshot"),
            (policy.keep_daily, _day, "daily snapshot"),
            (policy.keep_weekly, _week, "weekly snapshot"),
            (policy.keep_monthly, _month, "monthly snapshot"),
            (policy.keep_yearly, _year, "yearly snapshot"),
        )
    ]
    past = [candidate.time for candidate in ordered if candidate.time < now]
    latest = max(past) if past else None
    for number, candidate in enumerate(ordered):
        reasons: list[str] = []
        if (policy.keep_within is not None and latest is not None
                and candidate.time > latest - timedelta(seconds=policy.keep_within)):
            reasons.append(f"within {_human(policy.keep_within)} of the newest")
        for bucket in buckets:
            count, bucketer, last, reason = bucket
            if count:
                value = bucketer(candidate.time, number)  # type: ignore[operator]
                if value != last:
                    bucket[0] = count - 1  # type: ignore[operator]
                    bucket[2] = value
                    reasons.append(reason)  # type: ignore[arg-type]
        if reasons:
            decision.keep.append(candidate)
            decision.reasons[candidate.id] = reasons
        else:
            decision.remove.append(candidate)


def _human(seconds: float) -> str:
    from triplicate.units import format_duration

    return format_duration(seconds)
