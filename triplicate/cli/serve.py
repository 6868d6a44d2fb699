"""``triplicate serve [CLIENT]...``: the restic REST endpoint."""

from __future__ import annotations

import logging

import click

from triplicate.cli import AppContext


@click.command(epilog="Exit status: 0 stopped by SIGTERM or SIGINT; 2 bad arguments or configuration "
               "(an unknown CLIENT, one without a port); 3 could not start (a CLIENT's port is taken).")
@click.argument("clients", nargs=-1, metavar="[CLIENT]...")
@click.pass_obj
def serve(app: AppContext, clients: tuple[str, ...]) -> None:
    """Serve the clients' repositories over restic's REST protocol; run until SIGTERM.

    Serves the CLIENTs named (each on its own port), or every enabled client with
    a port (shared mode, where SIGHUP opens and closes listeners as clients are
    enabled and disabled). Uploads are verified against their names and made
    durable before they are acknowledged; nothing is overwritten or deleted but
    locks. Logs to standard error; failed logins are logged for fail2ban.
    """
    import asyncio

    from triplicate.endpoint.server import EndpointServer
    from triplicate.endpoint.settings import wanted_listeners

    if app.verbose == 0:  # a daemon's log is its product
        logging.getLogger("triplicate").setLevel(logging.INFO)
    config = app.config
    wanted_listeners(config, clients)  # an unknown client, or one without a port: exit 2
    asyncio.run(EndpointServer(app.config_path, config, clients).run())
