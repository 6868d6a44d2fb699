"""What heal can tell with the client's key: packs no copy holds, and the snapshots a lost file hurts.

Keyless, heal judges the files each copy lists. With ``password_file`` or
``password_command``, restic reads the primary's index (``restic cat index``,
without a lock: it only reads) and says which packs it names; a named pack that
the primary lacks is missing there (healed from a location that holds it, or
lost). For a file no copy holds intact, the snapshots that may need it are found
as the narrow hold-back finds them (:class:`triplicate.actions.holdback.ResticDependents`):
by blob ID from the index, never by reading the lost pack.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from triplicate.actions.holdback import ResticDependents
from triplicate.config.model import Config
from triplicate.execute import CommandFailed, Interrupted, ScopedPool
from triplicate.storage import FileType, Handle, open_primary

log = logging.getLogger("triplicate.heal")

# What restic may raise here besides CommandFailed: output it should not give.
_ODD_OUTPUT = (ValueError, KeyError, TypeError)
# `restic cat index` processes at once: each spends most of its ~0.5 s deriving the key.
INDEX_READERS = 4


@dataclass
class IndexView:
    """The packs the primary's readable index files name, and the index files restic could not read."""

    packs: dict[str, dict[str, Any]] = field(default_factory=dict)  # pack ID -> its entry (with its blobs)
    unreadable: dict[str, str] = field(default_factory=dict)  # index ID -> restic's error
    by_index: dict[str, frozenset[str]] = field(default_factory=dict)  # index ID -> the packs it names


@dataclass(frozen=True)
class Needing:
    """The snapshots that may need a lost file: IDs (None when restic could not tell) and why."""

    snapshots: list[str] | None
    note: str | None = None


class LossFinder:
    """One client's primary read by restic with its key; answers are remembered for one heal."""

    def __init__(self, config: Config, client: str, index_files: Iterable[str]) -> None:
        self.dependents = ResticDependents(config, client)
        self.index_files = sorted(index_files)  # the primary's
        self.view: IndexView | None = None

    def read_index(self) -> IndexView:
        """Decrypt each index file once (one ``restic cat index`` each, a few at once); one that
        cannot be read is noted, the others still count. Raises Interrupted when the daemon stops."""
        if self.view is not None:
            return self.view

        def read(index: str) -> dict[str, dict[str, Any]] | str:
            try:
                return self.dependents.index_packs([index])[index]
            except Interrupted:
                raise
            except (CommandFailed, *_ODD_OUTPUT) as error:
                return str(error)

        view = IndexView()
        workers = max(1, min(INDEX_READERS, os.cpu_count() or 1, len(self.index_files)))
        with ScopedPool(max_workers=workers, thread_name_prefix="heal-index") as pool:
            for index, outcome in zip(self.index_files, pool.map(read, self.index_files), strict=True):
                if isinstance(outcome, str):
                    view.unreadable[index] = outcome
                else:
                    view.packs.update(outcome)
                    view.by_index[index] = frozenset(outcome)
        self.view = view
        return view

    def needing(self, handle: Handle) -> Needing:
        """The snapshots that may need ``handle`` (lost everywhere). Never raises but Interrupted."""
        if handle.type is FileType.SNAPSHOT:
            return Needing([handle.name], "the snapshot file itself")
        if handle.type is FileType.INDEX:
            return Needing([], "an index file: the packs it names still hold the data "
                               "(rebuild the index with restic rebuild-index)")
        if handle.type is FileType.KEY:
            return Needing([], "a key file: another key may still open the repository")
        try:
            view = self.read_index()
            entry = view.packs.get(handle.name)
            if entry is None:
                note = "no readable index names this pack: no snapshot needs it, unless it is in an unreadable index"
                return Needing([] if not view.unreadable else None, note)
            blobs = list(entry.get("blobs", []))
            if any(blob.get("type") == "tree" for blob in blobs):
                # restic would have to read the lost trees to walk below them: every snapshot may need them.
                every = sorted(str(snapshot["id"]) for snapshot in self.dependents.snapshots())
                return Needing(every, "the pack holds directory trees: any snapshot may need it")
            return Needing(sorted(self.dependents.snapshots_using(blobs)))
        except Interrupted:
            raise
        except (CommandFailed, *_ODD_OUTPUT) as error:
            log.warning("%s: restic could not tell which snapshots need %s: %s", self.dependents.client,
                        handle.relative_path(), error)
            return Needing(None, f"restic could not tell: {error}")


def packs_missing_at_primary(config: Config, client: str, known: dict[str, frozenset[str]]) -> set[str]:
    """The packs the primary's index names that the primary lacks (``data/ab/<id>`` paths): lost
    from its disk, since a prune removes a pack from the index before the pack itself.

    ``known`` (index ID -> the packs it names) is the caller's memory across calls, updated
    here: an index file never changes (named by its content), so restic reads only the new
    ones, with the client's key. Raises StorageError when the primary cannot be listed,
    Interrupted when the daemon stops."""
    primary = open_primary(config, client)
    listed = {info.name for info in primary.list(FileType.DATA)}
    index_files = {info.name for info in primary.list(FileType.INDEX)}
    for gone in known.keys() - index_files:
        del known[gone]
    known.update(LossFinder(config, client, index_files - known.keys()).read_index().by_index)
    named = set().union(*known.values()) if known else set()
    return {Handle(FileType.DATA, pack).relative_path() for pack in named - listed}
