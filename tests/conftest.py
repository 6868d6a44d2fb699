"""The tests' helpers are in tests/support/, loaded here as plugins: their fixtures are found by name."""

from __future__ import annotations

import os
import signal

pytest_plugins = [
    "tests.support.repository",
    "tests.support.server",
    "tests.support.syncd",
    "tests.support.remote",
    "tests.support.web",
]

# This machine's kind sets AWS_CA_BUNDLE, which makes rclone 1.60's S3 client fail
# (LoadCustomCABundleError); production leaves an operator's bundle alone, the tests drop it.
os.environ.pop("AWS_CA_BUNDLE", None)

# A test run started as a background job of a script inherits SIGINT ignored, and would pass
# that on to every program it starts: the tests that interrupt restic with SIGINT (as a stopping
# daemon does; the daemon and restore-check install their own SIGINT handlers) need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
