"""HTTP Basic authentication against a client's bcrypt htpasswd file, in constant time.

bcrypt is paid once per password and file version: a match is remembered as the
SHA-256 of the password (compared with ``hmac.compare_digest``), keyed by the
file's inode, size and modification time, so a backup's thousands of requests
cost one bcrypt, and a rewritten file (a new password) is read again. A refusal
always runs bcrypt, against a dummy hash when the user is unknown, so that the
time taken does not tell whether the user exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from triplicate.service.htpasswd import BCRYPT_COST

_DUMMY_HASH = bcrypt.hashpw(b"no such user", bcrypt.gensalt(rounds=BCRYPT_COST))


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header; None when absent or malformed."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    return (user, password) if separator else None


@dataclass
class Htpasswd:
    """The credentials of one client: its htpasswd file, with the bcrypt result remembered."""

    path: Path
    _signature: tuple[int, int, int] | None = None
    _verified: dict[str, bytes] = field(default_factory=dict)  # user -> SHA-256 of its checked password

    def check(self, user: str, password: str) -> bool:
        """True when the file has ``user`` and ``password`` matches its bcrypt hash.

        An unreadable file refuses everyone (it is read again on the next request).
        """
        try:
            status = os.stat(self.path)
        except OSError:
            self._forget(None)
            bcrypt.checkpw(password.encode(), _DUMMY_HASH)
            return False
        signature = (status.st_ino, status.st_size, status.st_mtime_ns)
        if signature != self._signature:
            self._forget(signature)
        digest = hashlib.sha256(password.encode()).digest()
        known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        hashed = self._entry(user)
        matches = bcrypt.checkpw(password.encode(), hashed or _DUMMY_HASH) and hashed is not None
        if matches:
            self._verified[user] = digest
        return matches

    def _forget(self, signature: tuple[int, int, int] | None) -> None:
        self._signature = signature
        self._verified.clear()

    def _entry(self, user: str) -> bytes | None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            name, _, hashed = line.partition(":")
            if name == user and hashed.startswith("$2"):
                return hashed.encode()
        return None
