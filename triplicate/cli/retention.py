"""``triplicate retention CLIENT``."""

from __future__ import annotations

import sys

import click

from triplicate.cli import AppContext
from triplicate.cli.output import console, print_json


@click.command(epilog="Exit status: 0 done (or nothing to remove); 1 refused by a guard or restic failed; "
               "2 bad arguments or no policy configured; 3 no key configured for the client.")
@click.argument("client")
@click.option("--dry-run", is_flag=True, help="Show what would be kept and removed; change nothing.")
@click.option("--force", is_flag=True, help="Remove even the newest snapshot or more than max_remove_percent.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def retention(app: AppContext, client: str, dry_run: bool, force: bool, as_json: bool) -> None:
    """Expire CLIENT's old snapshots on the primary by its retention policy.

    The policy (restic's keep-* words) is judged against each snapshot's arrival
    on the server, which a client cannot forge. Runs restic forget with explicit
    snapshot IDs, then restic prune when the policy says so. Needs the client's
    key (password_file or password_command). Replicas are not touched here.
    """
    from triplicate.actions.retention import run_retention

    report = run_retention(app.config, client, dry_run=dry_run, force=force)
    if as_json:
        print_json(report.to_json())
    else:
        _summarise(report)
    sys.exit(0 if report.ok else 1)


def _summarise(report: object) -> None:
    from rich.table import Table

    from triplicate.units import format_bytes

    out = console()
    table = Table(title=f"retention {report.client}" + (" (dry run)" if report.dry_run else ""),  # type: ignore[attr-defined]
                  title_justify="left")
    for column in ("snapshot", "verdict", "judged time", "time source", "host", "why"):
        table.add_column(column)
    for verdict in report.kept:  # type: ignore[attr-defined]
        table.add_row(verdict.id[:8], "[green]keep[/]", verdict.time, verdict.time_source, verdict.host,
                      ", ".join(verdict.reasons))
    for verdict in report.removed:  # type: ignore[attr-defined]
        table.add_row(verdict.id[:8], "[red]remove[/]", verdict.time, verdict.time_source, verdict.host,
                      "no rule keeps it")
    out.print(table)
    if report.refused:  # type: ignore[attr-defined]
        out.print(f"[red]{report.refused}[/]")  # type: ignore[attr-defined]
    if report.error:  # type: ignore[attr-defined]
        out.print(f"[red]failed: {report.error}[/]")  # type: ignore[attr-defined]
    if report.pruned:  # type: ignore[attr-defined]
        out.print(f"pruned: {format_bytes(report.reclaimed_bytes)} reclaimed")  # type: ignore[attr-defined]
