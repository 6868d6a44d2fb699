"""A client's REST credentials: a random password and its bcrypt htpasswd entry.

rclone checks the entry on every HTTP request (no cache), so the cost is that of
``htpasswd -B`` (5), not a login-grade 12: with 192 random bits in the password a
higher cost would protect nothing and would be paid on every pack a backup uploads.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import bcrypt

from triplicate.fsutil import atomic_write

BCRYPT_COST = 5


def generate_password() -> str:
    """32 URL-safe characters (192 random bits): fits a URL's user-info part unescaped."""
    return secrets.token_urlsafe(24)


def entry(user: str, password: str, cost: int = BCRYPT_COST) -> str:
    """One htpasswd line ``user:$2b$...`` (rclone accepts bcrypt's $2b$ and $2y$ alike)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()
    return f"{user}:{hashed}"


def write_file(path: Path, user: str, password: str, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with the single entry of ``user``, readable only by its owner."""
    atomic_write(path, entry(user, password) + "\n", mode=0o600)
    if owner is not None:
        os.chown(path, *owner)


def check(path: Path, user: str, password: str) -> bool:
    """True when ``path`` has an entry for ``user`` that ``password`` matches."""
    for line in path.read_text().splitlines():
        name, _, hashed = line.partition(":")
        if name == user and hashed:
            return bcrypt.checkpw(password.encode(), hashed.encode())
    return False
