"""Keyless verification of a repository's files: SHA-256 of the content against the name.

Every restic file but ``config`` is named by the SHA-256 of its content, so a
replica can be checked byte for byte without any key. Files are read once, in
parallel threads (hashlib releases the GIL on large buffers), and a rotating
sample, least recently verified first, makes repeated partial audits cover
every file (as Kopia's ``--verify-files-percent`` and Proxmox Backup Server's
verify jobs do).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

from triplicate.engine.judgement import Outcome, judge_file, judge_mismatch
from triplicate.engine.mirror import Progress
from triplicate.state.audit import Stamp, Verification
from triplicate.storage.backend import Backend, FileInfo, NotFound, StorageError, hash_file
from triplicate.storage.handle import FileType, Handle

# Content-addressed types, in the order a reader needs them (restic's write order reversed).
VERIFIED_TYPES = (FileType.SNAPSHOT, FileType.INDEX, FileType.DATA, FileType.KEY)


@dataclass(frozen=True)
class Sample:
    """What one audit re-reads at a location."""

    files: list[tuple[Handle, int]]  # (handle, listed size), the known-bad ones first
    in_progress: int  # files modified within the grace period: not judged this time


@dataclass
class VerifyResult:
    verified_files: int = 0
    verified_bytes: int = 0
    corrupt_files: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)
    in_progress: int = 0  # content did not match but the file changed just now: not judged
    vanished: int = 0  # removed between the listing and the read (a prune)
    stamps: list[Verification] = field(default_factory=list)
    interrupted: bool = False


def choose_sample(
    files: Mapping[FileType, Mapping[str, FileInfo]],
    stamps: Mapping[tuple[str, str], Stamp],
    percent: float,
    now: float,
    grace: float,
) -> Sample:
    """Pick the files to verify: ``percent`` of the settled files, least recently verified first.

    A file never verified, or replaced since its last verification, counts as
    never verified. Files last found bad are always included, on top of the
    share, so that a corrupt file stays reported until it is repaired. Files
    modified less than ``grace`` seconds ago may still be being written and are
    left out (counted in ``in_progress``).
    """
    settled: list[tuple[float, str, Handle, int]] = []
    known_bad: list[tuple[Handle, int]] = []
    in_progress = 0
    for file_type in VERIFIED_TYPES:
        for info in files.get(file_type, {}).values():
            if info.mtime is not None and judge_mismatch(info.mtime, now, grace) is Outcome.IN_PROGRESS:
                in_progress += 1  # a time in the future is no sign of a recent upload: judged
                continue
            handle = Handle(file_type, info.name)
            stamp = stamps.get((file_type.value, info.name))
            if stamp is not None and info.mtime is not None and info.mtime > stamp.verified_at:
                stamp = None  # replaced since (repaired): judge it afresh
            if stamp is not None and not stamp.ok:
                known_bad.append((handle, info.size))
            else:
                last = stamp.verified_at if stamp is not None else -math.inf
                settled.append((last, info.name, handle, info.size))
    settled.sort(key=lambda item: (item[0], item[1]))
    share = math.ceil(len(settled) * percent / 100) if percent > 0 else 0
    chosen = [(handle, size) for _, _, handle, size in settled[:share]]
    return Sample(known_bad + chosen, in_progress)


def verify_files(
    backend: Backend,
    files: Iterable[tuple[Handle, int]],
    *,
    workers: int,
    grace: float,
    clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    limit: threading.Semaphore | None = None,
) -> VerifyResult:
    """Hash each file once, in ``workers`` threads, and compare with its name.

    Never raises StorageError: a file that cannot be read is listed in
    ``unreadable_files``. A mismatching file modified less than ``grace`` seconds
    ago is being written (an in-place upload) and is not judged. Stops early,
    with ``interrupted`` set, when ``stop`` is set. ``limit``, shared by every
    verification at one location, bounds its concurrent reads across clients.
    """
    result = VerifyResult()
    lock = threading.Lock()
    files = list(files)
    progress = progress or Progress()
    progress.planned(len(files), sum(size for _, size in files))

    def verify_one(handle: Handle, size: int) -> None:
        if stop is not None and stop.is_set():
            result.interrupted = True
            return
        with limit or nullcontext():
            outcome, read = _verify(backend, handle, grace, clock)
        with lock:
            if outcome in (None, Outcome.CORRUPT, Outcome.UNREADABLE, Outcome.SUSPICIOUS_FUTURE_MTIME):
                result.verified_files += 1
                result.verified_bytes += read
                result.stamps.append(Verification(handle.type.value, handle.name, clock(), outcome is None))
            if outcome in (Outcome.CORRUPT, Outcome.SUSPICIOUS_FUTURE_MTIME):
                result.corrupt_files.append(handle.relative_path())
            elif outcome is Outcome.UNREADABLE:
                result.unreadable_files.append(handle.relative_path())
            elif outcome is Outcome.IN_PROGRESS:
                result.in_progress += 1
            elif outcome is Outcome.VANISHED:
                result.vanished += 1
        progress.copied(size)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
        for future in [pool.submit(verify_one, handle, size) for handle, size in files]:
            future.result()
    result.corrupt_files.sort()
    result.unreadable_files.sort()
    return result


def _verify(backend: Backend, handle: Handle, grace: float,
            clock: Callable[[], float]) -> tuple[Outcome | None, int]:
    """One file: returns (None when it hashes to its name, else :func:`judge_file`'s outcome;
    bytes read). A file modified in the future is judged, as corrupt: it is never recent."""
    try:
        digest, size = hash_file(backend, handle)
    except NotFound:
        return Outcome.VANISHED, 0
    except StorageError:
        return Outcome.UNREADABLE, 0
    if digest == handle.name:
        return None, size
    return judge_file(backend, handle, clock(), grace), size
