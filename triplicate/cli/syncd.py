"""``triplicate syncd [CLIENT]...``: the watcher daemon."""

from __future__ import annotations

import logging
import os
import sys

import click

from triplicate.cli import AppContext


@click.command(epilog="Exit status: 0 stopped by SIGTERM or SIGINT; 2 bad arguments or configuration "
               "(an unknown CLIENT); 3 could not start (the metrics address is taken).")
@click.argument("clients", nargs=-1, metavar="[CLIENT]...")
@click.option("--no-events", is_flag=True,
              help="Do not use file-system events: detect new snapshots by the periodic rescan "
                   "alone (every poll_interval).")
@click.option("--metrics-listen", metavar="ADDR:PORT",
              help="Serve Prometheus metrics on this address, e.g. 127.0.0.1:9101.")
@click.pass_obj
def syncd(app: AppContext, clients: tuple[str, ...], no_events: bool, metrics_listen: str | None) -> None:
    """Replicate new snapshots to every location seconds after they land; run until SIGTERM.

    Serves every enabled client of the configuration, or only the CLIENTs named.
    Watches each client's snapshots/ folder and rescans it every poll_interval;
    runs on_change hooks after replication; SIGHUP reloads the configuration
    (a bad file is logged and the old configuration kept). Logs to standard error.
    """
    import asyncio

    from triplicate.daemon.main import Daemon
    from triplicate.metrics import parse_listen

    if app.verbose == 0:  # a daemon's log is its product: one line per event by default
        logging.getLogger("triplicate").setLevel(logging.INFO)
    config = app.config
    for name in clients:
        config.client(name)  # an unknown name is a usage error (exit 2)
    if metrics_listen:
        parse_listen(metrics_listen)
    daemon = Daemon(app.config_path, config, clients, events=not no_events, metrics_listen=metrics_listen)
    abandoned = asyncio.run(daemon.run())
    if abandoned:
        # A copy thread is still inside one file (the stop is checked between files): do not
        # wait for it. Its partial file is in the replica's scratch folder, never under a final name.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)
