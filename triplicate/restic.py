"""Building restic command lines (nothing else: running them is execute.py's job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from triplicate import execute


def restic_environment(repository: str, password_file: Path | None = None,
                       password_command: list[str] | None = None) -> dict[str, str]:
    """restic's environment for one repository: the key goes by file or command, never argv."""
    import shlex

    extra = {"RESTIC_REPOSITORY": repository, "RESTIC_PROGRESS_FPS": "0.2"}
    if password_file is not None:
        extra["RESTIC_PASSWORD_FILE"] = str(password_file)
    if password_command is not None:
        extra["RESTIC_PASSWORD_COMMAND"] = shlex.join(password_command)
    # Never let a caller's environment pick another repository or key behind our back.
    return execute.environment(extra, remove=("RESTIC_PASSWORD", "RESTIC_REPOSITORY_FILE"))


def restic(args: list[str], env: dict[str, str], timeout: float | None = None,
           check: bool = True) -> execute.Result:
    return execute.run(["restic", "--no-cache", *args], env=env, timeout=timeout, check=check)


def restic_json(args: list[str], env: dict[str, str], timeout: float | None = None) -> Any:
    return json.loads(restic([*args, "--json"], env, timeout).text)
