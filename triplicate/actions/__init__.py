"""Actions: what triplicate does, each a small module the CLI and the daemon both call."""

# The version of every JSON answer's shape: each ``--json`` output and the web API (docs/json.md).
# Bumped when a field changes meaning or shape. 2: collections keyed by a name are objects keyed by it.
JSON_VERSION = 2
