"""``triplicate systemd-unit``."""

from __future__ import annotations

import click

from triplicate.cli import AppContext


@click.command(name="systemd-unit", epilog="Exit status: 0.")
@click.pass_obj
def systemd_unit(app: AppContext) -> None:
    """Print a systemd unit that runs 'triplicate supervise' with this configuration.

    Install it with: triplicate -c CONFIG systemd-unit > /etc/systemd/system/triplicate.service
    """
    from triplicate.service.supervision import systemd_unit as unit_text

    click.echo(unit_text(app.config_path.absolute()), nl=False)
