"""``triplicate demo``."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from triplicate.cli.output import console


@click.command(epilog="Exit status: 0 every check passed; 1 a check failed; 3 restic, rclone or runit missing.")
@click.option("--keep", is_flag=True, help="Keep the demonstration folder afterwards.")
def demo(keep: bool) -> None:
    """Run a self-contained demonstration server in a temporary folder.

    Starts supervision (runsvdir), adds two clients with their own REST
    endpoints, backs them up with the real restic through those endpoints, lets
    their watchers replicate to two locations, shows 'status', checks every
    replica with restic, and stops every process it started.
    """
    from triplicate.actions.demo import DemoView, run_demo
    from triplicate.cli.client import show_added
    from triplicate.cli.status import show_status

    root = Path(tempfile.mkdtemp(prefix="triplicate-demo-"))
    out = console()
    try:
        ok = run_demo(root, DemoView(say=lambda text: out.print(text, markup=False), show_added=show_added,
                                     show_status=show_status))
    finally:
        if keep:
            out.print(f"Kept {root}; look around with: triplicate -c {root}/triplicate.toml status",
                      markup=False)
        else:
            shutil.rmtree(root, ignore_errors=True)
    out.print("[green]Demo passed.[/]" if ok else "[red]Demo FAILED.[/]")
    sys.exit(0 if ok else 1)
