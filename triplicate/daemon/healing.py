"""The daemon heals by itself: after an audit or a replication run that found damaged files,
and at each rescan (damage a manual audit recorded).

What is known bad about a client, anywhere, is read from the state database: the
files an audit's verification found corrupt or unreadable at a location or at the
primary (their stamps), and the primary's files a run found corrupt or unreadable.
With the client's key, after each audit restic also reads the primary's index: a
pack it names that the primary lacks (lost from its disk) is healed as missing.
When that holds a file not already tried, ``heal_client`` runs for those files
alone (hashed at every copy, replaced from any copy that hashes to its name) in a
worker thread; it takes the client's replication locks, which the runners' syncs
wait for (each holds one lock at a time, so neither deadlocks the other). Each
heal is recorded as the job ``heal`` (``status`` shows the last one) and
notified: success when every file was healed, failure when a file has no good
copy anywhere; the audit the heal records afterwards notifies its changes of status
as a scheduled audit does (back to OK, typically). A file that stays bad is not tried again until what is known bad
changes, or, when it was not lost but its copy failed (or a copy could not be looked
at), after ``retry_max_backoff``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from triplicate.actions.heal import FileHeal, HealReport, heal_client
from triplicate.actions.heal_losses import packs_missing_at_primary
from triplicate.config.model import Config
from triplicate.daemon.checks import Notify, notify_changes
from triplicate.engine.judgement import Outcome
from triplicate.errors import TriplicateError
from triplicate.execute import Interrupted
from triplicate.state.audit import AuditState
from triplicate.state.daemon import DaemonState
from triplicate.state.db import PRIMARY
from triplicate.state.replication import ReplicationState
from triplicate.storage import FileType, Handle, StorageError

log = logging.getLogger("triplicate.daemon")

JOB = "heal"
# How many file names a notification quotes.
QUOTED = 5
DAMAGED = (Outcome.CORRUPT.value, Outcome.UNREADABLE.value)


def known_damage(config: Config, client: str) -> set[str]:
    """The client's files known bad at some copy (paths in the repository, e.g. ``data/ab/<id>``).

    Read from the last verifications at each location and at the primary, and from the
    replication runs (the primary's files they found corrupt or unreadable).
    """
    state_dir = config.server.state_dir
    damaged: set[str] = set()
    with AuditState.opened(state_dir) as audits:
        for location in [PRIMARY, *config.client(client).replicate_to]:
            damaged |= {Handle(FileType(kind), name).relative_path()
                        for (kind, name), stamp in audits.stamps(client, location).items() if not stamp.ok}
    with ReplicationState.opened(state_dir) as replication:
        damaged |= replication.source_corrupt_files(client)
        damaged |= {row.path for row in replication.unsettled_files(client) if row.outcome in DAMAGED}
    return damaged


@dataclass
class _Client:
    running: bool = False
    again: bool = False  # damage was reported while a heal ran: look again when it is done
    # Tried, and lost (no good copy anywhere) or not bad after all: not tried again while still
    # known bad (the next audit re-reads a lost file and finds it bad again: no new alarm).
    handled: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)  # healing failed otherwise: tried again after a while
    failed_at: float = 0.0
    index: dict[str, frozenset[str]] = field(default_factory=dict)  # the primary's index files read: their packs


class Healer:
    """Starts ``heal_client`` for a client whose known damage changed; one heal per client at a time.

    ``after_heal(client)`` is called on the event loop once files were healed (the daemon
    retries the client's failing locations at once).
    """

    def __init__(self, get_config: Callable[[], Config], send: Notify, state: DaemonState,
                 stop: threading.Event, after_heal: Callable[[str], None] = lambda client: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._get_config = get_config
        self._send = send
        self._state = state
        self._stop = stop
        self._after_heal = after_heal
        self._clock = clock
        self._clients: dict[str, _Client] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def look(self, client: str, why: str) -> None:
        """On the event loop: heal ``client`` if something new is known bad (after ``why``: "audit", a run)."""
        entry = self._clients.setdefault(client, _Client())
        if entry.running:
            entry.again = True
            return
        if self._stop.is_set():
            return
        entry.running = True
        task = asyncio.get_running_loop().create_task(self._heal(client, entry, why), name=f"heal {client}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _heal(self, client: str, entry: _Client, why: str) -> None:
        try:
            while True:
                entry.again = False
                try:
                    await self._once(client, entry, why)
                except Exception:  # reading the state database failed: the next look tries again
                    log.exception("heal %s: looking for damaged files failed", client)
                if not entry.again or self._stop.is_set():
                    return
        finally:
            entry.running = False

    async def _once(self, client: str, entry: _Client, why: str) -> None:
        config = self._get_config()
        if client not in config.clients:
            return
        damaged = await asyncio.to_thread(known_damage, config, client)
        missing: set[str] = set()
        if why == "audit" and config.settings(client).has_key:
            # Keyless, a pack gone from the primary's disk looks like one a prune removed: with
            # the key, the index says which packs the primary should hold.
            try:
                missing = await asyncio.to_thread(packs_missing_at_primary, config, client, entry.index)
            except Interrupted:
                return  # the daemon is stopping
            except (TriplicateError, StorageError) as error:
                log.warning("heal %s: the primary's index could not be read for missing packs: %s", client, error)
            damaged |= missing
        entry.handled &= damaged  # healed (or replaced by hand) since: a new damage is news again
        if self._clock() - entry.failed_at >= config.server.retry_max_backoff:
            entry.failed = set()
        entry.failed &= damaged
        todo = damaged - entry.handled - entry.failed
        if not todo:
            return
        log.info("heal %s: %d file(s) known bad after %s; healing from any good copy", client, len(todo), why)
        started = self._clock()
        try:
            report = await asyncio.to_thread(_heal_files, config, client, todo, missing & todo, self._stop)
        except Exception as error:  # a heal must never take the daemon down
            if isinstance(error, TriplicateError):
                log.warning("heal %s could not run: %s", client, error)
            else:
                log.exception("heal %s failed unexpectedly", client)
            failure = f"could not run: {error}" if isinstance(error, TriplicateError) else \
                f"failed unexpectedly: {type(error).__name__}: {error}"
            self._state.record_job_run(client, JOB, started, False, failure)
            entry.failed, entry.failed_at = entry.failed | todo, self._clock()
            self._send(f"triplicate: heal of {client} could not run", failure, "failure")
            return
        if report.interrupted:
            return  # the daemon is stopping: no record, the next start looks again
        healed = [item.file for item in report.files if item.healed_from and not item.not_healed]
        lost = [item for item in report.files if item.lost]
        failed = [item for item in report.files if item.not_healed and not item.lost]
        unchecked = {name: copy.problem for name, copy in report.copies.items() if copy.problem}
        retried = {item.file for item in failed}
        if unchecked:  # a copy could not be looked at (unreachable?): what was not healed is tried again later
            retried |= todo - set(healed)
        entry.handled |= todo - retried
        if retried:
            entry.failed, entry.failed_at = entry.failed | retried, self._clock()
        problem = _problem(lost, failed, unchecked)
        self._state.record_job_run(client, JOB, started, problem is None, problem)
        log.log(logging.WARNING if problem else logging.INFO, "heal %s: %d file(s) healed%s", client,
                len(healed), f"; {problem}" if problem else "")
        if healed:
            self._after_heal(client)
        if lost:
            self._send(f"triplicate: {client} lost {len(lost)} file(s): no good copy anywhere",
                       "\n".join(_lost_line(item) for item in lost[:QUOTED])
                       + (f"\nand {len(lost) - QUOTED} more" if len(lost) > QUOTED else "")
                       + (f"\nHealed: {', '.join(healed[:QUOTED])}" if healed else ""), "failure")
        elif failed:
            self._send(f"triplicate: heal of {client} failed for {len(failed)} file(s)", problem or "", "failure")
        elif healed:
            self._send(f"triplicate: healed {len(healed)} file(s) of {client}",
                       "Replaced from a good copy (the primary's bad ones are kept in quarantine): "
                       + ", ".join(healed[:QUOTED]) + (f" and {len(healed) - QUOTED} more"
                                                       if len(healed) > QUOTED else ""), "success")
        notify_changes(self._send, report.audit_changes)  # the audit after the heal: back to OK, say


def _heal_files(config: Config, client: str, files: set[str], missing: set[str], stop: threading.Event
                ) -> HealReport:
    return heal_client(config, client, stop=stop, only=frozenset(files), missing=frozenset(missing))


def _problem(lost: list[FileHeal], failed: list[FileHeal], unchecked: dict[str, str]) -> str | None:
    """The job's error: "lost data/ab/<id> (no good copy anywhere); ..."; None when all was healed."""
    parts = [f"lost {item.file} (no good copy anywhere)" for item in lost]
    parts += [f"{item.file}: " + "; ".join(f"{copy}: {why}" for copy, why in item.not_healed.items())
              for item in failed]
    parts += [f"{name} not looked at: {why}" for name, why in unchecked.items()]
    if not parts:
        return None
    return "; ".join(parts[:QUOTED]) + (f" and {len(parts) - QUOTED} more" if len(parts) > QUOTED else "")


def _lost_line(item: FileHeal) -> str:
    """One lost file and the snapshots that may need it (short IDs, as restic prints them)."""
    if item.snapshots_needing:
        shown = " ".join(snapshot[:8] for snapshot in item.snapshots_needing)
        return f"{item.file}: snapshots that may need it: {shown}"
    return f"{item.file}: {item.snapshots_note or 'no snapshot named'}"
