"""``triplicate status [NAME]...``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from triplicate.cli import AppContext
from triplicate.cli.output import console, print_json, print_whole_lines

if TYPE_CHECKING:
    from triplicate.actions.status import ClientStatus

GOOD = {"run", "ok", "yes", "OK", "passed"}
# Free text that may name files: printed whole under the table, not in a cell that would cut it.
WHOLE_LINE_COLUMNS = {"reason", "error", "copying"}
BAD = {"down", "failed", "finish", "unsupervised", "absent", "CRITICAL", "UNKNOWN"}


@click.command(epilog="Exit status: 0 every client healthy; 1 something needs attention (listed "
               "under 'problems'); 2 unknown client or bad configuration.")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
@click.pass_obj
def status(app: AppContext, names: tuple[str, ...], as_json: bool) -> None:
    """Each client's services (state, uptime) and locations (snapshots, age, lag, last sync)."""
    from triplicate.actions.status import collect_status

    statuses = collect_status(app.config, list(names) or None)
    healthy = all(not client.problems for client in statuses)
    if as_json:
        print_json({"ok": healthy, "clients": {client.name: client.to_json() for client in statuses}})
    else:
        show_status(statuses)
    sys.exit(0 if healthy else 1)


def show_status(statuses: list[ClientStatus]) -> None:
    """Render clients' status as tables (shared with the demo)."""
    from rich.markup import escape
    from rich.table import Table

    out = console()
    if not statuses:
        out.print("No clients configured: add one with 'triplicate client add NAME'.")
    for client in statuses:
        enabled = "enabled" if client.enabled else "[yellow]disabled[/]"
        out.print(f"[bold]{client.name}[/] ({enabled})")
        for section in client.sections:
            if not section.rows:
                continue
            table = Table(title=section.title, title_justify="left")
            columns = [column for column in section.rows[0] if column not in WHOLE_LINE_COLUMNS]
            for column in columns:
                table.add_column(_heading(column), justify="right" if _numeric(section.rows, column) else "left",
                                 overflow="fold")  # wrapped, never cut
            for row in section.rows:
                table.add_row(*(_cell(column, row.get(column)) for column in columns))
            out.print(table)
            print_whole_lines(f"  {row[columns[0]]}: {row[column]}" for row in section.rows
                              for column in sorted(WHOLE_LINE_COLUMNS & set(row)) if row[column])
        for problem in client.problems:
            out.print(f"  [red]problem:[/] {escape(problem)}", soft_wrap=True)  # whole: it may name files


def _heading(column: str) -> str:
    return column.removesuffix("_seconds").replace("_", " ")


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return column.endswith("_seconds") or (
        bool(values) and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values))


def _cell(column: str, value: Any) -> str:
    from rich.markup import escape

    from triplicate.units import format_bytes, format_duration

    if value is None:
        return "-"
    if column.endswith("_seconds"):
        return format_duration(value)
    if column == "bytes" or column.endswith("_bytes"):
        return format_bytes(value)
    if isinstance(value, dict):
        value = "\n".join(f"{key}: {count}" for key, count in value.items()) or "-"  # one per line
    if isinstance(value, bool):
        value = "yes" if value else "no"
    text = escape(str(value))
    if text in GOOD:
        return f"[green]{text}[/]"
    if text in BAD:
        return f"[red]{text}[/]"
    return text
