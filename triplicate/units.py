"""Parsing of the human units used in the configuration: durations and sizes."""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
# A longer duration is a mistake (and overflows the clocks it is added to): 100 years.
MAX_DURATION = 100 * 365 * 86400


def parse_duration(value: str | int | float) -> float:
    """Return seconds for ``90``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"1d"`` or ``"2w"``.

    Raises ValueError with a message fit for a configuration error.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("expected a duration such as '60s', '5m', '1h' or '1d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower().replace(" ", "")
        if text.replace(".", "", 1).isdigit():
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError(f"'{value}' is not a duration such as '60s', '5m', '1h' or '1d'")
            seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, not {seconds}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION:
        raise ValueError("a duration cannot be longer than 100 years")
    return seconds


def parse_size(value: str | int) -> int:
    """Return bytes for ``1024``, ``"1MB"`` (10^6), ``"1MiB"`` (2^20), ``"2 GB"``..."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("expected a size such as '1MB' or '512KiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _SIZE.fullmatch(value.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"'{value}' is not a size such as '1MB' or '512KiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_duration(seconds: float | None) -> str:
    """A short human form: ``"3s"``, ``"4m"``, ``"2h5m"``, ``"3d"``; ``"-"`` for None."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(seconds // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def format_bytes(count: float) -> str:
    """``"1.5 GB"``-style decimal size for people."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


_TIME_OF_DAY = re.compile(r"(\d\d?):(\d\d)")


def parse_time_of_day(value: str) -> int:
    """The minute of the day of ``"02:00"`` or ``"9:30"`` (0 to 1439).

    Raises ValueError with a message fit for a configuration error.
    """
    match = _TIME_OF_DAY.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"'{value}' is not a time of day such as '02:00' (HH:MM, 00:00 to 23:59)")
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_rate(value: str) -> int | None:
    """Bytes per second for ``"20MB/s"`` (or ``"20MB"``, ``"512KiB/s"``); None for ``"off"``.

    Raises ValueError with a message fit for a configuration error.
    """
    text = value.strip().lower()
    if text == "off":
        return None
    text = text.removesuffix("/s")
    if re.fullmatch(r"[\d.]+", text):  # rclone reads a bare number as KiB/s, parse_size as bytes
        raise ValueError(f"'{value}' has no unit: write '{text}KiB/s' (what rclone takes it for) "
                         f"or another unit such as 'MB/s'")
    try:
        rate = parse_size(text)
    except ValueError:
        raise ValueError(f"'{value}' is not a rate such as '20MB/s', '512KiB/s' or 'off'") from None
    if rate <= 0:
        raise ValueError(f"'{value}': a rate must be more than 0 (write 'off' for no limit)")
    return rate


def parse_bandwidth(value: str) -> tuple[tuple[int, int | None], ...]:
    """A bandwidth limit as (minute of the day it starts, bytes per second or None: no limit)
    pairs in order of the day: ``"20MB/s"`` is ``((0, 20000000),)``; a timetable as rclone's,
    ``"08:00,5MB/s 19:00,off"``, holds each rate from its time until the next entry's (the
    last one's until the first one's, the next day).

    Raises ValueError with a message fit for a configuration error.
    """
    entries = value.split()
    if not entries:
        raise ValueError("expected a rate such as '20MB/s' or a timetable such as '08:00,5MB/s 19:00,off'")
    if len(entries) == 1 and "," not in entries[0]:
        return ((0, parse_rate(entries[0])),)
    table: dict[int, int | None] = {}
    for entry in entries:
        when, _, rate = entry.partition(",")
        try:
            minute = parse_time_of_day(when)
        except ValueError:
            raise ValueError(f"'{entry}' is not a timetable entry such as '08:00,5MB/s' (HH:MM,rate)") from None
        if minute in table:
            raise ValueError(f"'{entry}': {when} is given twice")
        table[minute] = parse_rate(rate)
    return tuple(sorted(table.items()))


def rate_at(timetable: tuple[tuple[int, int | None], ...], minute_of_day: int) -> int | None:
    """The rate of :func:`parse_bandwidth`'s ``timetable`` at ``minute_of_day`` (None: no limit)."""
    current = timetable[-1][1]
    for start, rate in timetable:
        if start > minute_of_day:
            break
        current = rate
    return current


def parse_window(value: str) -> tuple[int, int]:
    """The (first, end) minutes of the day of a daily window ``"01:00-05:00"``; one that ends
    before it starts runs past midnight (``"22:00-04:00"``).

    Raises ValueError with a message fit for a configuration error.
    """
    first, separator, end = value.partition("-") if isinstance(value, str) else ("", "", "")
    if not separator:
        raise ValueError(f"'{value}' is not a window such as '01:00-05:00' (HH:MM-HH:MM)")
    window = parse_time_of_day(first), parse_time_of_day(end)
    if window[0] == window[1]:
        raise ValueError(f"'{value}': a window cannot start and end at the same time")
    return window
