"""``triplicate quarantine CLIENT FILE...``."""

from __future__ import annotations

import click

from triplicate.cli import AppContext
from triplicate.cli.output import console, print_json


@click.command(epilog="FILE is a path in the repository (data/ab/<id>, index/<id>, snapshots/<id>, "
               "keys/<id>) or its absolute path in the primary. Exit status: 0 every file moved; 2 a FILE "
               "is unknown, missing, not damaged or still being written (nothing moved); 3 the primary "
               "repository is not there.")
@click.argument("client")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.pass_obj
def quarantine(app: AppContext, client: str, files: tuple[str, ...], as_json: bool) -> None:
    """Move damaged files of CLIENT's primary into state_dir/quarantine/CLIENT/.

    Only files whose content does not hash to their name are moved (never
    deleted); replication then resumes without them. When a location holds a
    good copy, 'triplicate heal CLIENT' puts it back instead.
    """
    from rich.markup import escape

    from triplicate.actions.quarantine import quarantine_files

    entries = quarantine_files(app.config, client, list(files))
    if as_json:
        print_json({"client": client, "quarantined": [entry.to_json() for entry in entries]})
        return
    out = console()
    for entry in entries:
        out.print(f"{escape(entry.file)}: moved to {escape(entry.kept_at)}")
    out.print(f"Replication of {client} resumes without {'it' if len(entries) == 1 else 'them'}; snapshots "
              "that needed them are damaged (see docs/recovery.md).")
