"""``triplicate web``: the dashboard, JSON API and Prometheus metrics of the whole server."""

from __future__ import annotations

import logging

import click

from triplicate.cli import AppContext


@click.command(epilog="Exit status: 0 stopped by SIGTERM or SIGINT; 2 bad configuration ([web] listen "
               "unset or invalid, no users on a non-loopback address); 3 could not start (the address "
               "is taken, the certificate cannot be read).")
@click.pass_obj
def web(app: AppContext) -> None:
    """Serve the read-only dashboard (/), JSON API (/api/v1/) and Prometheus metrics (/metrics).

    Listens on [web] listen (e.g. "127.0.0.1:8200"); with [web] users every request
    needs one of their logins; with the server's tls_cert and tls_key it speaks
    HTTPS. Reads the state database only. SIGHUP reloads the configuration, a new
    listen address and certificate included. Under 'supervise' it runs as its own
    service when [web] listen is set (docs/web.md).
    """
    import asyncio

    from triplicate.config.load import load_config
    from triplicate.errors import UsageError
    from triplicate.web.app import serve

    if app.verbose == 0:
        logging.getLogger("triplicate").setLevel(logging.INFO)
    config = app.config
    if config.web.listen is None:
        raise UsageError(f"{app.config_path}: web.listen: not set (e.g. listen = \"127.0.0.1:8200\" in [web])")
    asyncio.run(serve(config, app.config_path, lambda: load_config(app.config_path)))
