"""An asyncio event loop in a thread of its own, for asynchronous libraries behind a blocking API.

The Backend protocol is synchronous and called from several worker threads at
once; asyncssh is asynchronous. Each SFTP location runs one loop here, and the
workers hand it coroutines and wait for their results.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class LoopThread:
    """A running event loop; ``call`` runs a coroutine on it from any other thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, awaitable: Awaitable[T]) -> concurrent.futures.Future[T]:
        """Schedule ``awaitable`` (a coroutine or any awaitable); the future's result is its result."""
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop)

    def call(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coroutine`` to its end and return its result or raise its exception.

        Raises TimeoutError after ``timeout`` seconds, the coroutine being cancelled.
        """
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:.0f}s") from None

    def stop(self, cleanup: Awaitable[object] | None = None, timeout: float = 10.0) -> None:
        """Run ``cleanup`` (closing connections), then stop the loop and its thread."""
        if not self._thread.is_alive():
            return
        if cleanup is not None:
            try:
                self.call(cleanup, timeout)
            except Exception:
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
