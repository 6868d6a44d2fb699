"""Bandwidth and fairness per location, shared by every client's copies in one process.

A location's ``bwlimit`` is one token bucket and its ``workers`` one set of copy slots,
kept per location name for the whole process (:func:`location_limits`): twenty clients
replicating to one SFTP host at once share its bandwidth and open at most ``workers``
copies there, not twenty times that. ``ThrottledBackend`` wraps any backend (the house
rule: cross-cutting behaviour is a wrapper, never a flag inside each implementation):
a save waits for a slot, then reads its source through the bucket. A kind whose
program copies the file itself (rclone) is given the limit instead and the source is
not throttled here (storage/kinds/kind.py's ``own_bandwidth``).

Slots go to the waiting copy whose run has saved the fewest bytes so far (ties: the
first to ask): a client with a small new snapshot overtakes one whose first copy has
been running for an hour, without the mirror knowing what either has left to copy.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, cast

from triplicate.storage.backend import Backend, Forwarding
from triplicate.storage.handle import Handle
from triplicate.units import parse_bandwidth, rate_at

Timetable = tuple[tuple[int, int | None], ...]
BURST_SECONDS = 0.2  # what an idle bucket holds: a fifth of a second at the current rate
_LONGEST_WAIT = 1.0  # a wait is cut in slices so that a switch to "off" ends it


class TokenBucket:
    """Bytes per second from a timetable (:func:`triplicate.units.parse_bandwidth`), shared by threads.

    ``clock`` is the wall clock (seconds since the epoch; its local time picks the
    timetable's entry), ``monotonic`` and ``sleep`` measure and wait; all injectable.
    """

    def __init__(self, timetable: Timetable, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.timetable = timetable
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
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
        with self._lock:
            rate = self.rate()
            now = self._monotonic()
            if rate is None:
                self._tokens, self._last = 0.0, now
                return 0.0
            self._tokens = min(rate * BURST_SECONDS, self._tokens + (now - self._last) * rate) - count
            self._last = now
            owed = -self._tokens / rate if self._tokens < 0 else 0.0
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
    """One location's shared limits: its bucket (None: no bwlimit) and its copy slots."""

    def __init__(self, bwlimit: str | None, slots: int) -> None:
        self.bwlimit = bwlimit
        self.bucket = None if bwlimit is None else TokenBucket(parse_bandwidth(bwlimit))
        self.slots = PrioritySlots(slots)

    def update(self, bwlimit: str | None, slots: int) -> None:
        if bwlimit != self.bwlimit:
            self.bwlimit = bwlimit
            self.bucket = None if bwlimit is None else TokenBucket(parse_bandwidth(bwlimit))
        if slots != self.slots.count:
            self.slots.resize(slots)


_registry_lock = threading.Lock()
_registry: dict[str, LocationLimits] = {}


def location_limits(location: str, bwlimit: str | None, slots: int) -> LocationLimits:
    """The process's limits of ``location``, made on first use and kept up to date with its
    configuration (a daemon reloading it)."""
    with _registry_lock:
        limits = _registry.get(location)
        if limits is None:
            limits = _registry[location] = LocationLimits(bwlimit, slots)
        else:
            limits.update(bwlimit, slots)
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

    def save(self, handle: Handle, source: BinaryIO) -> int:
        bucket = self.limits.bucket if self._throttle_source else None
        slots = self.limits.slots
        slots.acquire(self._saved)
        try:
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
