"""The one poll with a timeout: every waiting helper of the tests is built on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition", *,
               context: Callable[[], str] | None = None) -> T:
    """Poll ``condition`` until it returns something true; return that.

    After ``timeout`` seconds, fail the test with an AssertionError naming ``what`` (followed by
    ``context()``, such as a server's log, when given). ``condition`` may raise to fail at once
    (a server that exited, say).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"timed out after {timeout}s waiting for {what}"
            if context is not None:
                message += "\n" + context()
            raise AssertionError(message)
        time.sleep(INTERVAL)
