"""User hooks run after replication: ``on_change = ["/path/to/script", "arg"]``.

A hook learns what changed from its environment (``TRIPLICATE_CLIENT``,
``TRIPLICATE_SNAPSHOTS_ADDED``, ``TRIPLICATE_SNAPSHOTS_REMOVED`` as
space-separated IDs, ``TRIPLICATE_RESULT`` = ``ok``/``failed``) and the same as
one JSON object on standard input (with the ``version`` of every JSON triplicate
prints, docs/json.md). Its output goes to the log, line by line. A
hook that fails or times out is reported to the caller; it is never fatal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from triplicate.actions import JSON_VERSION
from triplicate.execute import CommandFailed, environment, run_async

log = logging.getLogger("triplicate.hooks")  # the name operators grep the log for
# A chatty hook must not flood the log: lines past this many per stream are counted, not logged.
MAX_LOGGED_LINES = 200


@dataclass(frozen=True)
class ChangeEvent:
    """What a hook is told about one change of a client's snapshots."""

    client: str
    added: list[str]
    removed: list[str]
    ok: bool
    # location name -> {"ok": bool, "error": str | None}
    locations: dict[str, dict[str, object]] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return {
            "TRIPLICATE_CLIENT": self.client,
            "TRIPLICATE_SNAPSHOTS_ADDED": " ".join(self.added),
            "TRIPLICATE_SNAPSHOTS_REMOVED": " ".join(self.removed),
            "TRIPLICATE_RESULT": "ok" if self.ok else "failed",
        }

    def to_json(self) -> dict[str, object]:
        return {
            "version": JSON_VERSION,
            "client": self.client,
            "snapshots_added": self.added,
            "snapshots_removed": self.removed,
            "result": "ok" if self.ok else "failed",
            "locations": self.locations,
        }


@dataclass(frozen=True)
class HookOutcome:
    ok: bool
    # One line for the log and a notification: why it failed; None when it succeeded.
    error: str | None = None


async def run_on_change(command: list[str], event: ChangeEvent, timeout: float) -> HookOutcome:
    """Run ``command`` for ``event``; log its output; return whether it exited 0. Never raises
    (cancellation excepted: the hook is killed then)."""
    program = command[0]
    log.info("hook %s: running %s (%d added, %d removed, result %s)", event.client, program,
             len(event.added), len(event.removed), "ok" if event.ok else "failed")
    try:
        result = await run_async(
            command, env=environment(event.environment()),
            stdin=(json.dumps(event.to_json()) + "\n").encode(), timeout=timeout,
        )
    except CommandFailed as error:
        log.warning("hook %s: %s", event.client, error)
        return HookOutcome(False, str(error))
    except OSError as error:
        log.warning("hook %s: %s: %s", event.client, program, error.strerror or error)
        return HookOutcome(False, f"{program}: {error.strerror or error}")
    for stream in (result.stdout, result.stderr):
        _log_output(event.client, stream)
    if result.returncode != 0:
        message = f"{program} exited with status {result.returncode}"
        log.warning("hook %s: %s", event.client, message)
        return HookOutcome(False, message)
    log.info("hook %s: %s finished", event.client, program)
    return HookOutcome(True)


def _log_output(client: str, output: bytes) -> None:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    for line in lines[:MAX_LOGGED_LINES]:
        log.info("hook %s: | %s", client, line.rstrip())
    if len(lines) > MAX_LOGGED_LINES:
        log.info("hook %s: | (%d more lines not logged)", client, len(lines) - MAX_LOGGED_LINES)
