"""``triplicate restore-check``: prove that every location can give the client's files back.

For one snapshot, a sample of files (weighted so that large and small files are
both drawn, plus every canary) is restored with the real ``restic restore
--verify`` from each location into a private temporary folder, then checked:
present, the size the snapshot lists, the same content hash at every location,
and the canaries hold. Each location's outcome is recorded in the state database.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from triplicate.actions.repository import restic_repository
from triplicate.config.model import Canary, Config
from triplicate.errors import CannotRun, UsageError
from triplicate.execute import ScopedPool
from triplicate.fsutil import make_private_folder, remove_stale_folders, remove_tree, sha256_of
from triplicate.restic import error_summary, key_problem, parse_ls, restic_run, restore_arguments, restore_errors
from triplicate.state.db import PRIMARY
from triplicate.state.restore_check import RestoreCheckRecord, RestoreCheckState
from triplicate.storage import FileType, StorageError, open_location, open_primary

TEMPORARY_PREFIX = "restore-check-"  # the temporary folders of restore checks, under state_dir/tmp
SNAPSHOT_ARGUMENT = re.compile(r"latest|[0-9a-f]{4,64}")
KEY_FAILURE = "cannot open repository with the configured key (wrong password?)"
# Listing a repository never takes long; a restore may take hours, so it has no limit.
LISTING_TIMEOUT = 1800.0


class RestoreCheckUnavailable(CannotRun):
    """The check could not run at all (no key, wrong key, no common snapshot): exit status 3."""


@dataclass(frozen=True)
class SnapshotFile:
    path: str
    size: int


@dataclass(frozen=True)
class Failure:
    path: str | None  # None: the whole location (it could not be opened or restored from)
    reason: str


@dataclass
class LocationCheck:
    location: str
    snapshot: str | None = None
    files_checked: int = 0
    bytes_restored: int = 0
    seconds: float = 0.0  # the restore plus the time spent hashing its files
    restore_seconds: float = 0.0  # the `restic restore --verify` alone
    snapshot_bytes: int = 0
    failures: list[Failure] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the restored file
    previous_ok: bool | None = None  # the location's previous check (None: first): failure or recovery?

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def throughput(self) -> float | None:
        """Bytes per second of the restore (None when nothing was restored)."""
        if self.bytes_restored <= 0 or self.restore_seconds <= 0:
            return None
        return self.bytes_restored / self.restore_seconds

    @property
    def estimated_full_restore_seconds(self) -> float | None:
        """The whole snapshot's size at the measured throughput: an estimate, not a measurement."""
        throughput = self.throughput
        return None if throughput is None else self.snapshot_bytes / throughput

    def to_json(self) -> dict[str, object]:
        estimate = self.estimated_full_restore_seconds
        return {
            "ok": self.ok,
            "snapshot": self.snapshot,
            "files_checked": self.files_checked,
            "bytes_restored": self.bytes_restored,
            "seconds": round(self.seconds, 3),
            "restore_seconds": round(self.restore_seconds, 3),
            "throughput_bytes_per_second": None if self.throughput is None else round(self.throughput),
            "estimated_full_restore_seconds": None if estimate is None else round(estimate, 1),
            "failures": [{"path": failure.path, "reason": failure.reason} for failure in self.failures],
        }


@dataclass
class RestoreCheckReport:
    client: str
    snapshot: dict[str, Any]  # restic's snapshot object (id, time, paths, hostname...)
    snapshot_files: int
    snapshot_bytes: int
    sample: list[SnapshotFile]
    locations: dict[str, LocationCheck]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.locations.values())

    def to_json(self) -> dict[str, object]:
        return {
            "client": self.client,
            "ok": self.ok,
            "snapshot": self.snapshot.get("id"),
            "snapshot_time": self.snapshot.get("time"),
            "snapshot_files": self.snapshot_files,
            "snapshot_bytes": self.snapshot_bytes,
            "sample": [{"path": item.path, "size": item.size} for item in self.sample],
            "locations": {name: result.to_json() for name, result in self.locations.items()},
        }


@dataclass(frozen=True)
class _Opened:
    """How restic reaches one location, with the key."""

    name: str
    env: dict[str, str]
    secrets: list[str]
    lock: bool


