"""``triplicate config check``."""

from __future__ import annotations

import sys

import click

from triplicate.cli import AppContext
from triplicate.cli.output import print_json


@click.group()
def config() -> None:
    """Inspect the configuration file."""


@config.command(epilog="Exit status: 0 no problem; 2 problems (each printed with its key path).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"version", "ok", "config", "client_count", "location_count", '
                   '"problems": [{"key", "message"}]}.')
@click.pass_obj
def check(app: AppContext, as_json: bool) -> None:
    """Validate the file: everything 'client add' and 'supervise' would refuse, all at once.

    Checks types and unknown keys, names and references, ports (clashes, outside
    server.ports), TLS (a certificate and key that load as a pair), the service
    user, [web] and the files the configuration names. Changes nothing; run it
    before 'sv hup' or 'systemctl reload'.
    """
    from triplicate.actions.config_check import check_config

    result = check_config(app.config_path)
    if as_json:
        print_json(result.to_json())
    elif result.ok:
        click.echo(f"{result.path}: OK ({result.clients} clients, {result.locations} locations)")
    else:  # one problem a line, key path first, as every other configuration error
        click.echo(f"{result.path}: {len(result.problems)} problem(s)", err=True)
        for problem in result.problems:
            click.echo(f"  {problem}", err=True)
    sys.exit(0 if result.ok else 2)
