"""Narrow hold-back: with the client's key, ask restic what really needs a bad pack.

Keyless, a pack that could not be copied (corrupt, being written, gone) holds back
every new index and snapshot. With ``password_file``/``password_command`` the
primary can be read: the new index files that name the pack are held back, and
so are the snapshots that need a blob of any pack those index files name (the
replica would have no index for them; found by blob ID with ``restic find --blob``
and ``--tree``, which read the index, not the bad packs); every other index and
snapshot is copied. A bad pack that holds trees holds back every new snapshot
(restic could not walk them).
A bad pack no index names holds back nothing. restic runs without a lock (it
only reads) through :mod:`triplicate.restic`; what it cannot tell falls back to
the keyless rule.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from triplicate import restic
from triplicate.actions.repository import restic_repository
from triplicate.config.model import Config
from triplicate.engine.mirror import HoldBack
from triplicate.execute import CommandFailed, Interrupted

log = logging.getLogger("triplicate.sync")

# Blob IDs per `restic find` call (argv stays well under its limit).
FIND_BATCH = 1000
# Answers remembered per process: a daemon asks again each run while a pack stays bad.
CACHE_SIZE = 64
TIMEOUT_SECONDS = 120.0

_cache: OrderedDict[tuple[str, frozenset[str], frozenset[str], frozenset[str]], HoldBack | None] = OrderedDict()
_cache_lock = threading.Lock()


class ResticDependents:
    """:class:`triplicate.engine.mirror.Dependents` for one client's primary, with its key."""

    def __init__(self, config: Config, client: str) -> None:
        self.client = client
        self.env = restic_repository(config, client, None).environment

    def __call__(self, packs: frozenset[str], new_index: list[str], new_snapshots: list[str]) -> HoldBack | None:
        """What ``packs`` hold back; None when restic cannot tell (the keyless rule then applies).

        Remembered for the same packs, new index files and new snapshots (a new snapshot
        may need the packs too: it is asked about afresh).
        """
        key = (self.client, packs, frozenset(new_index), frozenset(new_snapshots))
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
        try:
            answer = self._ask(packs, new_index, frozenset(new_snapshots))
        except Interrupted:  # the daemon is stopping: hold back everything, remember nothing
            return None
        except (CommandFailed, ValueError, KeyError, TypeError) as error:
            log.warning("%s: restic could not tell what the unsettled pack(s) hold back (%s); holding back "
                        "every new index and snapshot", self.client, error)
            answer = None
        with _cache_lock:
            _cache[key] = answer
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
        return answer

    def _ask(self, packs: frozenset[str], new_index: list[str], new_snapshots: frozenset[str]) -> HoldBack:
        named = self.index_packs(new_index)
        held = frozenset(index for index, by_id in named.items() if packs & by_id.keys())
        if not held:
            return HoldBack(frozenset(), frozenset())  # no new index names them: nothing needs them
        blobs = [blob for index in held for pack in named[index].values() for blob in pack.get("blobs", [])]
        if any(blob.get("type") == "tree" for index in held for pack_id, pack in named[index].items()
               if pack_id in packs for blob in pack.get("blobs", [])):
            # A bad pack holds trees: restic could not walk the snapshots (it would retry reading
            # them for minutes), and any new snapshot may need them.
            return HoldBack(held, None)
        return HoldBack(held, frozenset(self.snapshots_using(blobs)) & new_snapshots)

    def index_packs(self, index_files: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Index file -> {pack ID: its entry, with its blobs}, as ``restic cat index`` decrypts each.

        Raises CommandFailed (an index restic cannot read), Interrupted, or ValueError,
        KeyError, TypeError on output restic should not give.
        """
        return {index: {str(pack["id"]): pack for pack in self._json(["cat", "index", index]).get("packs", [])}
                for index in index_files}

    def snapshots_using(self, blobs: Iterable[dict[str, Any]]) -> set[str]:
        """The snapshots that need any of ``blobs`` (index entries: "id" and "type"), found by blob ID
        in the index and the trees: restic never reads the packs that hold the blobs themselves,
        except a tree's (to walk into it). Raises as :meth:`index_packs`."""
        entries = list(blobs)
        data = sorted({str(blob["id"]) for blob in entries if blob.get("type") == "data"})
        trees = sorted({str(blob["id"]) for blob in entries if blob.get("type") == "tree"})
        snapshots: set[str] = set()
        # By blob ID, from the index: restic's `find --pack` would read the (bad) packs themselves.
        for start in range(0, len(data), FIND_BATCH):
            snapshots |= self._found(["find", "--json", "--blob", *data[start:start + FIND_BATCH]])
        if trees:
            # Sub-trees (`find --tree`), and the snapshots whose root tree is one of them.
            for start in range(0, len(trees), FIND_BATCH):
                snapshots |= self._found(["find", "--json", "--tree", *trees[start:start + FIND_BATCH]])
            wanted = set(trees)
            snapshots |= {str(snapshot["id"]) for snapshot in self.snapshots() if snapshot.get("tree") in wanted}
        return snapshots

    def snapshots(self) -> list[dict[str, Any]]:
        """``restic snapshots --json``. Raises as :meth:`index_packs`."""
        listed = json.loads(self._run(["snapshots", "--json"]) or "[]") or []
        if not isinstance(listed, list):
            raise ValueError("restic snapshots: unexpected output")
        return listed

    def _found(self, args: list[str]) -> set[str]:
        """The snapshots `restic find --json` matched in."""
        return {str(match["snapshot"]) for match in json.loads(self._run(args) or "[]") or []}

    def _json(self, args: list[str]) -> dict[str, Any]:
        value = json.loads(self._run(args))
        if not isinstance(value, dict):
            raise ValueError(f"restic {args[0]}: unexpected output")
        return value

    def _run(self, args: list[str]) -> str:
        result = restic.restic_run(args, self.env, lock=False, timeout=TIMEOUT_SECONDS)
        stderr = result.stderr.decode("utf-8", "replace")
        if result.returncode != 0:
            raise CommandFailed(f"restic {args[0]}: {restic.error_summary(stderr)}")
        return result.stdout.decode("utf-8", "replace")

