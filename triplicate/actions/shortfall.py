"""What each location really holds, against the primary: names only, cheap.

The daemon trusts what it sees, not what it remembers: on start and on every
rescan it lists each location's files (names only) and compares them with the
primary's. The snapshots found there are recorded as the location's state (so
``status`` and the metrics show it as last listed), and any shortfall (files or
snapshots the primary has and the location lacks, lost ones above all) asks for
a run that refills it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from triplicate.config.model import Config
from triplicate.engine.mirror import PHASES, SourceListing, list_source
from triplicate.state.locks import LockBusy, location_lock
from triplicate.state.replication import ReplicationState
from triplicate.storage import FileType, Handle, StorageError, open_location, open_primary
from triplicate.storage.backend import NoRepository

log = logging.getLogger("triplicate.shortfall")

# A primary file counts as lost at a location when it was older than this at the start
# of the location's last clean run (a file renamed into place meanwhile was not listed).
LISTING_MARGIN_SECONDS = 60.0


@dataclass
class Shortfall:
    """One location's listing compared with the primary's."""

    location: str
    snapshots: int = 0  # snapshot files there now
    missing_snapshots: int = 0  # the primary's snapshots it lacks
    missing_files: int = 0  # the primary's files of any type it lacks
    # Snapshots recorded there before and gone now (and still in the primary).
    lost_snapshots: list[str] = field(default_factory=list)
    lost_files: int = 0  # files that were there after its last clean run and are gone
    emptied: bool = False  # the client's folder there is gone (while it had snapshots)
    unreadable: str | None = None  # why it could not be listed (a run then fails and records why)

    @property
    def needs_run(self) -> bool:
        return bool(self.missing_files or self.missing_snapshots or self.unreadable)

    @property
    def lost(self) -> str | None:
        """The loss in words ("lost 11 snapshots"), None when nothing was lost."""
        if self.lost_snapshots:
            what = f"lost {_count(len(self.lost_snapshots), 'snapshot')}"
            return what + (" (its folder is gone)" if self.emptied else "")
        if self.lost_files:
            return f"lost {_count(self.lost_files, 'file')}"
        return None


def look_at_locations(config: Config, client: str, locations: list[str]) -> dict[str, Shortfall]:
    """List ``client``'s primary and each of ``locations`` (names only) and compare.

    Records the snapshots found at each location as its state. A location being
    written by a run (its lock is held) is left out; one that cannot be listed is
    returned ``unreadable``, needing a run (the daemon asks for it when a second look
    agrees), which fails and records why (so it shows down even when no backup
    comes). Never raises StorageError: an unreadable primary gives no answer at all.
    """
    primary = open_primary(config, client)
    try:
        primary.prepare(create=False)
        listing = list_source(primary)
    except StorageError as error:
        log.debug("%s: primary not listed: %s", client, error)
        return {}
    finally:
        primary.close()
    found = {}
    with ReplicationState.opened(config.server.state_dir) as state:
        for location in locations:
            try:
                with location_lock(config.server.state_dir, client, location, wait=False):
                    shortfall = _look(config, state, client, location, listing)
            except LockBusy:
                continue
            found[location] = shortfall
    return found


def _look(config: Config, state: ReplicationState, client: str, location: str,
          listing: SourceListing) -> Shortfall:
    replica = open_location(config, location, client)
    try:
        try:
            replica.prepare(create=False)
            present = {file_type: {info.name for info in replica.list(file_type)} for file_type in PHASES}
            emptied = False
        except NoRepository:
            present = {file_type: set() for file_type in PHASES}
            emptied = True
    except StorageError as error:  # unreachable: a run fails and records why
        log.debug("%s -> %s: not listed: %s", client, location, error)
        return Shortfall(location, unreadable=str(error))
    finally:
        replica.close()
    now = time.time()
    primary_snapshots = listing.snapshot_ids
    known = set(state.known_snapshots(client, location))
    shortfall = Shortfall(location, snapshots=len(present[FileType.SNAPSHOT]))
    shortfall.lost_snapshots = sorted((known - present[FileType.SNAPSHOT]) & primary_snapshots)
    shortfall.emptied = emptied and bool(known)
    unsettled = {row.path for row in state.unsettled_files(client)}  # the runs know, and fail on them
    shortfall.missing_snapshots = len({name for name in primary_snapshots - present[FileType.SNAPSHOT]
                                       if f"snapshots/{name}" not in unsettled})
    missing = [(file_type, name) for file_type in PHASES
               for name in listing.files[file_type].keys() - present[file_type]
               if Handle(file_type, name).relative_path() not in unsettled]
    shortfall.missing_files = len(missing)
    clean_since = state.last_clean_run_start(client, location)
    if missing and clean_since is not None and not unsettled:
        cutoff = clean_since - LISTING_MARGIN_SECONDS
        shortfall.lost_files = sum(1 for file_type, name in missing
                                   if (listing.files[file_type][name].mtime or now) < cutoff)
    if emptied and not known:
        return shortfall  # nothing replicated here yet: no state to record
    state.record_snapshots(client, location, present[FileType.SNAPSHOT], now)
    return shortfall


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
