"""The daemon's side of per-client schedules (engine/schedule.py): a run asked for outside
its client's schedule waits, still counted as this (client, location)'s one run, until the
next allowed time. ``triplicate sync`` by hand never comes here: it runs at once.

``clock`` (the wall clock) and ``RECHECK_SECONDS`` (how often a wait looks again: the
clock may jump, the configuration may be reloaded) are module attributes that tests
replace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from triplicate.actions.sync import record_primary_snapshots
from triplicate.config.model import Config
from triplicate.daemon.runner import LocationRunner
from triplicate.engine.schedule import Schedule
from triplicate.state.replication import ReplicationState
from triplicate.storage import StorageError

log = logging.getLogger("triplicate.daemon")

clock: Callable[[], float] = time.time
RECHECK_SECONDS = 60.0


async def wait_for_schedule(config: Callable[[], Config], replication: ReplicationState | None,
                            runner: LocationRunner, stopped: asyncio.Event) -> bool:
    """Wait until ``runner``'s client may replicate; returns True then (at once for an
    immediate client), False when ``stopped`` is set first or the location is no longer
    the client's.

    The last run, which ``every`` and ``at`` count from, is the start of the location's
    last run in the state database (the CLI's runs count too). A follow-up asked for while
    waiting is dropped: the run about to start sees every change made until now. While
    it waits, the primary's snapshots are recorded at each look (every ``RECHECK_SECONDS``),
    so that a snapshot's lag counts from its arrival, not from the scheduled run.
    """
    waited = False
    while True:
        section = config().clients.get(runner.client)
        if runner.location is None:
            break  # nothing to copy: the run only records the primary's snapshots
        if section is None or runner.location not in section.replicate_to:
            if waited:
                return False  # the client or location was removed while waiting (a reload)
            break  # as without a schedule: the run is the daemon's affair
        schedule = Schedule.of(section)
        if schedule.immediate:
            break
        last_run = replication.last_run_start(runner.client, runner.location) if replication else None
        now = clock()
        allowed = schedule.next_allowed(now, last_run)
        if allowed <= now:
            break
        if not waited:
            log.info("%s: replicates %s; waiting until %s", runner.name, schedule.describe(),
                     datetime.fromtimestamp(allowed).strftime("%Y-%m-%d %H:%M"))
            waited = True
        # What arrives meanwhile is known from its arrival (status and metrics count its lag).
        try:
            await asyncio.to_thread(record_primary_snapshots, config(), runner.client)
        except StorageError as error:
            log.debug("%s: cannot list the primary while waiting: %s", runner.name, error)
        try:
            await asyncio.wait_for(stopped.wait(), timeout=min(allowed - now, RECHECK_SECONDS))
            return False
        except TimeoutError:
            continue
    if waited:
        runner.queued = None
        log.info("%s: within its schedule: replicating", runner.name)
    return True
