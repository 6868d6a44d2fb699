"""The tests' helpers are in tests/support/, loaded here as plugins: their fixtures are found by name."""

from __future__ import annotations

import os

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
