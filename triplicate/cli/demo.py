"""``triplicate demo``."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from triplicate.cli.output import console


@click.command()
@click.option("--keep", is_flag=True, help="Keep the demonstration folder afterwards.")
def demo(keep: bool) -> None:
    """Run a self-contained demonstration server in a temporary folder.

    Needs restic. Makes real backups, replicates them to two locations and
    checks the replicas with restic. Exit status 0 when every check passed.
    """
    from triplicate.actions.demo import run_demo
    from triplicate.cli.sync import _summarise

    root = Path(tempfile.mkdtemp(prefix="triplicate-demo-"))
    out = console()
    try:
        ok = run_demo(root, out.print, _summarise)
    finally:
        if keep:
            out.print(f"Kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    out.print("[green]Demo passed.[/]" if ok else "[red]Demo FAILED.[/]")
    sys.exit(0 if ok else 1)
