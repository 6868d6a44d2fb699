"""Copy during the backup without announcements: a watch on ``locks/``, polling while one is held.

``rclone serve restic`` (``endpoint_program = "rclone"``) tells nobody when a pack
lands, and writes each file in place under its final name. restic holds a lock
file in ``locks/`` for the whole of a backup, so the daemon watches every served
client's ``locks/`` (a :class:`SnapshotWatcher` on that folder: one inotify watch
per client, nothing in ``data/``) and, while a live lock is there, polls ``data/``
and ``index/`` every :data:`POLL_SECONDS` for new files. A poll is cheap: a stat of
``data/``, ``index/`` and each ``data/XX`` folder, a listing only of the folders whose
time changed (a file was added), and a stat of each new file not yet whole.

A new file is taken as final once its size stayed the same over one poll: the
daemon does not hash it (the run that copies it does, and a file that still does
not hash to its name is left for a later run, as the mirror always does), but it
never asks for a run for a file still growing. Each poll that finds final files
calls ``on_final(client)``, which asks each location for a run with the trigger
``backup``, as an announcement from triplicate's endpoint does. Polling stops when
the last live lock goes (a lock older than restic's 30 minutes is stale and does
not count).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from triplicate.config.model import Config
from triplicate.daemon.watcher import SnapshotWatcher
from triplicate.engine.mirror import STALE_LOCK_SECONDS
from triplicate.state.replication import BACKUP_TRIGGER
from triplicate.storage.handle import is_id
from triplicate.storage.local import lock_times

log = logging.getLogger("triplicate.daemon")

# How often data/ and index/ are looked at while a lock is held and files arrive; after a poll
# that saw nothing new or growing the pause grows by half, up to QUIET_POLL_SECONDS (restic
# scanning unchanged files for a long time, or a lock left behind by a killed restic).
POLL_SECONDS = 0.5
QUIET_POLL_SECONDS = 5.0
# A folder changed less than this long ago is listed again even if its time did not move (file
# systems with coarse timestamps give a file added in the same tick the same folder time).
RECENT_SECONDS = 1.0
# A run during a backup through rclone does not read a file written less than this long ago: it
# is growing. Below POLL_SECONDS, which a file reported final has been unchanged for at least.
SETTLE_SECONDS = 0.4


def settle_seconds(config: Config, trigger: str) -> float:
    """``MirrorOptions.settle`` for a run: during a backup through rclone's endpoint, files
    written in the last poll are left alone (the lock watch asks for a run for each file only
    once its size stayed the same over a poll); 0 otherwise."""
    if trigger == BACKUP_TRIGGER and config.server.endpoint_program == "rclone":
        return SETTLE_SECONDS
    return 0.0


def live_locks(primary: Path, now: float) -> int:
    """How many lock files in ``primary/locks`` are live (younger than restic's stale age)."""
    return sum(1 for made in lock_times(primary) if now - made < STALE_LOCK_SECONDS)


class NewFiles:
    """The new pack and index files of one repository, each reported once it stops growing.

    :meth:`baseline` records what is there; each :meth:`poll` after returns the
    files that appeared since and kept their size since the poll before.
    """

    def __init__(self, primary: Path) -> None:
        self.primary = primary
        self._folder_times: dict[Path, int] = {}
        self._known: set[Path] = set()  # reported, or there at the baseline
        self._growing: dict[Path, int] = {}  # new files not yet final -> size at the last poll
        self._subfolders: list[Path] = []  # data/XX
        self.active = False

    def baseline(self) -> None:
        """Take every file there now as known."""
        self._known = set(self._scan())
        self._growing = {}

    def poll(self) -> dict[Path, int]:
        """The new files that are final now (path -> size): listed before, same size since.
        Sets :attr:`active`: whether this poll saw a file appear or grow."""
        self.active = False
        for path in self._scan():
            if path not in self._known and path not in self._growing:
                self._growing[path] = -1  # seen for the first time: final at the earliest next poll
        final: dict[Path, int] = {}
        for path, size_before in list(self._growing.items()):
            try:
                size = path.stat().st_size
            except OSError:  # gone (a prune, an aborted upload): forget it
                del self._growing[path]
                continue
            if size == size_before and size > 0:
                final[path] = size
                del self._growing[path]
                self._known.add(path)
            else:
                self._growing[path] = size
                self.active = True
        return final

    def _scan(self) -> list[Path]:
        """The id-named files of the folders whose time changed since the last scan."""
        found: list[Path] = []
        data = self.primary / "data"
        folders = [self.primary / "index", *self._changed_subfolders(data)]
        for folder in folders:
            if not self._changed(folder):
                continue
            try:
                with os.scandir(folder) as entries:
                    found += [Path(entry.path) for entry in entries
                              if is_id(entry.name) and entry.is_file(follow_symlinks=False)]
            except OSError:
                continue
        return found

    def _changed_subfolders(self, data: Path) -> list[Path]:
        """data/'s XX folders; listed afresh only when data/ itself changed (one was made)."""
        if self._changed(data):
            try:
                with os.scandir(data) as entries:
                    self._subfolders = sorted(Path(entry.path) for entry in entries
                                              if entry.is_dir(follow_symlinks=False))
            except OSError:
                self._subfolders = []
        return self._subfolders

    def _changed(self, folder: Path) -> bool:
        """Whether ``folder`` may hold a file not listed yet: its modification time moved since
        the last look (recorded now, before the folder is listed: a file added meanwhile moves
        it again), or is so recent that a file added in the same clock tick would not move it."""
        try:
            stamp = folder.stat().st_mtime_ns
        except OSError:
            self._folder_times.pop(folder, None)
            return False
        if self._folder_times.get(folder) == stamp and time.time() - stamp / 1e9 > RECENT_SECONDS:
            return False
        self._folder_times[folder] = stamp
        return True


class LockWatch:
    """Calls ``on_final(client)`` whenever new pack or index files of a client became final
    while the client holds a restic lock. Runs on the event loop (:meth:`run`)."""

    def __init__(self, on_final: Callable[[str], None], poll_seconds: float = POLL_SECONDS,
                 force_polling: bool = False) -> None:
        self._on_final = on_final
        self.poll_seconds = poll_seconds
        self._watcher = SnapshotWatcher(self._lock_changed, force_polling=force_polling, folder="locks")
        self._repos_dir: Path | None = None
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def set_clients(self, repos_dir: Path, clients: list[str]) -> None:
        """Watch the locks of exactly ``clients`` (none: watch nothing)."""
        self._repos_dir = repos_dir
        for client in [client for client in self._pollers if client not in clients]:
            self._pollers.pop(client).cancel()
        self._watcher.set_clients(repos_dir, clients)

    @property
    def watching(self) -> tuple[str, ...]:
        """The folders watched now: each client's locks/, or its nearest existing parent."""
        return self._watcher.watching

    @property
    def polling(self) -> list[str]:
        """The clients whose data/ and index/ are being polled now (a lock is held)."""
        return sorted(client for client, task in self._pollers.items() if not task.done())

    async def run(self) -> None:
        """Watch until :meth:`stop`."""
        await self._watcher.run()

    def stop(self) -> None:
        """Stop watching and polling."""
        self._stopping = True
        self._watcher.stop()
        for task in self._pollers.values():
            task.cancel()

    def _lock_changed(self, client: str, trigger: str) -> None:
        """A change in ``client``'s locks/ (or its watch was armed): poll while a lock is live."""
        if self._stopping or self._repos_dir is None:
            return
        running = self._pollers.get(client)
        if running is not None and not running.done():
            return
        if live_locks(self._repos_dir / client, time.time()):
            self._pollers[client] = asyncio.get_running_loop().create_task(
                self._poll(client, self._repos_dir / client), name=f"lock poll {client}")

    async def _poll(self, client: str, primary: Path) -> None:
        log.info("%s: the repository is locked (a backup?); looking for new packs every %gs",
                 client, self.poll_seconds)
        files = NewFiles(primary)
        reported = 0
        await asyncio.to_thread(files.baseline)
        pause = self.poll_seconds
        while not self._stopping:
            await asyncio.sleep(pause)
            final = await asyncio.to_thread(files.poll)
            pause = self.poll_seconds if files.active else min(pause * 1.5, max(QUIET_POLL_SECONDS, pause))
            if final:
                reported += len(final)
                self._on_final(client)
            if not live_locks(primary, time.time()):
                break
        log.info("%s: the repository is unlocked; %d new file(s) were sent to the locations as they "
                 "landed", client, reported)
