"""Actions: what triplicate does, each a small module the CLI and the daemon both call."""
