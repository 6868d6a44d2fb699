"""The lock watch's parts (daemon/lockwatch.py) on real folders: which new files count as final,
and which locks as live. The whole path, restic through rclone's endpoint with the daemon, is
in tests/test_copy_during_backup.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.repository import Server, age_file
from triplicate.config.load import load_config
from triplicate.daemon.lockwatch import LockWatch, NewFiles, live_locks, settle_seconds
from triplicate.engine.mirror import MirrorOptions, list_source, mirror
from triplicate.state.replication import BACKUP_TRIGGER
from triplicate.storage.local import LocalBackend


def name(seed: int) -> str:
    return f"{seed:064x}"


def test_a_new_pack_is_final_only_once_it_stopped_growing_and_is_reported_once(tmp_path: Path) -> None:
    old = tmp_path / "data" / "00" / name(1)
    old.parent.mkdir(parents=True)
    old.write_bytes(b"there before the lock")
    (tmp_path / "index").mkdir()
    files = NewFiles(tmp_path)
    files.baseline()
    assert files.poll() == {}, "what was there before is not new"

    pack = tmp_path / "data" / "ab" / name(0xAB)  # in a data/XX folder made during the backup
    pack.parent.mkdir()
    with pack.open("wb") as growing:
        growing.write(b"x" * 1000)
        growing.flush()
        assert files.poll() == {}, "seen for the first time: not final yet"
        assert files.active, "a new file: polls stay frequent"
        growing.write(b"x" * 1000)
        growing.flush()
        assert files.poll() == {}, "still growing"
    assert files.poll() == {pack: 2000}, "the same size as at the poll before: final"
    assert files.poll() == {}, "reported once"
    assert not files.active, "nothing new or growing: polls may slow down"

    index = tmp_path / "index" / name(2)
    index.write_bytes(b"an index")
    empty = tmp_path / "data" / "ab" / name(3)
    empty.touch()  # rclone creates the file before writing to it
    assert files.poll() == {}
    assert files.poll() == {index: 8}, "an empty file is not final"


def test_a_pack_that_vanishes_before_it_is_final_is_forgotten(tmp_path: Path) -> None:
    (tmp_path / "data" / "cd").mkdir(parents=True)
    files = NewFiles(tmp_path)
    files.baseline()
    pack = tmp_path / "data" / "cd" / name(0xCD)
    pack.write_bytes(b"partial")
    assert files.poll() == {}
    pack.unlink()  # an aborted upload
    assert files.poll() == {}
    assert files.poll() == {}


def test_only_recent_locks_are_live(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    assert live_locks(tmp_path, time.time()) == 0, "no locks/ folder yet"
    locks.mkdir()
    (locks / f"{name(5)}-tmp").write_bytes(b"not a lock's name")
    assert live_locks(tmp_path, time.time()) == 0
    stale = locks / name(6)
    stale.write_bytes(b"lock")
    age_file(stale, 31 * 60)  # restic refreshes a lock every 5 minutes; 30 without is stale
    assert live_locks(tmp_path, time.time()) == 0
    (locks / name(7)).write_bytes(b"lock")
    assert live_locks(tmp_path, time.time()) == 1


def test_a_lock_turns_polling_on_new_packs_are_reported_and_polling_ends_with_the_lock(tmp_path: Path) -> None:
    """The watch itself, on a real folder with file events: nothing is polled without a lock; a
    lock starts the polling; a pack that stopped growing is reported; the lock's removal ends it."""
    repos = tmp_path / "repos"
    primary = repos / "alpha"
    (primary / "data").mkdir(parents=True)
    (primary / "index").mkdir()
    reported: list[str] = []

    async def scenario() -> None:
        watch = LockWatch(reported.append, poll_seconds=0.05)
        task = asyncio.create_task(watch.run())
        try:
            watch.set_clients(repos, ["alpha"])
            await until(lambda: watch.watching, "the watch on alpha's repository")
            assert watch.polling == []
            (primary / "locks").mkdir()  # restic makes it with its first lock
            await until(lambda: watch.watching == (str(primary / "locks"),), "the watch to move down to locks/")
            lock = primary / "locks" / name(9)
            lock.write_bytes(b"a backup's lock")
            await until(lambda: watch.polling == ["alpha"], "polling to start")
            pack = primary / "data" / "ef" / name(0xEF)
            pack.parent.mkdir()
            pack.write_bytes(b"a pack")
            await until(lambda: reported == ["alpha"], "the pack to be reported")
            lock.unlink()
            await until(lambda: watch.polling == [], "polling to end with the lock")
        finally:
            watch.stop()
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` on the running loop until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


def test_a_run_during_a_backup_through_rclone_leaves_a_file_still_growing_unread(server: Server) -> None:
    """MirrorOptions.settle (set for runs during a backup through rclone's endpoint): a pack
    written in the last moments is left for a later run, and what may need it waits too;
    once it is older, the next run copies it."""
    config = load_config(server.config_path)
    assert settle_seconds(config, BACKUP_TRIGGER) == 0, "triplicate's endpoint: files land whole"
    rclone = config.model_copy(update={"server": config.server.model_copy(update={"endpoint_program": "rclone"})})
    assert settle_seconds(rclone, BACKUP_TRIGGER) > 0
    assert settle_seconds(rclone, "event") == 0, "the snapshot landed: the backup is over"
    source, replica = LocalBackend(server.primary()), LocalBackend(server.replica("usb"))
    for path in server.primary().rglob("*"):
        if path.is_file():
            age_file(path, 60)  # the backup's files landed a minute ago
    packs = sorted((server.primary() / "data").glob("*/*"))
    packs[0].touch()  # being written now
    options = MirrorOptions(settle=settle_seconds(rclone, BACKUP_TRIGGER))
    result = mirror(source, replica, list_source(source), options)
    copied = {path.name for path in (server.replica("usb") / "data").glob("*/*")}
    assert copied == {pack.name for pack in packs[1:]}
    assert result.files_skipped_in_progress == 1 and result.held_back, "its index and snapshot wait for it"
    age_file(packs[0], 60)
    result = mirror(source, replica, list_source(source), options)
    assert result.complete and packs[0].name in {path.name for path in (server.replica("usb") / "data").glob("*/*")}
