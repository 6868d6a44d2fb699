"""Rendering results for people (Rich) or for scripts (JSON). One place for both."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from triplicate.actions import JSON_VERSION
from triplicate.engine.mirror import Progress as WorkProgress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

__all__ = ["JSON_VERSION", "print_json", "print_json_error"]


def print_json(data: dict[str, Any]) -> None:
    """Print one JSON object on standard output, ``"version"`` (:data:`JSON_VERSION`) first."""
    versioned = {"version": JSON_VERSION, **{key: value for key, value in data.items() if key != "version"}}
    sys.stdout.write(json.dumps(versioned, indent=2, sort_keys=False) + "\n")


def print_json_error(message: str, exit_code: int) -> None:
    """A failed command's JSON answer, for scripts that asked for --json: the error and the exit status."""
    print_json({"ok": False, "error": message, "exit_code": exit_code})


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


class Bar(WorkProgress):
    """One bar of a progress display, fed by the engine as work is planned and done
    (Rich's Progress is thread-safe: each location's thread feeds its own bar)."""

    def __init__(self, bars: Progress, name: str) -> None:
        self._bars = bars
        self._task = bars.add_task(name, total=None)

    def planned(self, files: int, size: int) -> None:
        self._bars.update(self._task, total=size)

    def copied(self, size: int) -> None:
        self._bars.advance(self._task, size)
def print_whole_lines(lines: Iterable[str], markup: bool = False) -> None:
    """Print each line whole: Rich neither wraps nor cuts it, so file names in it can be copied.

    Tables cut a long cell with an ellipsis: long details (file names) go here, under the table.
    """
    out = console()
    for line in lines:
        out.print(line, soft_wrap=True, markup=markup)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Progress | None]:
    """A Rich progress display on a terminal's standard error, else None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console(stderr=True), transient=True,
    ) as bars:
        yield bars


def bar_progress(bars: Any, description: str) -> Any:
    """A mirror ``Progress`` drawing one task of ``bars`` (a Rich Progress): bytes planned and done."""
    from triplicate.engine.mirror import Progress

    class BarProgress(Progress):
        def __init__(self) -> None:
            self._task = bars.add_task(description, total=None)

        def planned(self, files: int, size: int) -> None:
            bars.update(self._task, total=size)

        def copied(self, size: int) -> None:
            bars.advance(self._task, size)

    return BarProgress()
