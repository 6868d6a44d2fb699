"""Rendering results for people (Rich) or for scripts (JSON). One place for both."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


# The version of every --json output's shape (docs/json.md); bumped when a field changes meaning.
JSON_VERSION = 1


def print_json(data: dict[str, Any]) -> None:
    """Print one JSON object on standard output, ``"version"`` first (added when missing)."""
    versioned = data if "version" in data else {"version": JSON_VERSION, **data}
    sys.stdout.write(json.dumps(versioned, indent=2, sort_keys=False) + "\n")


def print_json_error(message: str, exit_code: int) -> None:
    """A failed command's JSON answer, for scripts that asked for --json: the error and the exit status."""
    print_json({"ok": False, "error": message, "exit_code": exit_code})


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Any]:
    """A Rich progress display on a terminal's standard error, else None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console(stderr=True), transient=True,
    ) as bars:
        yield bars
