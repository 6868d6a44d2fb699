"""``triplicate client add|enable|disable|remove|list``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from triplicate.cli import AppContext
from triplicate.cli.output import console, print_json

if TYPE_CHECKING:
    from triplicate.actions.clients import AddedClient


@click.group()
def client() -> None:
    """Manage clients: each has its own append-only REST endpoint and watcher."""


@client.command(epilog="Exit status: 0 added; 2 bad name, existing name, unknown location, no free "
                "port or bad configuration (nothing changed); 3 rclone or runit missing.")
@click.argument("name")
@click.option("--replicate-to", "locations", multiple=True, metavar="LOCATION",
              help="A location to replicate to (repeatable).")
@click.option("--port", type=click.IntRange(1, 65535), help="Use this port [default: the first free one "
              "of server.ports].")
@click.option("--no-enable", is_flag=True, help="Write everything but do not start it.")
@click.option("--save-password", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Also write the plain password to FILE (mode 0600; it must not exist).")
@click.option("--issue-cert", is_flag=True, help="Also issue a client certificate (subject: NAME) from the "
              "server's CA in state_dir/tls/, for mutual TLS (server.tls_client_ca).")
@click.option("--json", "as_json", is_flag=True, help="Print {client, url, user, password, port}.")
@click.pass_obj
def add(app: AppContext, name: str, locations: tuple[str, ...], port: int | None, no_enable: bool,
        save_password: Path | None, issue_cert: bool, as_json: bool) -> None:
    """Add client NAME: repository folder, credentials, port, configuration, services.

    Prints the repository URL with the client's password: it is shown this once
    and stored only as a bcrypt hash (unless --save-password).
    """
    from triplicate.actions.clients import add_client

    added = add_client(app.config_path, name, list(locations), enable=not no_enable, port=port,
                       save_password=save_password.absolute() if save_password else None)
    certificate = None
    if issue_cert:
        from triplicate.endpoint.certificates import issue_client_certificate

        certificate = issue_client_certificate(app.config.server.state_dir, name)
    if as_json:
        print_json({**added.to_json(), **({"certificate": str(certificate)} if certificate else {})})
        return
    show_added(added)
    if certificate is not None:
        console().print(f"Client certificate and key (restic --tls-client-cert): {certificate}", markup=False)


def show_added(added: AddedClient) -> None:
    """Tell the sysadmin what the client needs (shared with the demo)."""
    out = console()
    if not added.enabled:
        state = "not enabled"
    elif added.running:
        state = "running"
    else:
        state = "enabled; it starts when supervision runs ('triplicate supervise')"
    out.print(f"Client [bold]{added.name}[/] added on port {added.port} ({state}).")
    if added.reused_repository:
        out.print("Its repository folder existed already and is kept as it is.")
    out.print("Repository URL (the password is shown only this once):")
    out.print(f"  {added.url}", soft_wrap=True, markup=False)
    out.print("On the client, create the repository with:")
    out.print(f"  {added.restic_init}", soft_wrap=True, markup=False)


@client.command(epilog="Exit status: 0 enabled and running (or supervision not running); 1 its "
                "services did not start in time; 2 unknown client.")
@click.argument("name")
@click.pass_obj
def enable(app: AppContext, name: str) -> None:
    """Enable client NAME and start its services."""
    from triplicate.actions.clients import set_enabled

    state = set_enabled(app.config_path, name, True)
    if not state.supervised:
        console().print(f"{name} enabled; supervision is not running: start it with 'triplicate supervise'.")
    elif state.running:
        console().print(f"{name} enabled and running.")
    else:
        click.echo(f"triplicate: {name} enabled, but its services are not all running yet "
                   f"(see 'triplicate status {name}')", err=True)
        sys.exit(1)


@client.command(epilog="Exit status: 0 disabled, none of its processes left and its port closed; 1 some "
                "are left or its port answers; 2 unknown client.")
@click.argument("name")
@click.pass_obj
def disable(app: AppContext, name: str) -> None:
    """Disable client NAME: stop its endpoint and watcher (its data stays)."""
    from triplicate.actions.clients import set_enabled

    state = set_enabled(app.config_path, name, False)
    if state.killed:
        click.echo(f"triplicate: {name}: killed {len(state.killed)} process(es) that did not stop on TERM: "
                   f"{' '.join(map(str, state.killed))}", err=True)
    if state.port_answers:
        click.echo(f"triplicate: {name} disabled, but its port still answers", err=True)
        sys.exit(1)
    if state.running:
        click.echo(f"triplicate: {name} disabled, but some of its processes are still running", err=True)
        sys.exit(1)
    console().print(f"{name} disabled; none of its processes is running.")


@client.command(epilog="Exit status: 0 removed; 1 removed, but some of its processes are left; "
                "2 unknown client.")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete its primary repository and logs (never its "
              "replicas).")
@click.pass_obj
def remove(app: AppContext, name: str, purge: bool) -> None:
    """Stop client NAME and remove it from the configuration.

    Its repository stays in repos_dir unless --purge; its replicas always stay.
    """
    from triplicate.actions.clients import remove_client

    deleted = remove_client(app.config_path, name, purge)
    console().print(f"{name} removed." + ("" if purge else " Its repository is kept."))
    for path in deleted:
        console().print(f"  deleted {path}")


@client.command(name="list", epilog="Exit status: 0; 2 bad configuration.")
@click.option("--json", "as_json", is_flag=True, help='Print {"version", "clients": {NAME: {...}}}.')
@click.pass_obj
def list_command(app: AppContext, as_json: bool) -> None:
    """List the clients with their port, locations and URL (without password)."""
    from rich.markup import escape
    from rich.table import Table

    from triplicate.actions.clients import list_clients

    clients = list_clients(app.config)
    if as_json:
        print_json({"clients": {entry.name: {key: value for key, value in dataclasses.asdict(entry).items()
                                              if key != "name"} for entry in clients}})
        return
    table = Table()
    for column in ("name", "enabled", "port", "replicate_to", "url"):
        table.add_column(column, overflow="fold")  # wrapped, never cut
    for entry in clients:
        table.add_row(entry.name, "yes" if entry.enabled else "[yellow]no[/]", str(entry.port or "-"),
                      ", ".join(entry.replicate_to) or "-", escape(entry.url or "-"))
    console().print(table)
