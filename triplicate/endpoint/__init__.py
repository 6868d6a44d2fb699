"""triplicate's own restic REST endpoint: verifying, durable, append-only (docs/server.md)."""
