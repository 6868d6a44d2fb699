"""``triplicate audit [CLIENT]...``: a monitoring check of every client's locations."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from triplicate.cli import AppContext
from triplicate.cli.output import Bar, console, print_json, print_whole_lines, progress_bars
from triplicate.errors import EXIT_UNKNOWN
from triplicate.state.db import PRIMARY

EPILOG = """Exit status (the monitoring-plugin convention): 0 OK; 1 WARNING (a backup or a
replica is late); 2 CRITICAL (a snapshot or file is missing or corrupt, or backups
stopped); 3 UNKNOWN (a location or the primary could not be read, or bad arguments
or configuration). The worst status of all clients and locations wins, CRITICAL
over UNKNOWN over WARNING."""

# restic's --read-data-subset forms: "n/t", "x%" or a size such as "500M".
SUBSET = re.compile(r"\d+/\d+|\d+(\.\d+)?%|\d+(\.\d+)?[kKmMgGtT]?")


class MonitoringCommand(click.Command):
    """A command whose bad arguments exit 3 (UNKNOWN), as monitoring plugins must."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as error:
            error.exit_code = EXIT_UNKNOWN  # type: ignore[misc]  # click declares it on the class
            raise


def _subset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not SUBSET.fullmatch(value):
        raise click.BadParameter("expected n/t (e.g. 1/7), a percentage (e.g. 10%) or a size (e.g. 500M)")
    return value


@click.command(cls=MonitoringCommand, epilog=EPILOG)
@click.argument("clients", nargs=-1, metavar="[CLIENT]...")
@click.option("--location", "locations", multiple=True, metavar="NAME",
              help="Only this location (repeatable) [default: each client's locations].")
@click.option("--verify", "verify_percent", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              metavar="PERCENT", help="Re-read this share of each location's files and check each one's "
              "SHA-256 against its name; the sample rotates, least recently verified first.")
@click.option("--restic-check", is_flag=True,
              help="Also run 'restic check' on each location (needs the client's password_file or "
              "password_command).")
@click.option("--read-data-subset", metavar="SUBSET", callback=_subset,
              help="With --restic-check: restic's --read-data-subset (n/t, x% or a size). Implies --restic-check.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--nagios", is_flag=True, help="Print as a Nagios/Icinga plugin: one status line with perfdata "
              "(worst first), then one line per problem.")
@click.option("--prometheus", "prometheus_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="Also write the results as a node_exporter textfile (replaced atomically).")
@click.pass_obj
def audit(app: AppContext, clients: tuple[str, ...], locations: tuple[str, ...], verify_percent: float,
          restic_check: bool, read_data_subset: str | None, as_json: bool, nagios: bool,
          prometheus_file: Path | None) -> None:
    """Check that every snapshot of each CLIENT (default: all) is at each of its locations,
    fresh and intact.

    Keyless: compares the primary's snapshots and files with each location's,
    judges how long missing ones have been missing (max_lag) and how old the
    newest backup is (expect_backup_every), and with --verify re-reads files and
    checks each one's SHA-256 against its name. Results are stored for 'status'.
    """
    from triplicate.actions.audit import AuditOptions, run_audit
    from triplicate.errors import TriplicateError

    if as_json and nagios:
        from triplicate.cli.output import print_json_error

        print_json_error("--json and --nagios: choose one", EXIT_UNKNOWN)  # --json asked: its answer is JSON
        click.echo("triplicate: --json and --nagios: choose one", err=True)
        sys.exit(EXIT_UNKNOWN)
    try:
        config = app.config
        with progress_bars(enabled=not (as_json or nagios)) as bars:
            options = AuditOptions(
                verify_percent=verify_percent, restic_check=restic_check, read_data_subset=read_data_subset,
                progress=(lambda client, location: Bar(bars, f"verify {client} at {location}"))
                if bars else None,
            )
            report = run_audit(config, clients, locations, options)
    except TriplicateError as error:  # bad configuration or arguments, an unusable state database: UNKNOWN
        if nagios:  # a plugin's output is its standard output's first line
            click.echo(f"TRIPLICATE UNKNOWN - {str(error).splitlines()[0]}")
        elif as_json:
            from triplicate.cli.output import print_json_error

            print_json_error(str(error), EXIT_UNKNOWN)
        click.echo(f"triplicate: {error}", err=True)
        sys.exit(EXIT_UNKNOWN)
    data = report.to_json()
    if prometheus_file is not None:
        _write_prometheus(prometheus_file, data["clients"])
    if as_json:
        print_json(data)
    elif nagios:
        from triplicate.actions.audit_report import nagios_text

        grace = config.server.in_progress_grace
        thresholds = {name: (grace, config.settings(name).max_lag)
                      for name in report.clients}
        click.echo(nagios_text(report, thresholds), nl=False)
    else:
        _print_tables(report)
    sys.exit(report.status.exit_code)


def _write_prometheus(path: Path, clients: dict[str, Any]) -> None:
    from triplicate.fsutil import atomic_write
    from triplicate.metrics import prometheus_text

    try:
        atomic_write(path, prometheus_text(clients))
    except OSError as error:
        click.echo(f"triplicate: --prometheus {path}: {error.strerror or error}", err=True)
        sys.exit(EXIT_UNKNOWN)


STYLE = {"OK": "green", "WARNING": "yellow", "CRITICAL": "bold red", "UNKNOWN": "magenta"}


def _print_tables(report: Any) -> None:
    from rich.table import Table

    from triplicate.actions.audit_report import summary, worst
    from triplicate.units import format_duration

    out = console()
    if not report.clients:
        out.print("No clients to audit.")
    for client, audit in report.clients.items():
        table = Table(title=f"audit {client}: [{STYLE[audit.status]}]{audit.status}[/]", title_justify="left")
        for column in ("location", "status", "snapshots", "lag", "verified"):
            table.add_column(column, justify="right" if column in ("snapshots", "lag") else "left")
        # The reasons name files: each goes whole on its own line under the table (a cell would cut it).
        reasons: list[str] = []
        age = audit.newest_snapshot_age_seconds
        newest = "no snapshot yet" if age is None else f"newest snapshot {format_duration(age)} old"
        # The primary's own row: its freshness, and the integrity of its verified files when an audit re-read some.
        checked = audit.locations.get(PRIMARY)
        findings = [*audit.findings, *(checked.findings if checked is not None else [])]
        own = worst(finding.status for finding in findings)
        table.add_row(PRIMARY, f"[{STYLE[own]}]{own}[/]", str(audit.snapshots), "", _verified(checked))
        reasons.append(f"{PRIMARY}: {summary(findings) or _notes(findings) or newest}")
        for name, location in audit.locations.items():
            if name == PRIMARY:
                continue
            present = ("" if location.snapshots is None
                       else f"{audit.snapshots - len(location.missing_snapshots)}/{audit.snapshots}")
            table.add_row(
                name, f"[{STYLE[location.status]}]{location.status}[/]", present,
                format_duration(location.lag_seconds) if location.lag_seconds else "", _verified(location),
            )
            reason = summary(location.findings) or _notes(location.findings)
            if reason:
                reasons.append(f"{name}: {reason}")
        out.print(table)
        print_whole_lines(reasons)


def _verified(location: Any) -> str:
    """"12 files, 3.0 MiB" re-read and hashed at a copy; "" when none."""
    from triplicate.units import format_bytes

    if location is None or not location.verified_files:
        return ""
    return f"{location.verified_files} files, {format_bytes(location.verified_bytes)}"


def _notes(findings: list[Any]) -> str:
    return "; ".join(finding.text for finding in findings)
