"""The daemon: detection, one runner per (client, location), hooks, notifications, signals.

Everything happens on one asyncio loop; replication runs are the same
``sync_client`` the CLI calls, in a thread pool, one location per run so each
location has its own queue and backoff. ``examine(client)`` is the one place
that decides whether a client needs a run: a file event, the periodic rescan,
a start and a re-check of a snapshot still being written all go through it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triplicate import execute
from triplicate.actions.shortfall import look_at_locations
from triplicate.actions.sync import sync_client
from triplicate.config.load import load_config
from triplicate.config.model import Config
from triplicate.daemon import heartbeat
from triplicate.daemon.announce import AnnouncementListener
from triplicate.daemon.checks import check_jobs
from triplicate.daemon.detection import snapshot_names, snapshot_status, unchanged
from triplicate.daemon.healing import Healer
from triplicate.daemon.hooks import ChangeEvent, run_on_change
from triplicate.daemon.lockwatch import LockWatch, settle_seconds
from triplicate.daemon.notify import Kind, notify
from triplicate.daemon.runner import LocationRunner, RunOutcome
from triplicate.daemon.schedule_wait import wait_for_schedule
from triplicate.daemon.scheduler import Job, Scheduler
from triplicate.daemon.watcher import SnapshotWatcher
from triplicate.engine.judgement import Outcome
from triplicate.engine.mirror import MirrorOptions, MirrorResult
from triplicate.engine.schedule import Schedule
from triplicate.errors import CannotRun, TriplicateError
from triplicate.state.daemon import DaemonState
from triplicate.state.db import PRIMARY
from triplicate.state.replication import BACKUP_TRIGGER, ReplicationState
from triplicate.storage.rclone_server import keep_servers
from triplicate.units import format_bytes, format_duration

log = logging.getLogger("triplicate.daemon")

# Replication runs at once to one location, across all clients (each copies with its own
# workers). Each location has its own runs: a slow location's never hold back another's.
MAX_PARALLEL_RUNS = 8
# On SIGTERM, runs get this long to stop between two files before they are abandoned.
STOP_GRACE_SECONDS = 5.0
# A snapshot file still being written is looked at again after 0.2 s, 0.4 s, ... up to 5 s.
RECHECK_FIRST = 0.2
RECHECK_MAX = 5.0


@dataclass
class ClientState:
    """What the daemon keeps in memory per served client."""

    name: str
    runners: dict[str | None, LocationRunner] = field(default_factory=dict)
    # Snapshot IDs whose file hashed to its name: never hashed again.
    verified: set[str] = field(default_factory=set)
    # The snapshot names at the last examination that found nothing to do.
    in_sync: frozenset[str] | None = None
    recheck: asyncio.TimerHandle | None = None
    recheck_delay: float = RECHECK_FIRST
    latest: dict[str | None, RunOutcome] = field(default_factory=dict)
    hook_task: asyncio.Task[None] | None = None
    hook_again: bool = False

    @property
    def settled(self) -> bool:
        """No run going or queued and no snapshot waiting to be complete: time for the hook."""
        return self.recheck is None and not any(runner.busy for runner in self.runners.values())


class Daemon:
    """``triplicate syncd``: serve ``names`` (empty: every enabled client) until stopped."""

    def __init__(self, config_path: Path, config: Config, names: list[str] | tuple[str, ...] = (),
                 events: bool = True, metrics_listen: str | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self._loaded_stamp = _file_stamp(config_path)  # what `config` was read from
        self.names = list(names)
        self.events = events
        self.metrics_listen = metrics_listen
        self.clients: dict[str, ClientState] = {}
        self.stopping = False
        self.started = threading.Event()  # set once serving: for tests and embedding
        self._stop_flag = threading.Event()  # MirrorOptions.stop: copies stop between files
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._executors: dict[str | None, ThreadPoolExecutor] = {}  # per location: _executor_for
        self._notifier = ThreadPoolExecutor(1, thread_name_prefix="notify")
        self._background: set[asyncio.Future[Any]] = set()
        self.watcher: SnapshotWatcher | None = None
        self.lock_watch: LockWatch | None = None  # copy during backup without announcements
        self._watch_task: asyncio.Task[None] | None = None
        self._lock_task: asyncio.Task[None] | None = None
        self._metrics_server: Any = None
        self.replication: ReplicationState | None = None
        self.daemon_state: DaemonState | None = None
        self.scheduler: Scheduler | None = None
        self.healer: Healer | None = None

    # ---- life cycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop soon; callable from any thread or a signal handler."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    async def run(self) -> int:
        """Serve until stopped; return how many runs had to be abandoned (0: clean stop).

        Raises CannotRun when the metrics address cannot be served.
        """
        # rclone locations: one rclone per configuration file, kept running between runs. The
        # programs the scheduled checks run (restic) are interrupted when the daemon stops.
        with keep_servers(), execute.stoppable(self._stop_flag):
            return await self._serve()

    async def _serve(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        state_dir = self.config.server.state_dir
        self.replication = ReplicationState(state_dir)
        self.daemon_state = DaemonState(state_dir)
        self.scheduler = Scheduler(self.daemon_state)
        self.scheduler.add_job(Job("rescan", _poll_interval, self._rescan, persist=False))
        # Heals what an audit or a run found damaged (daemon/healing.py).
        self.healer = Healer(lambda: self.config, self.send, self.daemon_state, self._stop_flag, self._retry_client)
        # audit, restore check, retention
        for job in check_jobs(lambda: self.config, self.send, self.healer.look, self._stop_flag):
            self.scheduler.add_job(job)
        if self.metrics_listen:
            self._start_metrics(self.metrics_listen)
        if threading.current_thread() is threading.main_thread():
            self._loop.add_signal_handler(signal.SIGTERM, self._stopped.set)
            self._loop.add_signal_handler(signal.SIGINT, self._stopped.set)
            self._loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.events:
            self.watcher = SnapshotWatcher(self.examine)
            self._watch_task = self._loop.create_task(self.watcher.run(), name="watcher")
            self.lock_watch = LockWatch(self.copy_during_backup)
            self._lock_task = self._loop.create_task(self.lock_watch.run(), name="lock watch")
        # The endpoint's word that a snapshot landed, or a pack or index file during a backup.
        self.announcements = AnnouncementListener(self.examine, self.copy_during_backup)
        self._apply(self.config)
        log.info("syncd started (pid %d): %d client(s), detection by %s, rescan every %s%s",
                 os.getpid(), len(self.clients), "file events" if self.events else "rescans only",
                 format_duration(self.config.server.poll_interval),
                 f", metrics on {self.metrics_listen}" if self.metrics_listen else "")
        if _file_stamp(self.config_path) != self._loaded_stamp:
            # Edited while we started: a HUP sent then was ignored (the run script ignores HUP
            # until our handler is installed, so that it cannot kill us), so reload now.
            self.reload()
        self.started.set()
        await self._stopped.wait()
        return await self._shutdown()

    def _start_metrics(self, listen: str) -> None:
        from triplicate.metrics import ChecksCollector, ReplicationCollector, serve

        state_dir = self.config.server.state_dir
        replication = ReplicationCollector(state_dir, self.metric_pairs, self.queue_length, self.schedule_of)
        checks = ChecksCollector(state_dir, lambda: list(self.clients))
        try:
            self._metrics_server = serve(listen, replication, checks)
        except OSError as error:
            raise CannotRun(f"--metrics-listen {listen}: {error.strerror or error}") from None

    async def _shutdown(self) -> int:
        self.stopping = True
        # Copies stop between files; a scheduled restic (a prune may take hours) is interrupted.
        execute.terminate_running(self._stop_flag)
        running = [runner for state in self.clients.values() for runner in state.runners.values()
                   if runner.running]
        log.info("stopping: %d run(s) in progress finish their current file", len(running))
        if self.watcher is not None:
            self.watcher.stop()
        if self.lock_watch is not None:
            self.lock_watch.stop()
        self.announcements.close()
        pending: list[asyncio.Future[Any]] = list(self.scheduler.stop()) if self.scheduler else []
        pending += list(self.healer.tasks) if self.healer is not None else []  # they stop between files
        for state in self.clients.values():
            if state.recheck is not None:
                state.recheck.cancel()
            for runner in state.runners.values():
                runner.close()
            if state.hook_task is not None and not state.hook_task.done():
                state.hook_task.cancel()  # kills the hook's process
                pending.append(state.hook_task)
        tasks = [runner.task for runner in running if runner.task is not None]
        waited = [*tasks, *pending] + [task for task in (self._watch_task, self._lock_task) if task]
        if waited:
            await asyncio.wait(waited, timeout=STOP_GRACE_SECONDS)
        abandoned = [task for task in tasks if not task.done()]
        for task in abandoned:
            task.cancel()
        for watch in (self._watch_task, self._lock_task):
            if watch is not None and not watch.done():
                watch.cancel()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._notifier.shutdown(wait=False, cancel_futures=True)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        for database in (self.replication, self.daemon_state):
            if database is not None:
                database.close()
        if abandoned:
            log.warning("stopped; abandoned %d run(s) still copying (their partial files are "
                        "discarded by the next run)", len(abandoned))
        else:
            log.info("stopped")
        return len(abandoned)

    def reload(self) -> None:
        """SIGHUP: apply a new configuration file; keep the old one if the new one is bad."""
        if self.stopping:
            return
        try:
            config = load_config(self.config_path)
        except TriplicateError as error:
            log.error("reload: %s; keeping the previous configuration", _one_line(str(error)))
            return
        if config.server.state_dir != self.config.server.state_dir:
            log.error("reload: server.state_dir changed (%s); that needs a restart, keeping the "
                      "previous configuration", config.server.state_dir)
            return
        self.config = config
        self._apply(config)
        for state in self.clients.values():
            for runner in state.runners.values():
                runner.retry_now()  # the operator may have just fixed a location
        log.info("reload: configuration applied, %d client(s) served", len(self.clients))

    # ---- what is served ---------------------------------------------------------------------

    def served(self, config: Config) -> list[str]:
        """The clients to serve under ``config``: the named ones, else all; enabled only."""
        chosen = []
        for name in self.names or sorted(config.clients):
            settings = config.clients.get(name)
            if settings is None:
                log.warning("client %s is no longer in the configuration: not served", name)
            elif not settings.enabled:
                log.info("client %s is disabled: not served", name)
            else:
                chosen.append(name)
        return chosen

    def _apply(self, config: Config) -> None:
        """Make runners, watches and jobs match ``config`` (on start and on every reload)."""
        assert self.replication is not None and self.scheduler is not None
        served = self.served(config)
        for name in [name for name in self.clients if name not in served]:
            self._forget_client(self.clients.pop(name))
            log.info("client %s: no longer served", name)
        added = []
        for name in served:
            state = self.clients.get(name)
            if state is None:
                state = self.clients[name] = ClientState(name)
                added.append(name)
            wanted: list[str | None] = list(config.clients[name].replicate_to) or [None]
            for location in [location for location in state.runners if location not in wanted]:
                state.runners.pop(location).close()
            health = self.replication.location_health(name)
            fresh = []
            for location in wanted:
                if location not in state.runners:
                    runner = LocationRunner(name, location, self._execute, self._finished,
                                            self._max_backoff)
                    row = health.get(location) if location else None
                    if row is not None:
                        runner.failures = row["consecutive_failures"]
                        runner.notified = bool(row["failure_notified"])
                    state.runners[location] = runner
                    fresh.append(runner)
            state.in_sync = None
            if name not in added:
                for runner in fresh:
                    runner.request("start")
        for name in added:  # what the locations really hold, not what the database remembers
            task = self._loop.create_task(self.look(name), name=f"look {name}") if self._loop else None
            if task is not None:
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        for name in added:
            for runner in self.clients[name].runners.values():
                if runner.failures:
                    runner.request("start")  # it was failing when we stopped: try again now
        if self.watcher is not None:
            self.watcher.set_clients(config.server.repos_dir, served)  # examines added clients once armed
        else:
            for name in added:
                self.examine(name, "start")
        self.scheduler.schedule(config, served)
        self.announcements.set_clients(config.server.state_dir, served)
        if self.lock_watch is not None:  # rclone's endpoint announces nothing: watch the locks
            self.lock_watch.set_clients(config.server.repos_dir,
                                        served if config.server.endpoint_program == "rclone" else [])

    def _forget_client(self, state: ClientState) -> None:
        for runner in state.runners.values():
            runner.close()
        if state.recheck is not None:
            state.recheck.cancel()

    def _max_backoff(self) -> float:
        return float(self.config.server.retry_max_backoff)

    # ---- detection --------------------------------------------------------------------------

    async def _rescan(self, client: str) -> None:
        """The safety net: a periodic look at the client's snapshots whatever the events said,
        and at what each location really holds."""
        if self.watcher is not None:
            self.watcher.refresh([client])
        await self.look(client)
        self.examine(client, "poll")
        if self.healer is not None and not self.stopping:  # damage a manual audit recorded (cheap: the database)
            self.healer.look(client, "a rescan")

    async def look(self, client: str) -> None:
        """List each location of ``client`` (names only) against the primary: record what is
        really there, ask a lacking location for a run, and tell people once when one lost
        what it held ("web01 -> usb lost 11 snapshot(s); refilling")."""
        state = self.clients.get(client)
        if state is None or self.stopping:
            return
        locations = [location for location, runner in state.runners.items()
                     if location is not None and not runner.running]
        if not locations:
            return
        try:
            found = await asyncio.to_thread(look_at_locations, self.config, client, locations)
        except Exception:  # a bug or a database failure must not stop the rescans
            log.exception("%s: looking at the locations failed", client)
            return
        state = self.clients.get(client)
        if state is None or self.stopping:
            return
        for location, shortfall in found.items():
            runner = state.runners.get(location)
            if runner is None:
                continue
            unlisted, runner.unlisted = runner.unlisted, shortfall.unreadable is not None
            if runner.unlisted and not unlisted:
                continue  # not listed once (an rm -rf in progress?): a run if it is so at the next look too
            lost = shortfall.lost
            if lost is not None and not runner.lost_reported:
                runner.lost_reported = True
                log.warning("%s %s; refilling", runner.name, lost)
                self.send(f"triplicate: {runner.name} {lost}; refilling",
                          f"{runner.name} {lost} since the last look (it holds {shortfall.snapshots} "
                          f"snapshot(s) now): a run copies everything back from the primary.", "warning")
            if shortfall.needs_run:
                state.in_sync = None
                runner.request("refill" if lost else "poll")

    def copy_during_backup(self, client: str) -> None:
        """A pack or index file landed (the endpoint said so): ask each location for a run, so
        that the backup is copied while it runs. The mirror's order keeps every replica valid
        (an index only after its packs, a snapshot only after everything before it); a run
        already going queues one follow-up, so runs follow each other while packs arrive."""
        state = self.clients.get(client)
        if state is None or self.stopping:
            return
        for location, runner in state.runners.items():
            if location is not None:
                runner.request(BACKUP_TRIGGER)

    def examine(self, client: str, trigger: str) -> None:
        """Compare the primary's snapshot files with what each location is known to hold;
        request a run for each location that lacks something. Cheap: one folder listing,
        a few indexed queries, and a hash of each new snapshot file (a few kB)."""
        state = self.clients.get(client)
        if state is None or self.stopping or self.replication is None:
            return
        folder = self.config.primary_dir(client) / "snapshots"
        names = snapshot_names(folder)
        quiet = not any(runner.busy or runner.waiting_to_retry for runner in state.runners.values())
        if trigger == "poll" and quiet and state.in_sync == frozenset(names):
            return  # nothing changed since everything was known to be in place
        known_primary = set(self.replication.known_snapshots(client, PRIMARY))
        known_at = {location: set(self.replication.known_snapshots(client, location))
                    for location in state.runners if location is not None}
        to_verify = {snapshot for snapshot in names - state.verified
                     if snapshot not in known_primary or any(snapshot not in held for held in known_at.values())}
        in_progress = set()
        now = time.time()
        for snapshot in sorted(to_verify):
            status = snapshot_status(folder / snapshot, now, self.config.server.in_progress_grace)
            if status is Outcome.IN_PROGRESS:
                in_progress.add(snapshot)
            elif status is Outcome.VANISHED:
                names.discard(snapshot)
            else:  # complete, or bad: the run reports a bad one (and fails once it stays bad)
                state.verified.add(snapshot)
        state.verified &= names
        # A snapshot file known to be bad and unchanged since (the runs remember it, and fail once
        # it stays so) asks for no run by itself: runs come from the retries, not every rescan.
        bad = {row.path.partition("/")[2] for row in self.replication.unsettled_files(client)
               if row.path.startswith("snapshots/") and unchanged(folder / row.path.partition("/")[2],
                                                                  row.size, row.mtime)}
        ready = names - in_progress - bad
        changed = ready != known_primary - in_progress - bad
        requested = False
        for location, runner in state.runners.items():
            held = known_primary if location is None else known_at[location]
            if changed or not ready <= held:
                runner.request(trigger)
                requested = True
        if in_progress:
            log.info("%s: snapshot %s still being written; looking again in %.1fs", client,
                     ", ".join(sorted(snapshot[:8] for snapshot in in_progress)), state.recheck_delay)
            self._recheck_later(state)
        else:
            state.recheck_delay = RECHECK_FIRST
        if not requested and not in_progress:
            state.in_sync = frozenset(names)
            if state.settled:
                self._maybe_run_hook(state)
        else:
            state.in_sync = None

    def _recheck_later(self, state: ClientState) -> None:
        if state.recheck is not None or self._loop is None:
            return

        def due() -> None:
            state.recheck = None
            self.examine(state.name, "recheck")

        state.recheck = self._loop.call_later(state.recheck_delay, due)
        state.recheck_delay = min(state.recheck_delay * 2, RECHECK_MAX)

    # ---- runs -------------------------------------------------------------------------------

    async def _execute(self, runner: LocationRunner, trigger: str) -> RunOutcome:
        """One run of ``sync_client`` for one location, in the pool; never raises TriplicateError."""
        assert self._stopped is not None
        if not await wait_for_schedule(lambda: self.config, self.replication, runner, self._stopped):
            return RunOutcome(False, None, trigger, interrupted=True)  # stopped while outside the schedule
        state = self.clients.get(runner.client)
        if state is not None:
            state.in_sync = None
        heartbeat.replication_started(self.config, runner.client)
        config = self.config
        options = MirrorOptions(in_progress_grace=config.server.in_progress_grace, stop=self._stop_flag,
                                settle=settle_seconds(config, trigger))
        locations = [runner.location] if runner.location is not None else []
        started = time.monotonic()
        call = functools.partial(sync_client, config, runner.client, locations, trigger=trigger, options=options,
                                 on_wait=lambda message: log.info("%s [%s]", message, trigger))
        try:
            # In the daemon's stoppable scope: a restic the run starts is interrupted on SIGTERM.
            report = await asyncio.get_running_loop().run_in_executor(
                self._executor_for(runner.location), contextvars.copy_context().run, call)
        except TriplicateError as failure:
            return RunOutcome(False, str(failure), trigger, seconds=time.monotonic() - started)
        if runner.location is None:
            return RunOutcome(True, None, trigger, seconds=time.monotonic() - started)
        result = report.locations[runner.location]
        error = None
        if not result.ok and self.replication is not None:  # as sync_client recorded it
            health = self.replication.location_health(runner.client).get(runner.location)
            error = (health["last_error"] if health is not None else None) or result.error or "failed"
        return RunOutcome(result.ok, error, trigger, result.files_copied, result.bytes_copied,
                          result.seconds, result.interrupted, incomplete=result.ok and not result.complete,
                          blocking=result.error is not None, unsettled=_unsettled_words(result))

    def _executor_for(self, location: str | None) -> ThreadPoolExecutor:
        """The threads that run copies to ``location`` (MAX_PARALLEL_RUNS at once, made on first use):
        first copies to a slow location hold its threads only, never another location's."""
        executor = self._executors.get(location)
        if executor is None:
            executor = self._executors[location] = ThreadPoolExecutor(
                MAX_PARALLEL_RUNS, thread_name_prefix=f"sync {location or '(no locations)'}")
        return executor

    def _finished(self, runner: LocationRunner, outcome: RunOutcome) -> None:
        """After each run: one log line, failure/recovery notifications, maybe the hook."""
        if outcome.ok and not outcome.incomplete:
            runner.lost_reported = False  # refilled: a new loss is told again
        if outcome.interrupted:
            log.info("%s: stopped [%s]", runner.name, outcome.trigger)
        elif outcome.ok:
            what = (f"copied {outcome.files_copied} file(s), {format_bytes(outcome.bytes_copied)}"
                    if outcome.files_copied else "up to date")
            if outcome.incomplete:
                what += f"; incomplete ({outcome.unsettled})"
                # Soon, and within one poll_interval: a file that never settles is a failure by then.
                delay = min(INCOMPLETE_RETRY_SECONDS,
                            _poll_interval(self.config, runner.client) or INCOMPLETE_RETRY_SECONDS)
                if runner.follow_up(delay):
                    what += f", again in {format_duration(delay)}"
            log.info("%s: %s in %.2fs [%s]", runner.name, what, outcome.seconds, outcome.trigger)
        else:
            log.warning("%s: failed (%d in a row; next try in %s) [%s]: %s", runner.name, runner.failures,
                        format_duration(runner.retry_delay), outcome.trigger, outcome.error)
        self._report_health(runner, outcome)
        if not outcome.ok and not outcome.interrupted and self.healer is not None and not self.stopping:
            self.healer.look(runner.client, f"a run to {runner.location or 'nowhere'}")  # a damaged primary file?
        state = self.clients.get(runner.client)
        if state is None or state.runners.get(runner.location) is not runner:
            return
        state.latest[runner.location] = outcome
        if state.settled:
            heartbeat.replication_settled(self.config, state.name, state.latest)
            self._maybe_run_hook(state)

    def _retry_client(self, client: str) -> None:
        """Files were healed: the client's locations that were failing try again now."""
        state = self.clients.get(client)
        if state is not None and not self.stopping:
            for runner in state.runners.values():
                runner.retry_now()

    def _report_health(self, runner: LocationRunner, outcome: RunOutcome) -> None:
        """Tell people once when a location starts failing and once when it recovers."""
        if outcome.interrupted:
            return
        threshold = self.config.notify.after_failures
        if not outcome.ok and runner.failures >= threshold and not runner.notified:
            self._set_notified(runner, True)
            self.send(f"triplicate: {runner.name} is failing",
                      f"{runner.failures} replication attempts in a row failed; the last error: "
                      f"{outcome.error}. Retrying with backoff (next in "
                      f"{format_duration(runner.retry_delay)}).", "failure")
        elif outcome.ok and runner.notified:
            self._set_notified(runner, False)
            self.send(f"triplicate: {runner.name} recovered",
                      f"Replication to {runner.location} works again ({outcome.trigger} run succeeded).", "success")

    def _set_notified(self, runner: LocationRunner, notified: bool) -> None:
        runner.notified = notified
        if runner.location is not None and self.replication is not None:
            self.replication.set_failure_notified(runner.client, runner.location, notified)

    def send(self, title: str, body: str, kind: Kind = "info") -> None:
        """Notify in the background (apprise blocks on the network); never raises."""
        if not self.config.notify.urls or self._loop is None or self.stopping:
            return
        future = self._loop.run_in_executor(self._notifier, notify, self.config.notify, title, body, kind)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    # ---- hooks ------------------------------------------------------------------------------

    def _maybe_run_hook(self, state: ClientState) -> None:
        if self.stopping or not self.config.settings(state.name).on_change:
            return
        if state.hook_task is not None and not state.hook_task.done():
            state.hook_again = True  # look again when the running hook is done
            return
        assert self._loop is not None
        state.hook_task = self._loop.create_task(self._run_hooks(state), name=f"hook {state.name}")

    async def _run_hooks(self, state: ClientState) -> None:
        """Run the client's hook for what changed since its last run, until nothing has."""
        assert self.replication is not None and self.daemon_state is not None
        client = state.name
        while True:
            state.hook_again = False
            if self.clients.get(client) is not state:  # no longer served (a reload)
                return
            command = self.config.settings(client).on_change
            if not command:
                return
            current = set(self.replication.known_snapshots(client, PRIMARY))
            baseline = self.daemon_state.hook_baseline(client) or set()
            added, removed = sorted(current - baseline), sorted(baseline - current)
            if not added and not removed:
                return
            locations: dict[str, dict[str, object]] = {}
            for location, runner in state.runners.items():
                if location is None:
                    continue
                held = self.replication.known_snapshots(client, location)
                ok = runner.failures == 0 and all(snapshot in held for snapshot in added)
                latest = state.latest.get(location)
                error = None if ok else (latest.error if latest and latest.error else "not replicated yet")
                locations[location] = {"ok": ok, "error": error}
            event = ChangeEvent(client, added, removed, all(item["ok"] for item in locations.values()),
                                locations)
            outcome = await run_on_change(list(command), event, self.config.server.hook_timeout)
            self.daemon_state.record_hook_run(client, current, time.time(), outcome.ok)
            if not outcome.ok:
                self.send(f"triplicate: on_change hook of {client} failed", outcome.error or "failed", "failure")
            if not (state.hook_again and state.settled):
                return

    # ---- metrics ----------------------------------------------------------------------------

    def metric_pairs(self) -> list[tuple[str, str]]:
        """(client, location) pairs served now. Called from the metrics thread: copies first."""
        return [(name, location) for name, state in list(self.clients.items())
                for location in list(state.runners) if location is not None]

    def schedule_of(self, client: str) -> Schedule:
        """The client's replication schedule now (immediate once it is no longer configured)."""
        return Schedule.of_client(self.config.clients, client)

    def queue_length(self, client: str, location: str) -> int:
        state = self.clients.get(client)
        runner = state.runners.get(location) if state is not None else None
        return runner.queue_length if runner is not None else 0


INCOMPLETE_RETRY_SECONDS = 10.0


def _unsettled_words(result: MirrorResult) -> str:
    """What an incomplete run left: "data/ab/<id> still being written; 3 file(s) held back"."""
    parts = [f"{path} {file.outcome.description}" for path, file in sorted(result.unsettled.items())[:3]]
    if len(result.unsettled) > 3:
        parts.append(f"and {len(result.unsettled) - 3} more")
    if result.held_back:
        parts.append(f"{len(result.held_back)} new file(s) that may need them held back")
    return "; ".join(parts) or "nothing left"


def _poll_interval(config: Config, client: str) -> float | None:
    return config.settings(client).poll_interval


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """A file's modification time and size (None when it cannot be read): what tells an edit."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
