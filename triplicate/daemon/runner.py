"""One replication run per (client, location) at a time, with one queued follow-up and backoff.

A request while a run is going queues exactly one follow-up (however many
requests arrive: the follow-up sees all of them). A failed run is retried after
an exponential backoff capped by ``retry_max_backoff``; while a location waits
for its retry, requests wait with it, so a broken disk is not hammered. Each
location has its own runner, so one location's trouble never delays another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("triplicate.daemon")

# The first retry comes after this many seconds, then 2x, 4x... up to the configured cap.
FIRST_BACKOFF = 5.0


def backoff_delay(failures: int, cap: float, first: float = FIRST_BACKOFF) -> float:
    """Seconds to wait after ``failures`` consecutive failures (>= 1): first * 2^(n-1), capped."""
    exponent = min(max(failures - 1, 0), 32)  # 2^32 x 5 s is far past any sensible cap
    return max(0.0, min(cap, first * float(2**exponent)))


@dataclass(frozen=True)
class RunOutcome:
    """What one run did, as far as the scheduler cares."""

    ok: bool
    error: str | None = None
    trigger: str = ""
    files_copied: int = 0
    bytes_copied: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    # ok, but something listed was not copied (being written, gone, held back): a
    # backup or a prune is running; another run soon completes the replica.
    incomplete: bool = False
    # A failure of the location itself (unreachable, full...): new requests wait for the
    # retry. False when only primary files failed: new snapshots are still copied at once.
    blocking: bool = True
    # Why an incomplete run was incomplete, in a few words (the log line says it).
    unsettled: str = ""


class LocationRunner:
    """Runs ``execute(trigger)`` for one (client, location); never two at once.

    ``location`` is None for a client without locations: its runs only record the
    primary's snapshots (so hooks still learn what changed). Lives on the event
    loop's thread; not thread-safe.
    """

    def __init__(
        self,
        client: str,
        location: str | None,
        execute: Callable[[LocationRunner, str], Awaitable[RunOutcome]],
        finished: Callable[[LocationRunner, RunOutcome], None],
        max_backoff: Callable[[], float],
        failures: int = 0,
    ) -> None:
        self.client = client
        self.location = location
        self._execute = execute
        self._finished = finished
        self._max_backoff = max_backoff
        self.failures = failures  # consecutive, seeded from the state database on start
        self.notified = False  # people were told it is failing (persisted by the daemon)
        self.lost_reported = False  # people were told it lost files; reset once refilled
        self.unlisted = False  # the last look could not list it (once may be a folder changing under it)
        self.running = False
        self.queued: str | None = None  # the trigger of the one follow-up run
        self.task: asyncio.Task[None] | None = None
        self.retry_delay: float | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._retry_blocks = True  # requests wait for the retry (the location itself failed)
        self._follow_up: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return f"{self.client} -> {self.location or '(no locations)'}"

    @property
    def waiting_to_retry(self) -> bool:
        return self._retry is not None and self._retry_blocks

    @property
    def busy(self) -> bool:
        """Running, or a follow-up is queued: the outcome of the latest change is not known yet."""
        return self.running or self.queued is not None

    @property
    def queue_length(self) -> int:
        """Runs in progress or waiting (a retry counts once it is due, not while backing off)."""
        return int(self.running) + int(self.queued is not None)

    def request(self, trigger: str) -> None:
        """Ask for a run now; queue one follow-up if a run is going; wait if backing off."""
        if self._closed:
            return
        if self.running:
            self.queued = self.queued or trigger
        elif self._retry is None or not self._retry_blocks:
            self._start(trigger)

    def follow_up(self, delay: float, trigger: str = "incomplete") -> bool:
        """Run again after ``delay`` unless a follow-up is already due: one chain per location,
        however many runs end incomplete meanwhile. Returns whether one was scheduled."""
        if self._closed or self._follow_up is not None:
            return False

        def due() -> None:
            self._follow_up = None
            self.request(trigger)

        self._follow_up = asyncio.get_running_loop().call_later(delay, due)
        return True

    def retry_now(self) -> None:
        """Cut a backoff short (on reload: the operator may have fixed the location)."""
        if self._retry is not None and not self.running:
            self._cancel_retry()
            self._start("retry")

    def close(self) -> None:
        """Stop scheduling runs; a run in progress finishes, but nothing follows it."""
        self._closed = True
        self.queued = None
        self._cancel_retry()
        if self._follow_up is not None:
            self._follow_up.cancel()
            self._follow_up = None

    def _start(self, trigger: str) -> None:
        self._cancel_retry()
        self.running = True
        self.task = asyncio.get_running_loop().create_task(self._run(trigger), name=f"run {self.name}")

    async def _run(self, trigger: str) -> None:
        try:
            outcome = await self._execute(self, trigger)
        except asyncio.CancelledError:
            self.running = False
            raise
        except Exception as error:  # a bug must not stop this location for good: retry later
            log.exception("%s: unexpected error", self.name)
            outcome = RunOutcome(False, f"unexpected error: {type(error).__name__}: {error}", trigger)
        self.running = False
        if outcome.ok:
            self.failures = 0
            self.retry_delay = None
        elif not outcome.interrupted:
            self.failures += 1
            # The queued follow-up is folded into the retry: it would fail the same way now.
            self.queued = None
            self.retry_delay = backoff_delay(self.failures, self._max_backoff())
            self._retry_blocks = outcome.blocking
            if not self._closed:
                self._retry = asyncio.get_running_loop().call_later(self.retry_delay, self._retry_due)
        self._finished(self, outcome)
        if self.queued is not None and not self._closed:
            trigger, self.queued = self.queued, None
            self._start(trigger)

    def _retry_due(self) -> None:
        self._retry = None
        if not self._closed and not self.running:
            self._start("retry")

    def _cancel_retry(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
