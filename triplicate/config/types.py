"""The configuration's value types and base sections, shared by config/model.py and the
location kinds (storage/kinds/), which declare their own sections with them.

This module imports nothing of triplicate but units, so that any layer can use it.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from triplicate.units import parse_bandwidth, parse_duration, parse_size, parse_time_of_day, parse_window


def _duration(value: str | int | float) -> float:
    return parse_duration(value)


def _size(value: str | int) -> int:
    return parse_size(value)


def _port_range(value: object) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = value
    elif isinstance(value, str) and re.fullmatch(r"\d+-\d+", value.strip()):
        low, high = (int(part) for part in value.strip().split("-"))
    else:
        raise ValueError("expected a port range such as '8100-8199'")
    if not (1 <= int(low) <= int(high) <= 65535):
        raise ValueError("ports must satisfy 1 <= first <= last <= 65535")
    return int(low), int(high)


def _command(value: list[str]) -> list[str]:
    if value and not value[0]:
        raise ValueError("the program (first element) must not be empty")
    return value


def _absolute(path: Path) -> Path:
    if "\0" in str(path):
        raise ValueError("a path cannot contain a NUL character")
    if not path.is_absolute():
        raise ValueError(f"'{path}' must be an absolute path")
    return path


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/@\s]+(/\S*)?", value):
        raise ValueError("expected an http:// or https:// URL without user or password (those go in "
                         "username and password_file / credentials_file)")
    return value


def _bandwidth(value: str) -> str:
    parse_bandwidth(value)  # raises ValueError naming what is wrong
    return " ".join(value.split())


Bandwidth = Annotated[str, AfterValidator(_bandwidth)]


def _time_of_day(value: str) -> str:
    minute = parse_time_of_day(value)
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _window(value: str) -> str:
    first, end = parse_window(value)
    return f"{first // 60:02d}:{first % 60:02d}-{end // 60:02d}:{end % 60:02d}"


TimeOfDay = Annotated[str, AfterValidator(_time_of_day)]  # "HH:MM", local time
TimeWindow = Annotated[str, AfterValidator(_window)]  # "HH:MM-HH:MM", local time
Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
PortRange = Annotated[tuple[int, int], BeforeValidator(_port_range)]
Command = Annotated[list[str], AfterValidator(_command)]
AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class Section(BaseModel):
    """Every section refuses unknown keys, so a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        """A boolean where a number is expected is an error (pydantic would take ``true`` for 1).

        The value is swapped for a marker that fails the field's own validation, so the
        error carries the key's path; ``load._describe`` words it.
        """
        if not isinstance(data, dict):
            return data
        return {key: NotANumber(value) if isinstance(value, bool) and key in cls.model_fields
                and _numeric(cls.model_fields[key].annotation) else value for key, value in data.items()}


class NotANumber:
    """A boolean given where a number is expected (see Section._no_boolean_numbers)."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return str(self.value).lower()


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (int or float, optional or annotated)."""
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _numeric(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_numeric(argument) for argument in get_args(annotation) if argument is not type(None))
    return False


class LocationSettings(Section):
    """Keys every kind of location has; each kind (storage/kinds/) adds its own."""

    type: str
    # files copied at once to this location (its connection limit); server.workers when unset
    workers: int | None = Field(default=None, ge=1, le=64)
    # Replicas are append-only unless this is set: a file gone from the primary for
    # this long is then removed from the replica too (docs/retention.md). At least an
    # hour, so that a listing taken during a prune is never acted on by itself.
    propagate_deletes: Annotated[Duration, Field(ge=3600)] | None = None
    # Bytes per second written to this location, shared by every client's copies in one
    # process: "20MB/s", or a timetable as rclone's "08:00,5MB/s 19:00,off" (local time).
    bwlimit: Bandwidth | None = None
