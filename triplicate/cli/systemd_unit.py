"""``triplicate systemd-unit``."""

from __future__ import annotations

import click

from triplicate.cli import AppContext


@click.command(name="systemd-unit", epilog="Exit status: 0; 2 bad configuration.")
@click.pass_obj
def systemd_unit(app: AppContext) -> None:
    """Print a hardened systemd unit that runs 'triplicate supervise' with this configuration.

    Its writable paths and mount points come from the configuration: print it again
    after adding a location. Install it with:
    triplicate -c CONFIG systemd-unit > /etc/systemd/system/triplicate.service
    """
    from triplicate.service.supervision import systemd_unit as unit_text

    click.echo(unit_text(app.config, app.config_path.absolute()), nl=False)
