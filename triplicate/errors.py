"""The one user-facing exception type and the exit codes every command shares.

Commands raise :class:`TriplicateError` (or a subclass) for anything the user
can fix; the CLI boundary catches it once and prints one line, no traceback.
"""

from __future__ import annotations

# Exit codes shared by all commands (each command's --help lists its own use).
EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and something is not right (a location failed)
EXIT_USAGE = 2  # bad arguments or a bad configuration: nothing was changed
EXIT_UNKNOWN = 3  # the work could not run at all (monitoring: UNKNOWN)


class TriplicateError(Exception):
    """An error the user can act on; ``str(error)`` is the one-line message."""

    exit_code = EXIT_FAILED


class UsageError(TriplicateError):
    """A bad argument or configuration; nothing was changed."""

    exit_code = EXIT_USAGE


class CannotRun(TriplicateError):
    """The work could not run at all (no key, a missing program, already running): exit 3."""

    exit_code = EXIT_UNKNOWN


class ConfigError(UsageError):
    """The configuration file is missing or invalid; carries every problem found."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        if len(problems) == 1:
            message = f"{where}{problems[0]}"
        else:
            message = f"{where}{len(problems)} problems:\n  " + "\n  ".join(problems)
        super().__init__(message)
