"""The benchmarks are not tests, but they must keep running: each bench/ script starts and
prints its usage, and each bench/ module imports (what they take from the package still
exists under that name; mypy does not read bench/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("name", sorted(path.name for path in BENCH.glob("bench_*.py")))
def test_every_benchmark_starts_and_prints_its_usage(name: str) -> None:
    script = BENCH / name
    if 'if __name__ == "__main__"' in script.read_text():
        argv = [sys.executable, str(script), "--help"]
    else:  # a part of another benchmark: it imports
        argv = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {script.stem}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=BENCH.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    if argv[-1] == "--help":
        assert "usage" in result.stdout.lower(), result.stdout
