"""Bandwidth and fairness per location, shared by every client's copies on the server.

A location's ``bwlimit`` is one token bucket and its ``workers`` one set of copy slots,
kept per location name for the whole process (:func:`location_limits`) and shared with
every other process on the server through files under ``state_dir/limits/``
(storage/limit_files.py): twenty clients replicating to one SFTP host at once, each
from its own watcher process, share its bandwidth and copy at most ``workers`` files
there, not twenty times that. ``ThrottledBackend`` wraps any backend (the house rule:
cross-cutting behaviour is a wrapper, never a flag inside each implementation): a save
waits for a slot, then reads its source through the bucket. A kind whose program copies
the file itself (rclone) is given the limit instead and the source is not throttled
here (storage/kinds/kind.py's ``own_bandwidth``).

Slots go to the waiting copy whose run has saved the fewest bytes so far (ties: the
first to ask), in this process and across processes: a client with a small new
snapshot overtakes one whose first copy has been running for an hour, without the
mirror knowing what either has left to copy. When ``state_dir`` cannot be written the
limits hold in this process only (logged once).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, cast

from triplicate.storage.backend import Backend, Forwarding
from triplicate.storage.handle import Handle
from triplicate.storage.limit_files import BucketFile, SharedSlots, limits_folder, warn_once
from triplicate.units import parse_bandwidth, rate_at

Timetable = tuple[tuple[int, int | None], ...]
BURST_SECONDS = 0.2  # what an idle bucket holds: a fifth of a second at the current rate
_LONGEST_WAIT = 1.0  # a wait is cut in slices so that a switch to "off" ends it


class TokenBucket:
    """Bytes per second from a timetable (:func:`triplicate.units.parse_bandwidth`), shared by
    threads, and by processes when given a ``shared`` file to keep its state in.

    ``clock`` is the wall clock (seconds since the epoch; its local time picks the
    timetable's entry), ``monotonic`` and ``sleep`` measure and wait; all injectable.
    """

    def __init__(self, timetable: Timetable, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, shared: BucketFile | None = None) -> None:
        self.timetable = timetable
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._shared = shared
        self._lock = threading.Lock()
        self._tokens = 0.0  # negative: owed by copies already let through
        self._last = monotonic()

    def rate(self) -> int | None:
        """Bytes per second now; None when there is no limit now."""
        local = time.localtime(self._clock())
        return rate_at(self.timetable, local.tm_hour * 60 + local.tm_min)

    def consume(self, count: int) -> float:
        """Take ``count`` bytes, waiting as long as the rate requires; returns the seconds waited."""
        waited = 0.0
        rate = self.rate()

        def pay(tokens: float, last: float) -> tuple[float, float, float]:
            """The bucket after this payment, and the seconds it owes."""
            now = self._monotonic()
            if rate is None:
                return 0.0, now, 0.0
            tokens = min(rate * BURST_SECONDS, tokens + (now - last) * rate) - count
            return tokens, now, (-tokens / rate if tokens < 0 else 0.0)

        with self._lock:
            owed = None
            if self._shared is not None:
                try:
                    owed = self._shared.transact(pay, self._monotonic)
                except OSError as error:
                    warn_once(self._shared.path or Path("bucket"), error)
                if owed is None:  # no file to share it through: this process's bucket alone
                    self._shared = None
            if owed is None:
                self._tokens, self._last, owed = pay(self._tokens, self._last)
        if rate is None:
            return 0.0
        while owed > 0:
            step = min(owed, _LONGEST_WAIT)
            # Rate limiting: the wait is the throttle itself, not synchronisation.
            self._sleep(step)
            waited += step
            owed -= step
            if owed > 0 and self.rate() is None:
                break
        return waited


class PrioritySlots:
    """At most ``count`` holders at once; a freed slot goes to the lowest priority waiting
    (then to the first to ask)."""

    def __init__(self, count: int) -> None:
        self._free = count
        self.count = count
        self._condition = threading.Condition()
        self._waiting: list[tuple[float, int]] = []
        self._order = itertools.count()

    def resize(self, count: int) -> None:
        """A new number of slots (the configuration changed); holders keep theirs."""
        with self._condition:
            self._free += count - self.count
            self.count = count
            self._condition.notify_all()

    def acquire(self, priority: float) -> None:
        with self._condition:
            ticket = (priority, next(self._order))
            heapq.heappush(self._waiting, ticket)
            while not (self._free > 0 and self._waiting[0] == ticket):
                self._condition.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
            self._condition.notify_all()  # the next waiter may take another free slot

    def release(self) -> None:
        with self._condition:
            self._free += 1
            self._condition.notify_all()

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._waiting)


class LocationLimits:
    """One location's limits: its bucket (None: no bwlimit) and its copy slots, in this
    process (``slots``) and, with a ``state_dir``, across processes (:meth:`shared_slots`)."""

    def __init__(self, location: str, bwlimit: str | None, slots: int, state_dir: Path | None = None) -> None:
        self.location = location
        self.bwlimit = bwlimit
        self.state_dir = state_dir
        self.slots = PrioritySlots(slots)
        self._shared_lock = threading.Lock()
        self._folder: Path | None = None
        self._folder_made = False
        self._shared_slots: SharedSlots | None = None
        self.bucket = self._bucket()

    def _bucket(self) -> TokenBucket | None:
        if self.bwlimit is None:
            return None
        # The file is made at the first chunk paid for: a command that saves nothing writes nothing.
        shared = None if self.state_dir is None else BucketFile(self.folder)
        return TokenBucket(parse_bandwidth(self.bwlimit), shared=shared)

    def folder(self) -> Path | None:
        """``state_dir/limits/<location>``, made on first use; None without a usable state_dir."""
        with self._shared_lock:
            if not self._folder_made:
                self._folder_made = True
                self._folder = None if self.state_dir is None else limits_folder(self.state_dir, self.location)
            return self._folder

    def shared_slots(self) -> SharedSlots | None:
        """The slots every process shares; None when they cannot be kept in files."""
        folder = self.folder()
        with self._shared_lock:
            if folder is not None and self._shared_slots is None:
                self._shared_slots = SharedSlots(folder, self.slots.count)
            return self._shared_slots

    def update(self, bwlimit: str | None, slots: int, state_dir: Path | None = None) -> None:
        if state_dir is not None and state_dir != self.state_dir:
            with self._shared_lock:
                self.state_dir, self._folder_made, self._folder, self._shared_slots = state_dir, False, None, None
            self.bucket = self._bucket()
        if bwlimit != self.bwlimit:
            self.bwlimit = bwlimit
            self.bucket = self._bucket()
        if slots != self.slots.count:
            self.slots.resize(slots)
            with self._shared_lock:
                if self._shared_slots is not None:
                    self._shared_slots.resize(slots)


_registry_lock = threading.Lock()
_registry: dict[str, LocationLimits] = {}


def location_limits(location: str, bwlimit: str | None, slots: int, state_dir: Path | None = None) -> LocationLimits:
    """The process's limits of ``location``, made on first use and kept up to date with its
    configuration (a daemon reloading it); with ``state_dir``, shared with every process
    using the same state folder."""
    with _registry_lock:
        limits = _registry.get(location)
        if limits is None:
            limits = _registry[location] = LocationLimits(location, bwlimit, slots, state_dir)
        else:
            limits.update(bwlimit, slots, state_dir)
        return limits


class ThrottledBackend(Forwarding):
    """Wraps ``backend``: each save takes one of the location's slots and, unless the kind
    limits its bandwidth itself (``throttle_source`` false), reads its source through the
    location's bucket."""

    def __init__(self, backend: Backend, limits: LocationLimits, throttle_source: bool = True) -> None:
        super().__init__(backend)
        self.limits = limits
        self._throttle_source = throttle_source
        self._saved = 0  # bytes saved through this opening: the priority of its next save
        self._saved_lock = threading.Lock()

    @property
    def saved(self) -> int:
        return self._saved

    @contextmanager
    def _shared_slot(self) -> Iterator[None]:
        """Hold one of the slots every process shares for the block (none when they cannot be
        kept in files: the process's own slots still hold)."""
        shared = self.limits.shared_slots()
        slot = None
        if shared is not None:
            try:
                slot = shared.acquire(self._saved)
            except OSError as error:
                warn_once(shared.folder, error)
        try:
            yield
        finally:
            if shared is not None and slot is not None:
                shared.release(slot)

    def save(self, handle: Handle, source: BinaryIO) -> int:
        bucket = self.limits.bucket if self._throttle_source else None
        slots = self.limits.slots
        slots.acquire(self._saved)
        try:
            with self._shared_slot():
                reader = source if bucket is None else ThrottledReader(source, bucket)
                size = self.backend.save(handle, cast(BinaryIO, reader))  # reads, rewinds: all a save uses
        finally:
            slots.release()
        with self._saved_lock:
            self._saved += size
        return size


class ThrottledReader:
    """A source read through a bucket: each chunk is paid for once read. It can be rewound
    when the source can (a retried save)."""

    def __init__(self, source: BinaryIO, bucket: TokenBucket) -> None:
        self._source = source
        self._bucket = bucket

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._bucket.consume(len(data))
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        readinto = getattr(self._source, "readinto", None)
        if readinto is None:
            data = self._source.read(len(buffer))
            count = len(data)
            memoryview(buffer)[:count] = data
        else:
            count = readinto(buffer) or 0
        self._bucket.consume(count)
        return count

    def seekable(self) -> bool:
        return self._source.seekable()

    def tell(self) -> int:
        return self._source.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._source.seek(offset, whence)
