"""restic: its environment and command lines, run through execute.py (the one place that
starts programs), and the reading of its output (JSON listings, error lines).

Which repository restic opens, with which credentials and secrets, is
actions/repository.py's (through the location kinds' registry)."""

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


# --- restore checks (triplicate restore-check) ---------------------------------------------

# restic's messages when the key, not the repository, is the problem (restic 0.14).
_KEY_PROBLEMS = ("wrong password or no key found", "Resolving password failed")
# Characters restic's --include patterns treat as glob syntax (filepath.Match).
_GLOB_CHARACTERS = "\\*?["


def restic_run(args: list[str], env: dict[str, str], *, lock: bool = True, secrets: list[str] | None = None,
               timeout: float | None = None) -> execute.Result:
    """Run restic without judging its exit status (the caller reads stdout and stderr).

    ``lock=False`` adds ``--no-lock``, so that reading a replica never writes to it.
    Raises execute.CommandFailed only when restic is missing or times out.
    """
    return execute.run(["restic", "--no-cache", *([] if lock else ["--no-lock"]), *args], env=env,
                       secrets=secrets or [], timeout=timeout, check=False)


def include_pattern(path: str) -> str:
    """An ``--include`` pattern that matches exactly ``path``, even with ``*?[\\`` in its name."""
    return "".join("\\" + character if character in _GLOB_CHARACTERS else character for character in path)


def restore_arguments(snapshot: str, target: Path, paths: list[str], verify: bool = True) -> list[str]:
    """``restic restore`` arguments that restore exactly ``paths`` of ``snapshot`` under ``target``."""
    arguments = ["restore", snapshot, "--target", str(target)]
    for path in paths:
        arguments += ["--include", include_pattern(path)]
    return [*arguments, "--verify"] if verify else arguments


def parse_ls(output: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Split ``restic ls --json`` output into the snapshot (None: not found) and its nodes."""
    snapshot = None
    nodes = []
    for line in output.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        if item.get("struct_type") == "snapshot":
            snapshot = item
        elif item.get("struct_type") == "node":
            nodes.append(item)
    return snapshot, nodes


def restore_errors(stderr: str) -> dict[str, str]:
    """Path -> the first error restic reported for it during a restore ("ignoring error for ...")."""
    errors: dict[str, str] = {}
    prefix = "ignoring error for "
    for line in stderr.splitlines():
        if line.startswith(prefix) and ": " in line[len(prefix):]:
            path, _, reason = line[len(prefix):].partition(": ")
            errors.setdefault(path, reason.strip())
    return errors


def key_problem(stderr: str) -> bool:
    """Whether restic failed because of the key (wrong password, password file or command)."""
    return any(problem in stderr for problem in _KEY_PROBLEMS)


def error_summary(stderr: str) -> str:
    """restic's own explanation of a failure: the 'Fatal:' line, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("Fatal:", "Resolving password failed"))]
    text = (fatal or lines or ["no error output"])[0 if fatal else -1]
    return text.removeprefix("Fatal: ")


# --- audits (triplicate audit) ---------------------------------------------------------------


def check(env: dict[str, str], read_data_subset: str | None = None, secrets: list[str] | None = None,
          timeout: float | None = None) -> execute.Result:
    """Run ``restic check`` (with ``--read-data-subset`` when given); the result is not judged.

    Without a lock, so that an audit never writes into a replica nor waits for one.
    Raises execute.CommandFailed only when restic is missing or times out.
    """
    subset = [f"--read-data-subset={read_data_subset}"] if read_data_subset else []
    return restic_run(["check", *subset], env, lock=False, secrets=secrets, timeout=timeout)
