"""The watcher daemon (``triplicate syncd``): a scheduler over the same actions as the CLI.

- watcher.py: file events on every served client's ``snapshots/`` folder.
- runner.py: one run per (client, location) at a time, one queued follow-up, backoff.
- scheduler.py: periodic per-client jobs whose last run is remembered across restarts.
- main.py: the daemon itself: detection, hooks, notifications, signals, reload.
"""
