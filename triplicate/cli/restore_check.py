"""``triplicate restore-check CLIENT``."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from triplicate import execute
from triplicate.cli import AppContext
from triplicate.cli.output import console, print_json


@click.command("restore-check", epilog=(
    "Exit status: 0 every location passed; 1 a location failed (its reasons are listed); 2 bad "
    "arguments or configuration; 3 the check could not run (no key, a key that opens no location, "
    "no snapshot common to the locations, no room for the sample)."))
@click.argument("client")
@click.option("--location", "locations", multiple=True, metavar="NAME",
              help="Only this location (repeatable; 'primary' is the primary) [default: the primary "
                   "and every location of the client].")
@click.option("--files", type=click.IntRange(min=0), default=None, metavar="N",
              help="How many files to sample besides the canaries [default: restore_check.files, 20].")
@click.option("--snapshot", metavar="ID|latest",
              help="The snapshot to restore from [default: the newest one every location has].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.pass_obj
def restore_check(app: AppContext, client: str, locations: tuple[str, ...], files: int | None,
                  snapshot: str | None, as_json: bool) -> None:
    """Restore a sample of CLIENT's files from every location with restic and check them.

    Uses the client's key (password_file or password_command). Each location is
    opened by restic itself; sampled files (large and small, plus every canary) are
    restored with --verify into a private temporary folder under
    <state_dir>/tmp, removed afterwards, also when interrupted. Checks that every
    file is there, has the listed size and the same content at every location, and
    that the canaries hold. Reports throughput and an estimate of a full restore.
    """
    from triplicate.actions.restore_check import run_restore_check, select_locations

    config = app.config
    chosen = select_locations(config, client, locations)
    with _signals_as_exit():
        report = run_restore_check(config, client, chosen, files, snapshot)
    if as_json:
        print_json(report.to_json())
    else:
        _summarise(report)
    sys.exit(0 if report.ok else 1)


@contextmanager
def _signals_as_exit() -> Iterator[None]:
    """SIGINT and SIGTERM stop the check and end the command with status 128 + signal.

    The check's restic programs get SIGINT (execute.terminate_running) and are waited
    for before the temporary folder is removed, so nothing is written into it
    afterwards; no other program starts. A signal that lands while a program is being
    started still reaches it: the program is registered, then sees the stop. Only the
    main thread may set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = threading.Event()
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not received:
            click.echo("triplicate: interrupted, cleaning up", err=True)
        received.append(signum)
        execute.terminate_running(stopping)

    # A signal the caller ignores (SIGINT of a background job) stays ignored.
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        with execute.stoppable(stopping):
            yield
    except execute.Interrupted:
        if not received:
            raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:  # (also when the check ended between two programs)
        raise SystemExit(128 + received[0])


def _summarise(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from triplicate.actions.restore_check import display_name
    from triplicate.units import format_bytes, format_duration

    snapshot_id = str(report.snapshot.get("id", ""))[:8]
    table = Table(title=f"restore-check {report.client}: snapshot {snapshot_id} of {report.snapshot.get('time')}"
                  f" ({report.snapshot_files} files, {format_bytes(report.snapshot_bytes)})",
                  title_justify="left")
    for column in ("location", "result", "files", "bytes", "seconds", "throughput", "full restore (est.)"):
        table.add_column(column, justify="left" if column in ("location", "result") else "right")
    for name, result in report.locations.items():
        throughput = result.throughput
        estimate = result.estimated_full_restore_seconds
        table.add_row(
            display_name(name), "[green]ok[/]" if result.ok else "[red]FAILED[/]", str(result.files_checked),
            format_bytes(result.bytes_restored), f"{result.seconds:.1f}",
            "-" if throughput is None else f"{format_bytes(throughput)}/s",
            "-" if estimate is None else f"~{format_duration(estimate)}",
        )
    out = console()
    out.print(table)
    for name, result in report.locations.items():
        for failure in result.failures:
            out.print(f"[red]{display_name(name)}[/]: {escape(failure.path or '(location)')}: "
                      f"{escape(failure.reason)}", markup=True, highlight=False, soft_wrap=True)  # whole: a path
    out.print("The full-restore time is an estimate: the snapshot's size at the throughput measured "
              "on this sample (with --verify and restic's start-up, so on the slow side).")
