"""``triplicate man``: the manual page, generated from the commands themselves (roff, man(7))."""

from __future__ import annotations

import datetime
import re

import click

from triplicate import __version__
from triplicate.cli import AppContext

DESCRIPTION = """triplicate is a restic backup server: each client backs up to its own append-only
REST endpoint, and triplicate copies every new snapshot, keyless and verified, to
each of the client's other locations (disks, SFTP, S3, REST servers, rclone remotes)
seconds after it lands. It audits the replicas, restore-checks them, expires old
snapshots by their arrival on the server, and shows it all in a web dashboard."""

ENVIRONMENT = [("TRIPLICATE_CONFIG", "The configuration file when -c is not given.")]
FILES = [("/etc/triplicate/triplicate.toml", "The default configuration file."),
         ("/var/lib/triplicate", "The default state_dir: state database, service tree, logs.")]


def escape(text: str) -> str:
    """``text`` safe in a roff line: backslashes doubled, hyphens and a leading dot or quote escaped."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]


def _option_lines(command: click.Command, context: click.Context) -> list[str]:
    lines = []
    for parameter in command.get_params(context):
        if not isinstance(parameter, click.Option) or (parameter.name == "help" and command.name != "cli"):
            continue  # arguments are in the usage line; every command has --help
        record = parameter.get_help_record(context)
        if record is None:
            continue
        name, help_text = record
        lines += [".TP", f"\\fB{escape(name)}\\fR", escape(" ".join(help_text.split()))]
    return lines


def _command_lines(path: list[str], command: click.Command, parent: click.Context) -> list[str]:
    context = click.Context(command, info_name=path[-1], parent=parent)
    lines = []
    if isinstance(command, click.Group):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is not None and not sub.hidden:
                lines += _command_lines([*path, name], sub, context)
        return lines
    usage = " ".join(command.collect_usage_pieces(context))
    lines += [f".SS {escape(' '.join(path[1:]))}", f"\\fB{escape(' '.join(path))}\\fR {escape(usage)}"]
    for paragraph in _paragraphs(command.help or ""):
        lines += [".PP", escape(paragraph)]
    if command.epilog:
        lines += [".PP", escape(" ".join(command.epilog.split()))]
    options = _option_lines(command, context)
    if options:
        lines += [".PP", "Options:", ".RS", *options, ".RE"]
    return lines


def manual_page(group: click.Group) -> str:
    """The whole manual page of ``group`` (the ``triplicate`` command) as roff text."""
    from triplicate.cli import EPILOG

    context = click.Context(group, info_name="triplicate")
    date = datetime.date.today().isoformat()
    lines = [
        f'.TH TRIPLICATE 1 "{date}" "triplicate {__version__}" "User Commands"',
        ".SH NAME", "triplicate \\- a restic backup server that keeps every client's backups in three places",
        ".SH SYNOPSIS",
        "\\fBtriplicate\\fR [\\fB\\-c\\fR \\fIPATH\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
    ]
    for paragraph in _paragraphs(DESCRIPTION):
        lines += [".PP", escape(paragraph)]
    lines += [".SH OPTIONS", *_option_lines(group, context), ".SH COMMANDS"]
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is not None and name != "man":
            lines += _command_lines(["triplicate", name], command, context)
    lines += [".SH EXIT STATUS", escape(" ".join(EPILOG.split())), ".SH ENVIRONMENT"]
    for name, text in ENVIRONMENT:
        lines += [".TP", f"\\fB{name}\\fR", escape(text)]
    lines += [".SH FILES"]
    for name, text in FILES:
        lines += [".TP", f"\\fI{escape(name)}\\fR", escape(text)]
    lines += [".SH SHELL COMPLETION",
              escape("bash: eval \"$(_TRIPLICATE_COMPLETE=bash_source triplicate)\"; zsh: "
                     "eval \"$(_TRIPLICATE_COMPLETE=zsh_source triplicate)\"; fish: "
                     "_TRIPLICATE_COMPLETE=fish_source triplicate | source."),
              ".SH SEE ALSO", ("\\fBrestic\\fR(1), \\fBrclone\\fR(1), \\fBrunsvdir\\fR(8), \\fBsv\\fR(8); "
                               "the documentation in the docs/ folder of the source.")]
    return "\n".join(lines) + "\n"


@click.command(epilog="Exit status: 0.")
@click.pass_obj
def man(app: AppContext) -> None:
    """Print the manual page (roff), generated from the commands' own help.

    Read it with 'triplicate man | man -l -', or install it:
    triplicate man > /usr/local/share/man/man1/triplicate.1
    """
    from triplicate.cli import cli

    click.echo(manual_page(cli), nl=False)