def select_locations(config: Config, client: str, requested: list[str] | tuple[str, ...]) -> list[str]:
    """The primary ('@primary') and the client's locations, or the requested subset, in that order.

    ``primary`` names the primary unless a location has that name. Raises UsageError for a stranger.
    """
    configured = config.client(client).replicate_to
    if not requested:
        return [PRIMARY, *configured]
    chosen = []
    for name in requested:
        if name == PRIMARY or (name == "primary" and name not in configured):
            name = PRIMARY
        elif name not in configured:
            raise UsageError(f"--location {name}: not a location of client '{client}' (its locations: "
                             f"primary, {', '.join(configured) or 'no replicas'})")
        if name not in chosen:
            chosen.append(name)
    return sorted(chosen, key=lambda name: -1 if name == PRIMARY else configured.index(name))


def run_restore_check(config: Config, client: str, locations: list[str], files: int | None = None,
                      snapshot: str | None = None, *, rng: random.Random | None = None) -> RestoreCheckReport:
    """Restore a sample of ``client``'s files from each of ``locations`` and check them; record and report.

    ``locations`` as from :func:`select_locations`; ``files`` defaults to the client's
    ``restore_check.files``; ``snapshot`` is an ID, ``"latest"`` (the first location's
    newest), or None (the newest snapshot every location has). Safe to call from a
    thread: it shares nothing and installs no signal handler. A location that fails
    never stops the others. Raises RestoreCheckUnavailable (exit 3) when it cannot run:
    no key, the key opens no location, no common snapshot, no room for the sample.
    """
    settings = config.client(client)
    count = settings.restore_check.files if files is None else files
    if count < 0:
        raise UsageError(f"--files {count}: must be 0 or more")
    if count == 0 and not settings.restore_check.canaries:
        raise UsageError(f"--files 0: client '{client}' has no canaries either: nothing to check")
    if snapshot is not None and not SNAPSHOT_ARGUMENT.fullmatch(snapshot):
        raise UsageError(f"--snapshot {snapshot}: expected 'latest' or a snapshot ID (at least 4 hex digits)")
    if settings.password_file is None and settings.password_command is None:
        raise RestoreCheckUnavailable(
            f"client '{client}' has no key for restore checks: set password_file or password_command "
            f"in [clients.{client}] (see docs/restore-check.md); 'triplicate audit' checks without a key")
    results = {name: LocationCheck(name) for name in locations}
    opened = [location for name in locations if (location := _open(config, client, name, results[name]))]
    temporary_parent = config.server.state_dir / "tmp"
    remove_stale_folders(temporary_parent, TEMPORARY_PREFIX)

    info, nodes = _choose_snapshot(snapshot, opened, results, functools.partial(_snapshot_names, config, client))
    usable = [location for location in opened if results[location.name].ok]
    listing = [SnapshotFile(node["path"], int(node.get("size", 0))) for node in nodes if node["type"] == "file"]
    snapshot_bytes = sum(item.size for item in listing)
    canaries = settings.restore_check.canaries
    sample = choose_files(listing, count, [canary.path for canary in canaries], rng or random.Random())
    if not sample and not canaries:
        raise RestoreCheckUnavailable(f"snapshot {str(info['id'])[:8]} has no file to restore")
    _ensure_room(temporary_parent, sample)

    snapshot_id = str(info["id"])
    for result in results.values():
        result.snapshot, result.snapshot_bytes = snapshot_id, snapshot_bytes
    # Hashes serve the comparison across locations and the canaries' sha256; with one
    # location, restic's --verify has already compared every byte with the snapshot.
    to_hash = {item.path for item in sample} if len(usable) > 1 else {c.path for c in canaries if c.sha256}
    if sample:  # (without --include, restic would restore the whole snapshot)
        _restore_and_check(usable, snapshot_id, sample, to_hash, temporary_parent, results)
    by_path = {item.path: item for item in listing}
    for canary in canaries:
        _check_canary(canary, by_path.get(canary.path), [results[location.name] for location in usable])
    compare_across_locations(sample, [results[location.name] for location in usable])
    _record(config, client, results)
    return RestoreCheckReport(client, info, len(listing), snapshot_bytes, sample, results)


def _open(config: Config, client: str, name: str, result: LocationCheck) -> _Opened | None:
    """How restic reaches ``name``, with the key; None (and a failure in ``result``) when it cannot."""
    try:
        repository = restic_repository(config, client, None if name == PRIMARY else name)
    except StorageError as error:
        result.failures.append(Failure(None, f"cannot open repository: {error}"))
        return None
    return _Opened(name, repository.environment, repository.secrets, repository.lock)


