"""Persistent state: one SQLite database in ``state_dir``, the single source for status and metrics."""
