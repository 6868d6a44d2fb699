"""``triplicate init``."""

from __future__ import annotations

from pathlib import Path

import click

from triplicate.cli import AppContext
from triplicate.cli.output import console


def _absolute(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    return value.absolute() if value is not None else None


@click.command(epilog="Exit status: 0 done (also when there was nothing to do); 2 bad option or "
               "configuration, or an option contradicting the existing file (nothing changed); "
               "3 rclone or runit missing.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), callback=_absolute,
              help="server.state_dir of a new configuration [default: /var/lib/triplicate].")
@click.option("--repos-dir", type=click.Path(file_okay=False, path_type=Path), callback=_absolute,
              help="server.repos_dir of a new configuration [default: /srv/restic].")
@click.option("--listen-host", help="server.listen_host of a new configuration [default: 0.0.0.0].")
@click.option("--public-host", help="server.public_host: the host name in client URLs [default: this "
              "machine's name].")
@click.option("--ports", metavar="FIRST-LAST", help="server.ports of a new configuration "
              "[default: 8100-8199].")
@click.option("--user", help="server.user: run the services as this user when started as root.")
@click.pass_obj
def init(app: AppContext, state_dir: Path | None, repos_dir: Path | None, listen_host: str | None,
         public_host: str | None, ports: str | None, user: str | None) -> None:
    """Create the server's folders and, unless it exists, its configuration file.

    Idempotent: running it again changes nothing. The options only shape a new
    configuration file; to change an existing one, edit it.
    """
    from triplicate.actions.init import InitOptions, init_server

    options = InitOptions(state_dir, repos_dir, listen_host, public_host, ports, user)
    report = init_server(app.config_path, options)
    out = console()
    if report.config_written:
        out.print(f"Wrote {report.config_path}")
    for change in report.changes:
        out.print(change, markup=False)
    if not report.config_written and not report.changes:
        out.print(f"Nothing to do: {report.config_path} and its folders exist.")
