"""``triplicate heal CLIENT``."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING

import click

from triplicate.cli import AppContext
from triplicate.cli.output import bar_progress, console, print_json, progress_bars

if TYPE_CHECKING:
    from triplicate.actions.heal import HealReport


@click.command(epilog="Exit status: 0 every copy checked and every bad file healed; 1 a file could not be "
               "healed (lost: no good copy anywhere, or the copy failed), a location could not be checked "
               "or the sync that follows is incomplete; 2 bad arguments or configuration; 3 the primary "
               "repository cannot be read (see 'triplicate recover').")
@click.argument("client")
@click.option("--dry-run", is_flag=True, help="Hash every copy and say what would be healed from where; "
              "write nothing.")
@click.option("--config-from", metavar="LOCATION", help="Put LOCATION's config file back at the primary "
              "(the primary's kept in quarantine), for a damaged primary config when the client has no key; "
              "refused unless every other location holding a config agrees with LOCATION's.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.pass_obj
def heal(app: AppContext, client: str, dry_run: bool, config_from: str | None, as_json: bool) -> None:
    """Repair every copy of CLIENT's repository from any good copy.

    Hashes every file of the primary and of each location; a file that does not
    hash to its name anywhere is replaced by a copy from another location that
    does, verified while copied, in restic's order. The primary's bad files are
    kept in state_dir/quarantine/CLIENT/. Then syncs what the locations lack, and
    records a cheap audit of CLIENT (the files last found bad re-read, each location
    listed), so that status shows what is still wrong.
    With the client's key, restic also finds the packs the primary's index names
    but the primary lacks (put back from a location), and names the snapshots
    that may need each lost file. The primary's config file (encrypted,
    not named by its hash) is put back from a location when restic, with the
    key, cannot decrypt it but can the location's; without a key, --config-from
    does it on your word.
    """
    from triplicate.actions.heal import heal_client
    with progress_bars(enabled=not as_json) as bars:
        progress = (lambda name: bar_progress(bars, f"verify {name}")) if bars else None
        report = heal_client(app.config, client, dry_run=dry_run, stop=threading.Event(), progress=progress,
                             config_from=config_from)
    if as_json:
        print_json(report.to_json())
    else:
        _summarise(report)
    sys.exit(0 if report.ok else 1)


def _summarise(report: HealReport) -> None:
    from rich.markup import escape

    from triplicate.units import format_bytes

    out = console()
    would = "would come" if report.dry_run else "came"
    for name, checked in report.copies.items():
        state = (f"[red]{escape(checked.problem)}[/]" if checked.problem else escape(checked.note) if checked.note
                 else f"{checked.verified_files} files ({format_bytes(checked.verified_bytes)}) hashed, "
                 f"{checked.bad_files} bad"
                 + (f", {checked.in_progress} still being written" if checked.in_progress else ""))
        out.print(f"{escape(name)}: {state}")
    for entry in report.files:
        out.print(f"{escape(entry.file)}")
        for copy, problem in entry.bad_at.items():
            if copy in entry.healed_from:
                outcome = f"[green]healed[/]: the good copy {would} from {escape(entry.healed_from[copy])}"
            else:
                outcome = f"[red]NOT healed[/]: {escape(entry.not_healed.get(copy, 'interrupted'))}"
            out.print(f"  {problem} at {escape(copy)}: {outcome}")
        if entry.lost:
            out.print("  [red]lost[/]: no copy anywhere hashes to its name; the snapshots that need it are damaged")
            if entry.snapshots_needing:
                shown = " ".join(snapshot[:8] for snapshot in entry.snapshots_needing)
                out.print(f"  snapshots that may need it: {shown}"
                          + (f" ({escape(entry.snapshots_note)})" if entry.snapshots_note else ""))
            elif entry.snapshots_note or entry.snapshots_needing is not None:
                out.print(f"  snapshots that may need it: {'none' if entry.snapshots_needing is not None else '?'}"
                          + (f" ({escape(entry.snapshots_note)})" if entry.snapshots_note else ""))
        if entry.quarantined:
            out.print(f"  the bad file is kept at {escape(entry.quarantined)}")
    if not report.files:
        out.print("No bad file at any copy.")
    for note in report.notes:
        out.print(f"[yellow]note[/]: {escape(note)}")
    if report.sync is not None:
        from triplicate.cli.sync import _summarise as summarise_sync

        summarise_sync(report.sync)
    if report.audit is not None:
        status = report.audit.status.value
        colour = {"OK": "green", "WARNING": "yellow"}.get(status, "red")
        reason = f": {escape(report.audit.reason)}" if report.audit.reason else ""
        out.print(f"audit afterwards (recorded for status): [{colour}]{status}[/]{reason}")
    if report.interrupted:
        out.print("[yellow]interrupted[/]: run again to finish")
