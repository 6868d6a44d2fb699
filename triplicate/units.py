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
