"""The command line: a thin shell over the actions.

Subcommands are imported only when run, so ``triplicate --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

from triplicate import __version__
from triplicate.errors import EXIT_USAGE, TriplicateError

# name -> "module:attribute" of a click command; one module per command.
COMMANDS = {
    "audit": "triplicate.cli.audit:audit",
    "client": "triplicate.cli.client:client",
    "config": "triplicate.cli.config:config",
    "demo": "triplicate.cli.demo:demo",
    "heal": "triplicate.cli.heal:heal",
    "init": "triplicate.cli.init:init",
    "quarantine": "triplicate.cli.quarantine:quarantine",
    "recover": "triplicate.cli.recover:recover",
    "man": "triplicate.cli.man:man",
    "restore-check": "triplicate.cli.restore_check:restore_check",
    "retention": "triplicate.cli.retention:retention",
    "serve": "triplicate.cli.serve:serve",
    "status": "triplicate.cli.status:status",
    "supervise": "triplicate.cli.supervise:supervise",
    "sync": "triplicate.cli.sync:sync",
    "syncd": "triplicate.cli.syncd:syncd",
    "systemd-unit": "triplicate.cli.systemd_unit:systemd_unit",
    "web": "triplicate.cli.web:web",
}

EPILOG = """Exit status: 0 success; 1 the work ran and something failed; 2 bad arguments or
configuration (nothing changed); 3 the work could not run. See each command's --help."""


class LazyGroup(click.Group):
    """Loads a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command


class AppContext:
    """What every command receives: where the configuration is, loaded on first use."""

    def __init__(self, config_option: str | None, verbose: int) -> None:
        from triplicate.config.load import config_path

        self.config_path: Path = config_path(config_option)
        self.verbose = verbose
        self._config: Any = None

    @property
    def config(self) -> Any:
        if self._config is None:
            from triplicate.config.load import load_config

            self._config = load_config(self.config_path)
        return self._config


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", "config_option", metavar="PATH",
              help="Configuration file [default: $TRIPLICATE_CONFIG, else /etc/triplicate/triplicate.toml].")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.version_option(__version__, prog_name="triplicate")
@click.pass_context
def cli(ctx: click.Context, config_option: str | None, verbose: int) -> None:
    """triplicate: a restic backup server that keeps every client's backups in three places."""
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = AppContext(config_option, verbose)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; return the exit status. User-facing errors are one line, and
    with ``--json`` also one JSON object on standard output."""
    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    return _run(argv, as_json)


def _json_error(as_json: bool, message: str, code: int) -> int:
    if as_json:
        from triplicate.cli.output import print_json_error

        print_json_error(message, code)
    return code


def _run(argv: list[str] | None, as_json: bool) -> int:
    try:
        result = cli.main(args=argv, standalone_mode=False, prog_name="triplicate")
        return result if isinstance(result, int) else 0
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.ClickException as error:
        # One line, as every other error: the message and where to read more.
        context = getattr(error, "ctx", None)
        where = f" (see '{context.command_path} --help')" if context is not None else ""
        click.echo(f"triplicate: {error.format_message()}{where}", err=True)
        return _json_error(as_json, error.format_message(), EXIT_USAGE if error.exit_code == 2 else error.exit_code)
    except click.exceptions.Abort:
        click.echo("triplicate: aborted", err=True)
        return 130
    except TriplicateError as error:
        click.echo(f"triplicate: {error}", err=True)
        logging.getLogger("triplicate").debug("details", exc_info=True)
        return _json_error(as_json, str(error), error.exit_code)
    except KeyboardInterrupt:
        click.echo("triplicate: interrupted", err=True)
        return 130


def main() -> None:
    """The console script's entry point."""
    sys.exit(run())
