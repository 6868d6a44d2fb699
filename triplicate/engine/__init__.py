"""The replication engine: keyless, ordered, verified copies between backends."""