def _choose_snapshot(requested: str | None, opened: list[_Opened], results: dict[str, LocationCheck],
                     snapshot_names: Callable[[str], set[str] | None]
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """restic's snapshot object and listing (``ls --json``) of the snapshot to check.

    ``requested`` None means the newest snapshot that every location has. A snapshot ID
    names the same tree everywhere, so one listing serves every location. Locations that
    cannot be opened get their failure in ``results``.
    """
    if requested is not None or len(opened) <= 1:
        return _list_snapshot(requested or "latest", opened, results)
    # Usually the first location's newest snapshot is everywhere: list it while the other
    # locations' snapshot IDs are read keyless, from their snapshots/ folders (a restic
    # command there would spend most of a second deriving the key).
    first, others = opened[0], opened[1:]
    with ScopedPool(max_workers=len(opened), thread_name_prefix="restore-check") as pool:
        first_listing = pool.submit(_list, first, "latest", results[first.name])
        keyless = list(pool.map(lambda other: snapshot_names(other.name), others))
    listing = first_listing.result()
    if listing is not None and all(names is not None and listing[0]["id"] in names for names in keyless):
        return listing
    # Not everywhere (or not readable): find the newest common one with restic at each location.
    readable = [location for location in opened if results[location.name].ok]
    with ScopedPool(max_workers=max(1, len(readable)), thread_name_prefix="restore-check") as pool:
        found = dict(zip([location.name for location in readable],
                         pool.map(lambda location: _snapshot_ids(location, results[location.name]), readable),
                         strict=True))
    _raise_when_key_opens_nothing(results)
    return _list_snapshot(_newest_common(found, results), opened, results)


def _snapshot_names(config: Config, client: str, location: str) -> set[str] | None:
    """The snapshot IDs at ``location``, read keyless from its file names; None when unreadable."""
    backend = open_primary(config, client) if location == PRIMARY else open_location(config, location, client)
    try:
        return {info.name for info in backend.list(FileType.SNAPSHOT)}
    except StorageError:
        return None
    finally:
        backend.close()


def _snapshot_ids(location: _Opened, result: LocationCheck) -> dict[str, datetime] | None:
    """Snapshot ID -> time at ``location``; None (and a failure in ``result``) when it cannot be opened."""
    outcome = restic_run(["snapshots", "--json"], location.env, lock=location.lock, secrets=location.secrets,
                         timeout=LISTING_TIMEOUT)
    if outcome.returncode != 0:
        _fail_opening(result, outcome.stderr.decode("utf-8", "replace"))
        return None
    snapshots = json.loads(outcome.text or "[]")
    return {str(item["id"]): datetime.fromisoformat(str(item["time"])) for item in snapshots}


def _newest_common(present: dict[str, dict[str, datetime] | None], results: dict[str, LocationCheck]) -> str:
    """The newest snapshot ID in every listing of ``present``; raises RestoreCheckUnavailable when none."""
    listings = {name: ids for name, ids in present.items() if ids is not None}
    if not listings:
        raise RestoreCheckUnavailable(f"no location could be opened: {_problems(results)}")
    common = set.intersection(*(set(ids) for ids in listings.values()))
    if not common:
        counts = ", ".join(f"{display_name(name)} {len(ids)}" for name, ids in listings.items())
        raise RestoreCheckUnavailable(f"no snapshot that every location has (snapshots: {counts}); "
                                      "run 'triplicate sync' first or choose one with --snapshot")
    times = next(iter(listings.values()))
    return max(common, key=lambda snapshot: (times[snapshot], snapshot))


def _list(location: _Opened, snapshot: str, result: LocationCheck
          ) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """``restic ls --json`` of ``snapshot`` at ``location``: the snapshot object and its nodes.

    None when the snapshot is not there, or when the location cannot be opened (then
    with a failure in ``result``).
    """
    outcome = restic_run(["ls", snapshot, "--json"], location.env, lock=location.lock,
                         secrets=location.secrets, timeout=LISTING_TIMEOUT)
    if outcome.returncode != 0:
        _fail_opening(result, outcome.stderr.decode("utf-8", "replace"))
        return None
    info, nodes = parse_ls(outcome.text)
    return None if info is None else (info, nodes)


def _list_snapshot(chosen: str, opened: list[_Opened], results: dict[str, LocationCheck]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The listing of ``chosen`` from the first location that can give it.

    Raises RestoreCheckUnavailable when none can: the key opens nothing, the snapshot
    is nowhere, or no location can be opened.
    """
    not_found = []
    for location in opened:
        if not results[location.name].ok:
            continue
        listing = _list(location, chosen, results[location.name])
        if listing is not None:
            return listing
        if results[location.name].ok:
            not_found.append(location.name)
    _raise_when_key_opens_nothing(results)
    if not_found:
        where = ", ".join(map(display_name, not_found))
        raise RestoreCheckUnavailable(f"snapshot '{chosen}' not found at {where}")
    raise RestoreCheckUnavailable(f"no location could list snapshot '{chosen}': {_problems(results)}")


def _problems(results: dict[str, LocationCheck]) -> str:
    return "; ".join(f"{display_name(name)}: {result.failures[0].reason}"
                     for name, result in results.items() if result.failures)


def _fail_opening(result: LocationCheck, stderr: str) -> None:
    reason = KEY_FAILURE if key_problem(stderr) else f"cannot open repository: {error_summary(stderr)}"
    result.failures.append(Failure(None, reason))


def _raise_when_key_opens_nothing(results: dict[str, LocationCheck]) -> None:
    reasons = [result.failures[0].reason if result.failures else None for result in results.values()]
    if reasons and all(reason == KEY_FAILURE for reason in reasons):
        raise RestoreCheckUnavailable(KEY_FAILURE.replace("repository", "any repository", 1)
                                      + " (see docs/restore-check.md)")


def choose_files(listing: list[SnapshotFile], count: int, canaries: list[str],
                  rng: random.Random) -> list[SnapshotFile]:
    """The canaries present in ``listing`` plus ``count`` other files, sorted by path.

    Half (rounded up) are drawn with probability proportional to size, without
    replacement, so the files that hold most of the data are tested; the rest
    uniformly from what is left, so the many small files are tested too.
    """
    wanted = set(canaries)
    chosen = [item for item in listing if item.path in wanted]
    pool = [item for item in listing if item.path not in wanted]
    count = min(count, len(pool))
    # Efraimidis-Spirakis: the largest keys u^(1/size) are a size-weighted sample without replacement.
    weighted = sorted((item for item in pool if item.size > 0), reverse=True,
                      key=lambda item: math.log(1.0 - rng.random()) / item.size)[:count - count // 2]
    picked = {item.path for item in weighted}
    uniform = rng.sample([item for item in pool if item.path not in picked], count - len(weighted))
    return sorted([*chosen, *weighted, *uniform], key=lambda item: item.path)


def _ensure_room(parent: Path, sample: list[SnapshotFile]) -> None:
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    needed = sum(item.size for item in sample)
    free = shutil.disk_usage(parent).free
    if needed > free * 0.9:
        from triplicate.units import format_bytes

        raise RestoreCheckUnavailable(f"the sample needs {format_bytes(needed)} but {parent} has only "
                                      f"{format_bytes(free)} free; choose fewer --files")


def _restore_and_check(locations: list[_Opened], snapshot: str, sample: list[SnapshotFile], to_hash: set[str],
                       parent: Path, results: dict[str, LocationCheck]) -> None:
    """Restore ``sample`` from each location in turn into a private folder and check every file.

    Restores run one after the other, so that each throughput is measured alone; the
    previous location's files are hashed meanwhile (restic leaves a core idle while it
    waits on writes). A folder is removed as soon as its files are hashed, and every
    folder is removed whatever happens.
    """
    hashing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="restore-hash")
    folders: list[Path] = []
    previous: tuple[Path, Callable[[], None]] | None = None
    try:
        for location in locations:
            folders.append(make_private_folder(parent, TEMPORARY_PREFIX))
            finish = _restore(location, snapshot, sample, to_hash, folders[-1], results[location.name], hashing)
            if previous is not None:
                previous[1]()
                remove_tree(previous[0])
            previous = (folders[-1], finish)
        if previous is not None:
            previous[1]()
    finally:
        # Stop hashing before the folders go: nothing may read them afterwards.
        hashing.shutdown(wait=True, cancel_futures=True)
        for folder in folders:
            remove_tree(folder)


def _restore(location: _Opened, snapshot: str, sample: list[SnapshotFile], to_hash: set[str], target: Path,
             result: LocationCheck, hashing: ThreadPoolExecutor) -> Callable[[], None]:
    """Restore ``sample`` from ``location`` into ``target``, check presence and sizes, hash ``to_hash``.

    Returns the function that waits for the hashes and completes ``result``.
    """
    started = time.monotonic()
    outcome = restic_run(restore_arguments(snapshot, target, [item.path for item in sample]),
                         location.env, lock=location.lock, secrets=location.secrets)
    result.restore_seconds = time.monotonic() - started
    stderr = outcome.stderr.decode("utf-8", "replace")
    errors = {path.removeprefix(str(target)): reason for path, reason in restore_errors(stderr).items()}
    restored: list[tuple[SnapshotFile, Future[tuple[str, float]] | None]] = []
    if "no matching ID" in stderr:
        result.failures.append(Failure(None, f"snapshot {snapshot[:8]} is not at this location"))
    elif outcome.returncode != 0 and not errors:
        reason = KEY_FAILURE if key_problem(stderr) else f"restore failed: {error_summary(stderr)}"
        result.failures.append(Failure(None, reason))
    else:
        for item in sample:
            result.files_checked += 1
            problem = _restored_problem(target / item.path.lstrip("/"), item, errors.get(item.path))
            if problem is not None:
                result.failures.append(Failure(item.path, problem))
            else:
                path = target / item.path.lstrip("/")
                restored.append((item, hashing.submit(_timed_sha256, path) if item.path in to_hash else None))
        if outcome.returncode != 0 and not result.failures:
            # restic failed on something that is none of the sampled files (a folder, the verify pass).
            detail = next((f"{path}: {reason}" for path, reason in errors.items()), error_summary(stderr))
            result.failures.append(Failure(None, f"restore failed: {detail}"))

    def finish() -> None:
        # The time spent hashing, not the time waited: another location restored meanwhile.
        result.seconds = result.restore_seconds
        for item, job in restored:
            if job is not None:
                result.hashes[item.path], seconds = job.result()
                result.seconds += seconds
            result.bytes_restored += item.size

    return finish


def _restored_problem(path: Path, item: SnapshotFile, restic_error: str | None) -> str | None:
    """Why a restored file fails its check (restic's error, missing, wrong size), or None."""
    if restic_error is not None:
        return f"restic could not restore it: {restic_error}"
    if path.is_symlink() or not path.is_file():
        return "missing after the restore"
    size = path.stat().st_size
    return None if size == item.size else f"restored {size} bytes, the snapshot lists {item.size}"


def _timed_sha256(path: Path) -> tuple[str, float]:
    started = time.monotonic()
    return sha256_of(path), time.monotonic() - started


def _check_canary(canary: Canary, listed: SnapshotFile | None, results: list[LocationCheck]) -> None:
    """A canary is in the snapshot, is at least ``min_size`` and, when given, has its ``sha256``."""
    if listed is None:
        problem = "canary missing from the snapshot"
    elif listed.size < canary.min_size:
        problem = f"canary is {listed.size} bytes, less than its min_size {canary.min_size}"
    else:
        problem = None
    for result in results:
        if problem is not None:
            result.failures.append(Failure(canary.path, problem))
        elif canary.sha256 and canary.path in result.hashes and result.hashes[canary.path] != canary.sha256:
            result.failures.append(Failure(canary.path, "canary's content does not match its sha256"))


def compare_across_locations(sample: list[SnapshotFile], results: list[LocationCheck]) -> None:
    """Fail the locations whose copy of a file differs from the majority's (all of them on a tie)."""
    for item in sample:
        digests = Counter(result.hashes[item.path] for result in results if item.path in result.hashes)
        if len(digests) < 2:
            continue
        ranked = digests.most_common()
        majority = ranked[0][0] if ranked[0][1] > ranked[1][1] else None
        for result in results:
            digest = result.hashes.get(item.path)
            if digest is not None and digest != majority:
                where = "the other locations'" if majority else "another location's"
                result.failures.append(Failure(item.path, f"content (sha256 {digest[:12]}) differs from {where}"))


def _record(config: Config, client: str, results: dict[str, LocationCheck]) -> None:
    state = RestoreCheckState(config.server.state_dir)
    try:
        now = time.time()
        for name, result in results.items():
            result.previous_ok = state.record(RestoreCheckRecord(
                client=client, location=name, time=now, ok=result.ok, snapshot=result.snapshot,
                files_checked=result.files_checked, bytes_restored=result.bytes_restored,
                seconds=result.seconds, throughput=result.throughput,
                estimated_full_restore_seconds=result.estimated_full_restore_seconds,
                failures=[{"path": failure.path, "reason": failure.reason} for failure in result.failures],
            ))
    finally:
        state.close()


def display_name(name: str) -> str:
    return "primary" if name == PRIMARY else name
