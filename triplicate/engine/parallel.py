"""Running one piece of work per item on a bounded pool of threads (the mirror's copies, a
repair's fetches): hashing and file I/O release the GIL."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TypeVar

Item = TypeVar("Item")


def run_each(work: Callable[[Item], None], items: Iterable[Item], workers: int, name: str) -> None:
    """Call ``work(item)`` for every item on at most ``workers`` threads named ``name``.

    The first exception cancels what has not started, waits for what runs, and is raised.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        futures = [pool.submit(work, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
