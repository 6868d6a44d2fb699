"""When a client may be replicated: at once (the default), or on its schedule.

A client sets at most one of ``replicate = "immediate"``, ``replicate_every = "6h"``,
``replicate_at = ["02:00"]`` or ``replicate_window = "01:00-05:00"`` (times of day are
the server's local time). Two questions are answered here, for a given moment, with
no clock of its own (the caller passes ``now``), so that everything is testable
without waiting:

- :meth:`Schedule.next_allowed`: may the daemon replicate now, and if not, when?
- :meth:`Schedule.due`: by when should a snapshot that arrived at a given time have
  been replicated? ``max_lag`` is judged from then (the audit, status): lag within
  the schedule is no problem; a missed window or a missed run is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Protocol

from triplicate.units import format_duration, parse_time_of_day, parse_window


class ScheduleKeys(Protocol):
    """The keys of a ``[clients.NAME]`` section read here."""

    replicate_every: float | None
    replicate_at: list[str] | None
    replicate_window: str | None


@dataclass(frozen=True)
class Schedule:
    """One of: nothing (immediate), ``every`` seconds, ``at`` minutes of the day, a ``window``."""

    every: float | None = None
    at: tuple[int, ...] = ()
    window: tuple[int, int] | None = None  # (first minute, end minute); end < first: past midnight

    @classmethod
    def of(cls, section: ScheduleKeys) -> Schedule:
        """The schedule a validated client section sets."""
        return cls(section.replicate_every,
                   tuple(sorted(parse_time_of_day(value) for value in section.replicate_at or ())),
                   parse_window(section.replicate_window) if section.replicate_window else None)

    @classmethod
    def of_client(cls, sections: Mapping[str, ScheduleKeys], client: str) -> Schedule:
        """The schedule of ``client`` among a configuration's client ``sections``; immediate
        once it is no longer configured (a reload removed it)."""
        section = sections.get(client)
        return cls() if section is None else cls.of(section)

    @property
    def immediate(self) -> bool:
        return self.every is None and not self.at and self.window is None

    def describe(self) -> str:
        """``"every 6h"``, ``"at 02:00, 14:00"``, ``"within 01:00-05:00"`` or ``"immediate"``."""
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        if self.at:
            return "at " + ", ".join(_clock(minute) for minute in self.at)
        if self.window is not None:
            return f"within {_clock(self.window[0])}-{_clock(self.window[1])}"
        return "immediate"

    def next_allowed(self, now: float, last_run: float | None) -> float:
        """When a run asked for at ``now`` may start (``now`` itself: at once). ``last_run`` is
        when the last run started (None: never); only ``every`` and ``at`` read it.

        ``every``: ``every`` after the last run (at once when there was none). ``at``: at once
        when one of the times has passed since the last run, else at the next time (a client
        never replicated waits for its first time). A window: at once inside it, else at its
        next opening.
        """
        if self.every is not None:
            return now if last_run is None else max(now, last_run + self.every)
        if self.at:
            passed = _previous(self.at, now)
            if last_run is not None and passed > last_run:
                return now
            return _next(self.at, now)
        if self.window is not None:
            return now if self.inside_window(now) else _next((self.window[0],), now)
        return now

    def due(self, arrival: float) -> float:
        """By when the schedule replicates what arrived at ``arrival``: then (immediate),
        ``every`` later, the next ``at`` time, or the end of the window it may be copied in."""
        if self.every is not None:
            return arrival + self.every
        if self.at:
            return _next(self.at, arrival)
        if self.window is not None:
            opens = arrival if self.inside_window(arrival) else _next((self.window[0],), arrival)
            return _next((self.window[1],), opens, after=True)
        return arrival

    def overdue(self, arrival: float, now: float) -> float:
        """Seconds past :meth:`due` at ``now`` (0 while within the schedule)."""
        return max(0.0, now - self.due(arrival))

    def inside_window(self, moment: float) -> bool:
        """Whether ``moment`` is inside the window (always, without one)."""
        if self.window is None:
            return True
        local = datetime.fromtimestamp(moment)
        minute = local.hour * 60 + local.minute + local.second / 60
        first, end = self.window
        return first <= minute < end if first < end else minute >= first or minute < end


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _moment(day: date, minute: int) -> float:
    """The timestamp of ``minute`` on ``day``, local time."""
    return datetime.combine(day, time(minute // 60, minute % 60)).timestamp()


def _next(minutes: Iterable[int], moment: float, after: bool = False) -> float:
    """The first of the times of day ``minutes`` at ``moment`` or later (strictly later: ``after``)."""
    day = datetime.fromtimestamp(moment).date()
    candidates = [_moment(day + timedelta(days=offset), minute) for offset in (0, 1, 2) for minute in minutes]
    return min(candidate for candidate in candidates if candidate > moment or (candidate == moment and not after))


def _previous(minutes: Iterable[int], moment: float) -> float:
    """The last of the times of day ``minutes`` at ``moment`` or before."""
    day = datetime.fromtimestamp(moment).date()
    candidates = [_moment(day - timedelta(days=offset), minute) for offset in (0, 1, 2) for minute in minutes]
    return max(candidate for candidate in candidates if candidate <= moment)
