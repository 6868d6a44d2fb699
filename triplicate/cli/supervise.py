"""``triplicate supervise [--stop]``."""

from __future__ import annotations

import sys

import click

from triplicate.cli import AppContext


@click.command(epilog="Exit status: never returns while supervising; --stop: 0 everything stopped, "
               "1 processes were left and killed; 2 bad configuration; 3 already supervised or "
               "runit missing.")
@click.option("--stop", is_flag=True, help="Stop the running supervision and wait until every "
              "service has exited (a systemd unit's ExecStop).")
@click.option("--reload", "reload_", is_flag=True, help="Reconcile the service tree with the configuration, then "
              "HUP every watcher and the web service (a systemd unit's ExecReload).")
@click.option("--timeout", type=click.FloatRange(1), default=None,
              help="With --stop: seconds to wait before killing what is left [default: 60].")
@click.pass_obj
def supervise(app: AppContext, stop: bool, reload_: bool, timeout: float | None) -> None:
    """Run the top-level runsvdir in the foreground (what a systemd unit runs).

    Reconciles the service tree with the configuration first, then becomes
    runsvdir over <state_dir>/service: one supervised unit per enabled client.
    Stop it with 'triplicate supervise --stop' or SIGHUP (SIGTERM would orphan
    the services: runsvdir exits without stopping them).
    """
    from triplicate.service.supervision import reload_supervision, run_supervision, stop_supervision

    if reload_:
        if stop or timeout is not None:
            raise click.UsageError("--reload goes alone")
        for change in reload_supervision(app.config, app.config_path.absolute()):
            click.echo(f"triplicate: {change}", err=True)
        return
    if not stop:
        if timeout is not None:
            raise click.UsageError("--timeout goes with --stop")
        run_supervision(app.config, app.config_path.absolute())  # never returns
    timeout = 60.0 if timeout is None else timeout
    result = stop_supervision(app.config, timeout)
    if result.killed:
        click.echo(f"triplicate: killed {len(result.killed)} process(es) that did not stop in "
                   f"{timeout:.0f}s: {' '.join(map(str, result.killed))}", err=True)
        sys.exit(1)
    click.echo("supervision stopped" if result.was_running else "supervision was not running")
