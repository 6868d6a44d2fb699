"""``triplicate recover CLIENT`` (and ``--all``, ``--drill``)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from triplicate.cli import AppContext
from triplicate.cli.output import bar_progress, console, print_json, progress_bars
from triplicate.errors import EXIT_UNKNOWN, CannotRun, UsageError

if TYPE_CHECKING:
    from triplicate.actions.recover import RecoverReport


@click.command(epilog="Exit status: 0 rebuilt, everything the locations hold is there; 1 a file no location "
               "could give (lost), a location that could not be used, or a failed restic check (drill); 2 bad "
               "arguments or configuration; 3 nothing could run (no location holds the repository).")
@click.argument("client", required=False)
@click.option("--from", "sources", multiple=True, metavar="LOCATION",
              help="Take files only from this location (repeatable) [default: all of the client's].")
@click.option("--all", "every", is_flag=True, help="Every enabled client (a new server with the same configuration).")
@click.option("--dry-run", is_flag=True, help="Say what would come from where and how much; write nothing.")
@click.option("--drill", is_flag=True, help="Rebuild into a scratch folder instead of the primary, run restic "
              "check on it (with the client's key) and record the time taken.")
@click.option("--to", "to", type=click.Path(path_type=Path), metavar="DIR",
              help="With --drill: rebuild into DIR (new or empty) and keep it [default: a temporary folder under "
              "state_dir].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.pass_obj
def recover(app: AppContext, client: str | None, sources: tuple[str, ...], every: bool, dry_run: bool, drill: bool,
            to: Path | None, as_json: bool) -> None:
    """Rebuild CLIENT's primary repository from the union of its locations.

    Each file comes from any location whose copy hashes to its name, verified
    while copied, in restic's write order (config, keys, data, index,
    snapshots): the repository is valid after every file. Files already there
    and intact are kept, so an interrupted run just goes on.
    """
    from triplicate.actions.recover import select_sources

    config = app.config
    if every == (client is not None):
        raise UsageError("give a CLIENT or --all (not both)")
    if to is not None and not drill:
        raise UsageError("--to: only with --drill (recover rebuilds the primary in place)")
    if drill and dry_run:
        raise UsageError("--drill and --dry-run: choose one")
    clients = [client] if client is not None else sorted(name for name, settings in config.clients.items()
                                                         if settings.enabled)
    if every:
        for name in sources:
            if name not in config.locations:
                raise UsageError(f"--from {name}: unknown location")
    plans = {name: [location for location in select_sources(config, name, sources if not every else ())
                    if not every or not sources or location in sources] for name in clients}
    results: list[dict[str, Any]] = []
    ok = True
    could_not_run = 0
    stop = threading.Event()
    with progress_bars(enabled=not as_json and not dry_run) as bars:
        for name, chosen in plans.items():
            progress = bar_progress(bars, f"{'drill' if drill else 'recover'} {name}") if bars else None
            try:
                data = _one(config, name, chosen, dry_run, drill, to, stop, progress, not as_json, bars)
            except CannotRun as error:
                if not every:
                    raise
                click.echo(f"triplicate: {error}", err=True)  # one client that cannot run never stops the others
                data = {"client": name, "ok": False, "error": str(error)}
                could_not_run += 1
            ok = ok and bool(data["ok"])
            results.append(data)
    if as_json:
        print_json(results[0] if client is not None else {"ok": ok, "clients": {  # keyed by name, as everywhere
            str(data["client"]): {key: value for key, value in data.items() if key != "client"} for data in results}})
    sys.exit(0 if ok else EXIT_UNKNOWN if results and could_not_run == len(results) else 1)


def _one(config: Any, client: str, sources: list[str], dry_run: bool, drill: bool, to: Path | None,
         stop: threading.Event, progress: Any, show: bool, bars: Any) -> dict[str, Any]:
    """Recover (or drill) one client; print its summary when ``show``; return its JSON."""
    from triplicate.actions.recover import recover_client

    if drill:
        from triplicate.actions.recover_drill import run_drill

        drilled = run_drill(config, client, sources, to=to, stop=stop, progress=progress)
        if show:
            _summarise(drilled.rebuild, bars)
            _summarise_drill(drilled.to_json(), bars)
        return drilled.to_json()
    report = recover_client(config, client, sources, dry_run=dry_run, stop=stop, progress=progress)
    if show:
        _summarise(report, bars)
    return report.to_json()


def _summarise(report: RecoverReport, bars: Any) -> None:
    from rich.markup import escape

    from triplicate.units import format_bytes

    out = bars.console if bars is not None else console()
    verb = "would copy" if report.dry_run else "copied"
    out.print(f"[bold]{escape(report.client)}[/] -> {escape(report.target)}")
    if report.files_present:
        out.print(f"  already there and intact: {report.files_present} files ({format_bytes(report.bytes_present)})")
    for name, source in report.sources.items():
        state = f"[red]{escape(source.problem)}[/]" if source.problem else \
            f"{verb} {source.files} files ({format_bytes(source.bytes)})"
        out.print(f"  from {escape(name)}: {state}")
    for path in report.replaced:
        out.print(f"  {escape(path)}: damaged in the target, {'to be ' if report.dry_run else ''}replaced")
    for path, problems in sorted(report.bad_copies.items()):
        for name, why in problems.items():
            out.print(f"  [yellow]{escape(name)}'s copy of {escape(path)}[/]: {escape(why)}; taken from another "
                      f"location (run 'triplicate heal {escape(report.client)}')")
    for path, why in report.lost.items():
        out.print(f"  [red]lost[/] {escape(path)}: no location has a good copy ({escape(why)})")
    total = f"{report.files_copied} files ({format_bytes(report.bytes_copied)})"
    if report.dry_run:
        out.print(f"  would copy {total}")
    else:
        speed = report.bytes_copied / report.seconds if report.seconds > 0 else 0.0
        out.print(f"  {verb} {total} in {report.seconds:.1f}s ({format_bytes(int(speed))}/s)")
    if report.interrupted:
        out.print("  [yellow]interrupted[/]: run again to finish")


def _summarise_drill(data: dict[str, Any], bars: Any) -> None:
    out = bars.console if bars is not None else console()
    check = data["restic_check"]
    colour = "green" if check == "passed" else "red" if check == "failed" else "yellow"
    out.print(f"  recovery time: {data['recovery_seconds']:.1f}s; restic check: [{colour}]{check}[/]"
              + (f" ({data['check_seconds']:.1f}s)" if data["check_seconds"] is not None else "")
              + (f"; kept at {data['kept_at']}" if data["kept_at"] else ""))
    for line in data["check_errors"] or []:
        out.print(f"    {line}")
