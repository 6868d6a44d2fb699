"""``triplicate sync CLIENT``."""

from __future__ import annotations

import sys
import threading

import click

from triplicate.cli import AppContext
from triplicate.cli.output import Bar, console, print_json, print_whole_lines, progress_bars


@click.command(epilog="Exit status: 0 every location complete and nothing corrupt; 1 a location "
               "failed, the source has corrupt files, or a location is incomplete (files still being "
               "written or removed by a prune: run again); 2 bad arguments or configuration.")
@click.argument("client")
@click.option("--to", "locations", multiple=True, metavar="LOCATION",
              help="Only this location (repeatable) [default: all of the client's].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.pass_obj
def sync(app: AppContext, client: str, locations: tuple[str, ...], as_json: bool) -> None:
    """Copy CLIENT's new backups to its locations, keyless and verified.

    Copies only what each replica lacks, in restic's safe order (keys, data,
    index, then snapshots); hashes every byte against its name; never deletes.
    """
    from triplicate.actions.sync import select_locations, sync_client
    from triplicate.engine.mirror import MirrorOptions

    config = app.config
    chosen = select_locations(config, client, locations)
    with progress_bars(enabled=not as_json) as bars:
        progress_for = {name: Bar(bars, name) for name in chosen} if bars else None
        options = MirrorOptions(in_progress_grace=config.server.in_progress_grace, stop=threading.Event())
        report = sync_client(config, client, chosen, options=options, progress_for=progress_for,
                             on_wait=lambda message: click.echo(f"triplicate: {message}", err=True))
    if as_json:
        print_json(report.to_json())
    else:
        _summarise(report)
    sys.exit(0 if report.complete else 1)


def _summarise(report: object) -> None:
    from rich.table import Table

    from triplicate.units import format_bytes

    table = Table(title=f"sync {report.client}", title_justify="left")  # type: ignore[attr-defined]
    for column in ("location", "result", "files", "bytes", "seconds", "detail"):
        table.add_column(column, justify="right" if column in ("files", "bytes", "seconds") else "left")
    # File names and error messages go whole under the table, one per line: a cell would cut them.
    lines: list[str] = []
    for name, result in report.locations.items():  # type: ignore[attr-defined]
        details: list[str] = []
        if result.error:
            details.append("failed, see below")
            lines.append(f"{name}: {result.error}")
        if result.corrupt_files:
            details.append(f"{len(result.corrupt_files)} file(s) corrupt in source")
            lines += [f"{name}: corrupt in source: {path}" for path in result.corrupt_files]
        if result.unreadable_files:
            details.append(f"{len(result.unreadable_files)} file(s) unreadable in source")
            lines += [f"{name}: unreadable in source: {line}" for line in result.unreadable_files]
        if result.held_back:
            details.append(f"{len(result.held_back)} new file(s) that may need them held back")
        if result.repaired:
            details.append(f"{len(result.repaired)} corrupt file(s) the audit found repaired")
        if result.files_removed:
            details.append(f"{result.files_removed} file(s) gone from the primary removed")
        if result.removals_deferred:
            details.append(f"removals deferred: {result.removals_deferred}")
        if result.files_skipped_in_progress:
            details.append(f"{result.files_skipped_in_progress} file(s) still being written, next time")
        if result.files_vanished:
            details.append(f"{result.files_vanished} file(s) gone from the primary meanwhile (a prune?)")
        table.add_row(
            name, ("[green]ok[/]" if result.complete else "[yellow]incomplete[/]") if result.ok else "[red]FAILED[/]",
            str(result.files_copied),
            format_bytes(result.bytes_copied), f"{result.seconds:.1f}", "; ".join(details),
        )
    console().print(table)
    print_whole_lines(lines)
    # The primary's problems are the same for every location: once, each on its own line, uncut.
    problems = dict.fromkeys(problem for result in report.locations.values()  # type: ignore[attr-defined]
                             for problem in result.problems)
    print_whole_lines(problems)
