"""triplicate: a restic backup server that keeps every client's backups in three places."""

__version__ = "0.1.0"
