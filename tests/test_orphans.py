"""Supervision finds every process of a client, whoever its parent: the orphan left by ``kill -9`` of its runsv.

The client's runsv is killed for real under a real ``triplicate supervise``: its
runsvdir lives on under init with the client's endpoint and watcher, while the top
runsvdir starts a new runsv. disable, remove and a supervise restart must all end it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import processes_mentioning
from tests.support.server import Site
from tests.support.wait import wait_until as wait_for
from triplicate.service import runit

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    instance = Site(tmp_path / "site", ports=2)
    assert instance.cli("init").code == 0
    instance.start_supervision()
    try:
        yield instance
    finally:
        leftovers = instance.stop_supervision()
    assert leftovers == [], f"processes left after supervision stopped: {leftovers}"


def add_running_client(site: Site, name: str) -> int:
    """Add ``name`` and wait until its endpoint answers; returns its port."""
    port = int(str(site.add_client(name, "usb")["port"]))
    wait_for(lambda: site.service_pid(name, "rest") and site.service_pid(name, "syncd"), 15, f"{name}'s services")
    wait_for(lambda: runit.port_answers("127.0.0.1", port), 15, f"{name}'s endpoint")
    return port


def orphan_the_client(site: Site, name: str) -> list[runit.Supervisor]:
    """kill -9 the client's runsv; wait until the top runsvdir has started another; return the orphans."""
    client_dir = site.layout.client_dir(name)
    [victim] = [found for found in runit.supervisors() if found.program == "runsv" and found.folder == client_dir]
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: [found for found in runit.supervisors()
                      if found.program == "runsv" and found.folder == client_dir and found.pid != victim.pid],
             15, "the top runsvdir to start a new runsv for the client")
    orphans = runit.orphans(client_dir)
    assert [orphan.program for orphan in orphans] == ["runsvdir"], orphans
    assert orphans[0].folder == client_dir / "services"
    return orphans


def test_disable_ends_an_orphaned_runsvdir_and_status_reported_it(site: Site) -> None:
    port = add_running_client(site, "gamma")
    [orphan] = orphan_the_client(site, "gamma")
    status = site.cli("status", "gamma", "--json")
    assert status.code == 1
    assert any(problem.startswith(f"orphaned runsvdir (pid {orphan.pid}) runs ") for problem in
               status.json()["clients"]["gamma"]["problems"]), status.out

    disabled = site.cli("client", "disable", "gamma")
    assert disabled.code == 0, disabled.err
    assert processes_mentioning(*site.markers("gamma", port)) == []
    assert runit.supervisors_below(site.layout.client_dir("gamma")) == []
    assert not runit.port_answers("127.0.0.1", port)
    # Nothing comes back by itself (a surviving runsvdir would start the services within 5 s).
    with pytest.raises(AssertionError):
        wait_for(lambda: runit.port_answers("127.0.0.1", port) or processes_mentioning(
            *site.markers("gamma", port)), 7, "anything of gamma to come back")

    assert site.cli("client", "enable", "gamma").code == 0
    wait_for(lambda: runit.port_answers("127.0.0.1", port), 15, "gamma's endpoint again")
    assert site.cli("status", "gamma", "--json").code == 0


def test_remove_ends_an_orphaned_runsvdir(site: Site) -> None:
    port = add_running_client(site, "gamma")
    orphan_the_client(site, "gamma")
    removed = site.cli("client", "remove", "gamma")
    assert removed.code == 0, removed.err
    assert processes_mentioning(*site.markers("gamma", port)) == []
    assert not runit.port_answers("127.0.0.1", port)
    with pytest.raises(AssertionError):
        wait_for(lambda: runit.port_answers("127.0.0.1", port), 7, "gamma's endpoint to come back")


def test_supervise_stop_and_restart_leave_no_orphan(site: Site) -> None:
    port = add_running_client(site, "gamma")
    orphan_the_client(site, "gamma")
    stopped = site.cli("supervise", "--stop", "--timeout", "20")
    assert stopped.code == 0, stopped.err
    assert processes_mentioning(str(site.root)) == []
    assert not runit.port_answers("127.0.0.1", port)

    site.start_supervision()
    wait_for(lambda: runit.port_answers("127.0.0.1", port), 20, "gamma's endpoint under the new supervisor")
    orphan_the_client(site, "gamma")
    # A restart the way systemd does it (SIGHUP to the top runsvdir, then supervise again) leaves the
    # orphan behind at first: the new supervise stops it before it supervises.
    assert site.supervisor is not None
    top = runit.find_runsvdir(site.layout.top)
    assert top is not None
    os.kill(top, signal.SIGHUP)
    site.supervisor.wait(timeout=20)
    assert runit.orphans(site.layout.clients_root), "the orphan outlives its top runsvdir"
    site.start_supervision()
    wait_for(lambda: site.service_pid("gamma", "rest"), 20, "gamma's endpoint under the restarted supervisor")
    assert runit.orphans(site.layout.clients_root) == []
    # Generous for a loaded 2-core machine (a fresh Python, aiohttp and the bind); the endpoint's
    # log says why if it never answers.
    log = site.layout.log_dir("gamma", "rest") / "current"
    wait_for(lambda: runit.port_answers("127.0.0.1", port), 40, "gamma's endpoint to answer",
             context=lambda: log.read_text(errors="replace")[-2000:] if log.exists() else "(no endpoint log)")
    assert site.cli("status", "gamma", "--json").code == 0
