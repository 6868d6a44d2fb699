"""The manual page generated from the commands, and click's shell completion as documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support.server import run_captured
from triplicate.cli import COMMANDS


def test_the_manual_page_documents_every_command_and_is_valid_roff() -> None:
    result = run_captured(["man"])
    assert result.code == 0 and result.out.startswith(".TH TRIPLICATE 1 ")
    for name in COMMANDS:
        if name not in ("man", "client", "config"):
            assert f".SS {name.replace('-', chr(92) + '-')}\n" in result.out, name
    for sub in ("client add", "client list", "config check"):
        assert f".SS {sub}\n" in result.out, sub
    assert "\\-\\-nagios" in result.out and ".SH EXIT STATUS" in result.out
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    checked = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=result.out, capture_output=True,
                             text=True, timeout=60, check=False)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    rendered = subprocess.run(["groff", "-man", "-Tutf8"], input=result.out, capture_output=True, text=True,
                              timeout=60, check=True).stdout
    plain = re.sub(".\x08", "", rendered).replace("\u2010", "-")  # no overstrike (bold), plain hyphens
    assert "triplicate config check" in plain


def test_shell_completion_works_as_documented() -> None:
    environment = {**os.environ, "_TRIPLICATE_COMPLETE": "bash_source"}
    source = subprocess.run([sys.executable, "-m", "triplicate"], env=environment, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert "_triplicate_completion()" in source and "complete -o nosort -F _triplicate_completion triplicate" in source
    environment = {**os.environ, "_TRIPLICATE_COMPLETE": "bash_complete", "COMP_WORDS": "triplicate con",
                   "COMP_CWORD": "1"}
    answer = subprocess.run([sys.executable, "-m", "triplicate"], env=environment, capture_output=True, text=True,
                            timeout=60, check=True).stdout
    assert answer.splitlines() == ["plain,config"]
