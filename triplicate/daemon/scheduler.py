"""Periodic jobs per client: "every 60s", "every 1d", honoured across restarts.

A job has a name, an interval read from the configuration for each client
(None: off for that client) and an async action. A persisted job's last start
is stamped in the state database when it finishes, so after a restart it runs
when it is due, not at once and not never; a job that was interrupted (the
daemon stopped mid-run) has no new stamp and runs again. A non-persisted job
(the sync safety-net poll) starts at a per-client offset within its interval
so that a thousand clients are not all polled in the same second.

Nothing runs while nothing is due. Jobs of intervals of 10 s or more are due on
whole seconds and share one timer per second: a thousand clients rescanned every
minute wake the daemon 60 times a minute, not a thousand (each wake-up of an idle
process costs far more than the work it does).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from triplicate.config.model import Config
from triplicate.state.daemon import DaemonState

log = logging.getLogger("triplicate.daemon")

BATCH_SECONDS = 1.0
BATCH_MIN_INTERVAL = 10.0
FIRST_RUN_SPREAD = 3600.0


class JobFailed(Exception):
    """A job's action ran and failed, already logged and notified: only recorded here."""


@dataclass(frozen=True)
class Job:
    name: str
    # Seconds between starts for a client; None or 0 turns the job off for that client.
    interval: Callable[[Config, str], float | None]
    action: Callable[[str], Awaitable[None]]
    persist: bool = True


def phase(client: str, job: str) -> float:
    """A stable number in [0, 1) per (client, job): where in its interval a job first runs."""
    digest = hashlib.sha256(f"{job}/{client}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Scheduler:
    """Runs each job for each served client when due; at most one run per (client, job)."""

    def __init__(self, state: DaemonState, clock: Callable[[], float] = time.time,
                 first_run_spread: float = FIRST_RUN_SPREAD) -> None:
        self._state = state
        self._clock = clock
        self._first_run_spread = first_run_spread
        self._jobs: dict[str, Job] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}  # due time -> the timer of that batch
        self._batches: dict[float, list[tuple[str, str]]] = {}  # due time -> (client, job) due then
        self._armed: set[tuple[str, str]] = set()
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._last_run: dict[tuple[str, str], float] = {}  # in memory, for non-persisted jobs
        self._config: Config | None = None
        self._clients: set[str] = set()

    def add_job(self, job: Job) -> None:
        self._jobs[job.name] = job

    def due(self, client: str, job_name: str) -> float | None:
        """When the job is next due for ``client`` (wall clock), or None when it is off."""
        job = self._jobs[job_name]
        interval = job.interval(self._config, client) if self._config else None
        if not interval:
            return None
        last = self._last_run.get((client, job_name))
        if last is None and job.persist:
            last = self._state.job_last_run(client, job_name)
        if last is None:
            # Never ran: start at a per-client point of the interval (of the first hour at
            # most, for daily or weekly checks), so that a thousand clients do not all
            # start their audits or restore checks in the daemon's first second.
            spread = interval if not job.persist else min(interval, self._first_run_spread)
            return self._clock() + spread * phase(client, job_name)
        return last + interval

    def schedule(self, config: Config, clients: list[str]) -> None:
        """(Re)arm every job for ``clients`` under ``config``; drop timers of other clients."""
        self._config = config
        self._clients = set(clients)
        self._cancel_timers()
        for client in clients:
            for name in self._jobs:
                self._arm(client, name)

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel every timer and running job; return the jobs' tasks to await."""
        self._cancel_timers()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        return tasks

    def _cancel_timers(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._batches.clear()
        self._armed.clear()

    def _arm(self, client: str, name: str) -> None:
        due = self.due(client, name)
        if due is None or (client, name) in self._armed:
            return
        interval = self._jobs[name].interval(self._config, client) or 0.0  # type: ignore[arg-type]
        if interval >= BATCH_MIN_INTERVAL:
            due = round(due / BATCH_SECONDS) * BATCH_SECONDS  # at most half a second early
        batch = self._batches.get(due)
        if batch is None:
            batch = self._batches[due] = []
            delay = max(0.0, due - self._clock())
            self._timers[due] = asyncio.get_running_loop().call_later(delay, self._fire, due)
        batch.append((client, name))
        self._armed.add((client, name))

    def _fire(self, due: float) -> None:
        self._timers.pop(due, None)
        for client, name in self._batches.pop(due, []):
            self._armed.discard((client, name))
            if client not in self._clients or name not in self._jobs:
                continue
            key = (client, name)
            if key in self._running:  # still running from last time: skip this turn
                self._last_run[key] = self._clock()
                self._arm(client, name)
                continue
            self._running[key] = asyncio.get_running_loop().create_task(
                self._run(client, name), name=f"job {name} {client}")

    async def _run(self, client: str, name: str) -> None:
        job = self._jobs[name]
        started = self._clock()
        ok, error = True, None
        try:
            await job.action(client)
        except asyncio.CancelledError:
            self._running.pop((client, name), None)
            raise  # interrupted: no stamp, so it runs again after a restart
        except JobFailed as failure:
            ok, error = False, str(failure)
        except Exception as failure:
            ok, error = False, f"{type(failure).__name__}: {failure}"
            log.warning("job %s for %s failed: %s", name, client, error)
        self._running.pop((client, name), None)
        self._last_run[(client, name)] = started
        if job.persist:
            self._state.record_job_run(client, name, started, ok, error)
        if client in self._clients:
            self._arm(client, name)
