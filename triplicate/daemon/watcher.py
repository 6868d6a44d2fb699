"""Noticing new snapshots: one watchfiles watcher over every served client's ``snapshots/``.

restic writes a snapshot file as the very last step of a backup, so a new
64-hex name in ``<repos_dir>/<client>/snapshots`` is the signal. Each client's
folder is watched without recursion (a handful of inotify watches per thousand
clients, nothing in ``data/``). A client whose repository does not exist yet is
watched one level up (its repository folder, else ``repos_dir``) until
``snapshots/`` appears. When native events cannot be had (no inotify, its limits
reached) the watcher falls back to watchfiles' polling, saying so in the log;
the daemon's periodic rescan stays the safety net under both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import awatch

from triplicate.storage.handle import is_id

log = logging.getLogger("triplicate.daemon")

# watchfiles yields a burst once nothing new arrived for STEP_MS (at most DEBOUNCE_MS after
# its first event): a backup's handful of events becomes one change within ~0.1 s.
STEP_MS = 50
DEBOUNCE_MS = 1600
POLL_DELAY_MS = 1000  # the fallback's scan period
RETRY_SECONDS = 1.0  # after a watched folder vanished while (re)starting


def watch_target(repos_dir: Path, client: str, folder: str = "snapshots") -> Path | None:
    """The folder to watch for ``client``: its ``folder`` (``snapshots/``), else the nearest
    existing parent (its repository folder, ``repos_dir``, or the folder ``repos_dir`` will be
    made in)."""
    primary = repos_dir / client
    for candidate in (primary / folder, primary, repos_dir, repos_dir.parent):
        if candidate.is_dir():
            return candidate
    return None


class SnapshotWatcher:
    """Calls ``on_change(client, trigger)`` after a burst of changes to a client's snapshot names.

    ``trigger`` is "event" for file events, "start" for a client just added (once
    its watch is armed, so nothing between the two is missed) and "rescan" for a
    client whose watched folder moved (its repository or ``snapshots/`` appeared
    or vanished: events may have been missed while the watch was re-armed).
    Runs on the event loop (:meth:`run`). ``folder`` is the repository folder watched
    (``snapshots``; ``locks`` for the lock watch of daemon/lockwatch.py).
    """

    def __init__(self, on_change: Callable[[str, str], None], force_polling: bool = False,
                 folder: str = "snapshots") -> None:
        self._on_change = on_change
        self.force_polling = force_polling
        self.folder = folder
        self._repos_dir: Path | None = None
        self._targets: dict[str, Path | None] = {}
        self._catch_up: dict[str, str] = {}  # client -> trigger, called once the watch is armed
        self._rearm = asyncio.Event()
        self._stop_current: asyncio.Event | None = None
        self.watching: tuple[str, ...] = ()  # folders of the running watch, for tests and logs
        self._stopping = False

    def set_clients(self, repos_dir: Path, clients: list[str]) -> None:
        """Watch exactly ``clients`` under ``repos_dir`` (on start and on reload)."""
        if repos_dir != self._repos_dir:
            self._targets = {}
        self._repos_dir = repos_dir
        for client in clients:
            if client not in self._targets:
                self._catch_up[client] = "start"
        before = set(self._targets.values())
        self._targets = {client: watch_target(repos_dir, client, self.folder) for client in clients}
        self._catch_up = {client: trigger for client, trigger in self._catch_up.items() if client in self._targets}
        if set(self._targets.values()) != before or self._catch_up:
            self._restart()

    def refresh(self, clients: list[str] | set[str]) -> bool:
        """Re-check where ``clients`` should be watched; re-arm if that moved (return True then).
        Cheap: a few stats per client."""
        if self._repos_dir is None:
            return False
        moved = False
        for client in clients:
            if client not in self._targets:
                continue
            target = watch_target(self._repos_dir, client, self.folder)
            if target != self._targets[client]:
                self._targets[client] = target
                self._catch_up.setdefault(client, "rescan")
                moved = True
        if moved:
            self._restart()
        return moved

    def stop(self) -> None:
        """Make :meth:`run` return within a few tens of milliseconds."""
        self._stopping = True
        self._restart()

    async def run(self) -> None:
        """Watch until :meth:`stop`; restarts the watch whenever the set of folders changes."""
        while not self._stopping:
            self._rearm.clear()
            folders = sorted({str(target) for target in self._targets.values() if target is not None})
            if not folders:
                self.watching = ()
                self._call_catch_up()
                await self._rearm.wait()
                continue
            stop = asyncio.Event()
            self._stop_current = stop
            try:
                await self._watch(folders, stop)
            except FileNotFoundError:
                # A folder vanished between choosing it and watching it: choose again.
                log.debug("a watched folder vanished; re-checking where to watch")
                self.refresh(list(self._targets))
                await asyncio.sleep(RETRY_SECONDS)
            except Exception as error:
                if self.force_polling:
                    log.error("watching folders failed even by polling (%s); relying on the periodic "
                              "rescan", _describe(error))
                    self.watching = ()
                    self._call_catch_up()
                    await self._rearm.wait()
                    continue
                log.warning("file events unavailable (%s); falling back to polling the %s "
                            "folders every %.0fs", _describe(error), self._noun, POLL_DELAY_MS / 1000)
                self.force_polling = True

    async def _watch(self, folders: list[str], stop: asyncio.Event) -> None:
        changes = awatch(
            *folders, watch_filter=None, debounce=DEBOUNCE_MS, step=STEP_MS, stop_event=stop,
            recursive=False, force_polling=self.force_polling, poll_delay_ms=POLL_DELAY_MS,
            ignore_permission_denied=True,
        )
        # awatch sets its watches up in the first step of its first iteration: run that
        # step now, so that once this coroutine resumes every folder is being watched.
        first = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0)
        try:
            if first.done() and first.exception() is not None:
                raise first.exception()  # type: ignore[misc]
            self.watching = tuple(folders)
            log.info("watching %d folder(s) for %s (%s)", len(folders),
                     "new snapshots" if self.folder == "snapshots" else f"changes in {self.folder}/",
                     "polling" if self.force_polling else "file events")
            # A folder made between choosing the targets and arming the watch raised no event:
            # look again now that events are flowing (re-arms at once if something moved).
            if not self.refresh(list(self._targets)):
                self._call_catch_up()  # else after the next arming, for the same reason
            batch = await first
            while True:
                self._dispatch(batch)
                batch = await changes.__anext__()
        except StopAsyncIteration:
            return
        finally:
            stop.set()  # the watch thread sees this within STEP_MS
            if not first.done():
                first.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await first
            await changes.aclose()

    def _call_catch_up(self) -> None:
        pending, self._catch_up = self._catch_up, {}
        for client, trigger in sorted(pending.items()):
            self._on_change(client, trigger)

    def _dispatch(self, batch: Iterable[tuple[object, str]]) -> None:
        """Map a burst of (change, path) to clients; call back once per client."""
        by_folder: dict[str, list[str]] = {}
        for client, target in self._targets.items():
            if target is not None:
                by_folder.setdefault(str(target), []).append(client)
        changed: set[str] = set()
        layout: set[str] = set()
        for _change, path in batch:
            folder, name = os.path.split(path)
            for client in by_folder.get(folder, ()):
                if self._targets[client] == self._watched_dir(client):
                    if is_id(name):
                        changed.add(client)
                else:  # a parent is watched: the way down to snapshots/ may have appeared
                    layout.add(client)
            layout.update(by_folder.get(path, ()))  # a watched folder itself vanished
        self.refresh(layout)
        for client in sorted(changed):
            self._on_change(client, "event")

    def _watched_dir(self, client: str) -> Path:
        assert self._repos_dir is not None
        return self._repos_dir / client / self.folder

    @property
    def _noun(self) -> str:
        return "snapshot" if self.folder == "snapshots" else self.folder

    def _restart(self) -> None:
        self._rearm.set()
        if self._stop_current is not None:
            self._stop_current.set()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
