"""The backup server for real: runsvdir, the REST endpoints, restic clients, syncd, on 127.0.0.1.

One supervised site per module (starting it costs seconds); each test leaves the
clients as it found them: enabled and running.
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import is_alive, processes_mentioning, real_uid
from tests.support.repository import restic_env, write_files
from tests.support.server import Site, http_status, runsv_pid
from tests.support.wait import wait_until
from triplicate.service.scripts import triplicate_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A supervised site with clients alpha and beta, added while supervision runs."""
    instance = Site(tmp_path_factory.mktemp("site"))
    assert instance.cli("init").code == 0
    instance.start_supervision()
    try:
        instance.clients = {name: instance.add_client(name, "usb", "nas") for name in ("alpha", "beta")}
        yield instance
    finally:
        leftovers = instance.stop_supervision()
    assert leftovers == [], f"processes left after supervision stopped: {leftovers}"


@pytest.fixture(scope="module")
def alpha_backup(site: Site) -> str:
    """alpha's repository, created and backed up to through its URL; returns the snapshot's ID."""
    url = site.clients["alpha"]["url"]
    wait_until(lambda: http_status("GET", _base(url) + "alpha/config") == 401, 10, "alpha's endpoint")
    init = site.restic(url, "init")
    assert init.returncode == 0, init.stderr
    write_files(site.root / "data", "alpha", count=3, size=1 << 20)
    backup = site.restic(url, "backup", "-q", str(site.root / "data"))
    assert backup.returncode == 0, backup.stderr
    snapshots = json.loads(site.restic(url, "snapshots", "--json").stdout)
    assert len(snapshots) == 1
    return str(snapshots[0]["id"])


def _base(url: object) -> str:
    """``http://127.0.0.1:PORT/`` of a client's ``rest:http://user:password@host:port/name/``."""
    address = str(url).removeprefix("rest:http://").split("@", 1)[1].split("/", 1)[0]
    return f"http://{address}/"


def test_a_backup_through_the_endpoint_reaches_every_location(site: Site, alpha_backup: str) -> None:
    primary = site.root / "repos" / "alpha" / "snapshots" / alpha_backup
    assert primary.is_file()
    for location in ("usb", "nas"):
        replica = site.root / location / "alpha" / "snapshots" / alpha_backup
        wait_until(replica.is_file, 20, f"the snapshot in {location}")
        assert replica.read_bytes() == primary.read_bytes()
        listed = site.restic(str(site.root / location / "alpha"), "snapshots", "--json")
        assert [snapshot["id"] for snapshot in json.loads(listed.stdout)] == [alpha_backup]

    def replicated() -> bool:
        report = site.cli("status", "alpha", "--json").json()["clients"]["alpha"]
        return all(row["snapshots"] == 1 and row["last_sync"] in (None, "ok") for row in report["locations"].values())

    wait_until(replicated, 10, "status to show the snapshot everywhere")
    status = site.cli("status", "alpha", "--json")
    assert status.code == 0, status.out
    client = status.json()["clients"]["alpha"]
    assert client["enabled"] and client["problems"] == []
    assert {service: row["state"] for service, row in client["services"].items()} == \
        {"supervisor": "run", "rest": "run", "syncd": "run"}
    assert all(0 <= row["for_seconds"] <= time.time() - site.supervised_since + 1
               for row in client["services"].values())
    locations = client["locations"]
    assert locations["usb"]["lag_seconds"] == 0 and locations["usb"]["newest_age_seconds"] is not None


def test_one_clients_credentials_open_nothing_of_another(site: Site) -> None:
    alpha, beta = site.clients["alpha"], site.clients["beta"]
    before = sorted(path.relative_to(site.root) for path in (site.root / "repos" / "beta").rglob("*"))
    # On beta's own endpoint alpha is nobody: 401.
    assert http_status("GET", _base(beta["url"]) + "beta/config", "alpha", alpha["password"]) == 401
    assert http_status("GET", _base(beta["url"]) + "beta/config", "beta", "guessed") == 401
    assert http_status("GET", _base(beta["url"]) + "beta/config") == 401
    # On alpha's endpoint, beta's folder is out of alpha's reach: 403, reading or writing.
    assert http_status("GET", _base(alpha["url"]) + "beta/config", "alpha", alpha["password"]) == 403
    assert http_status("POST", _base(alpha["url"]) + "beta/keys/" + "0" * 64, "alpha", alpha["password"],
                       data=b"intruder") == 403
    assert http_status("POST", _base(alpha["url"]) + "beta/?create=true", "alpha", alpha["password"]) == 403
    after = sorted(path.relative_to(site.root) for path in (site.root / "repos" / "beta").rglob("*"))
    assert after == before


def test_a_client_cannot_delete_its_snapshots(site: Site, alpha_backup: str) -> None:
    alpha = site.clients["alpha"]
    snapshot_url = _base(alpha["url"]) + f"alpha/snapshots/{alpha_backup}"
    primary = site.root / "repos" / "alpha" / "snapshots" / alpha_backup
    content = primary.read_bytes()
    assert http_status("DELETE", snapshot_url, "alpha", alpha["password"]) == 403
    assert http_status("POST", snapshot_url, "alpha", alpha["password"], data=b"overwrite") == 403

    # restic retries a refused delete for about 44 s: watch it be refused, then interrupt it
    # (SIGINT makes restic remove its own lock, so the repository stays usable).
    forget = subprocess.Popen(
        ["restic", "--no-cache", "forget", alpha_backup], env=_restic_env(site, alpha["url"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        refusal = _read_until(forget, "403 Forbidden", timeout=20)
    finally:
        forget.send_signal(signal.SIGINT)
        forget.wait(timeout=20)
    assert f"Remove(<snapshot/{alpha_backup[:10]}>)" in refusal
    assert forget.returncode != 0
    assert primary.read_bytes() == content
    listed = site.restic(str(alpha["url"]), "snapshots", "--json")
    assert [snapshot["id"] for snapshot in json.loads(listed.stdout)] == [alpha_backup]


def _restic_env(site: Site, url: object) -> dict[str, str]:
    return restic_env(str(url), site.restic_password)


def _read_until(process: subprocess.Popen[str], text: str, timeout: float) -> str:
    """Standard error of ``process`` up to the first line containing ``text``."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        try:
            seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {text!r} within {timeout}s in: {seen}") from None
    return seen


@pytest.mark.parametrize("service", ["rest", "syncd"])
def test_a_killed_service_is_restarted_within_two_seconds(site: Site, service: str) -> None:
    wait_until(lambda: site.service_pid("beta", service), 10, f"beta's {service}")
    victim = site.service_pid("beta", service)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: site.service_pid("beta", service) not in (None, victim), 2.0, f"runsv to restart {service}")
    took = time.monotonic() - started
    restarted = site.service_pid("beta", service)
    assert restarted is not None and is_alive(restarted) and not is_alive(victim)
    if service == "rest":  # and it serves again
        # (a fresh Python, aiohttp and the bind: seconds on a loaded 2-core machine; the restart
        # itself is what must take under two)
        wait_until(lambda: _answers(site.clients["beta"]["url"]), 20, "the restarted endpoint")
    assert took < 2.0


def _answers(url: object) -> bool:
    return http_status("GET", _base(url) + "beta/config") == 401


def test_disable_leaves_no_process_and_enable_brings_everything_back(site: Site) -> None:
    beta = site.clients["beta"]
    markers = site.markers("beta", int(beta["port"]))
    wait_until(lambda: site.service_pid("beta", "rest") and site.service_pid("beta", "syncd"), 10,
               "beta's services")
    assert processes_mentioning(*markers)
    alpha_rest = site.service_pid("alpha", "rest")

    disabled = site.cli("client", "disable", "beta")
    assert disabled.code == 0 and disabled.err == "", disabled.err  # nothing had to be killed
    assert processes_mentioning(*markers) == []  # the command returns only when all are gone
    assert not site.layout.link("beta").exists()
    assert site.cli("status", "beta", "--json").json()["clients"]["beta"]["enabled"] is False
    assert site.service_pid("alpha", "rest") == alpha_rest  # the other client is untouched

    enabled = site.cli("client", "enable", "beta")
    assert enabled.code == 0, enabled.err
    wait_until(lambda: site.service_pid("beta", "rest") and site.service_pid("beta", "syncd"), 10,
               "beta's services to run again")
    wait_until(lambda: _answers(beta["url"]), 10, "beta's endpoint to answer again")
    status = site.cli("status", "beta", "--json")
    assert status.code == 0, status.out


def test_a_second_supervisor_is_refused(site: Site) -> None:
    second = subprocess.run([sys.executable, "-m", "triplicate", "-c", str(site.config_path), "supervise"],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 3
    assert "supervised already" in second.stderr


def test_supervise_recovers_from_a_killed_supervisor_and_stop_ends_every_process(tmp_path: Path) -> None:
    other = Site(tmp_path / "other", ports=2)
    assert other.cli("init").code == 0
    gamma = other.add_client("gamma", "usb")
    assert gamma["port"] == other.low
    other.start_supervision()
    try:
        wait_until(lambda: other.service_pid("gamma", "rest"), 15, "gamma's endpoint")
        first_rest = other.service_pid("gamma", "rest")
        # SIGKILL the top runsvdir: its runsv processes live on, orphaned, holding their locks.
        assert other.supervisor is not None
        other.supervisor.kill()
        other.supervisor.wait()
        assert first_rest is not None and is_alive(first_rest)
        other.start_supervision()  # stops the orphans, then supervises afresh
        wait_until(lambda: other.service_pid("gamma", "rest") not in (None, first_rest), 15,
                   "a fresh endpoint under the new supervisor")
        assert not is_alive(first_rest)

        stopped = other.cli("supervise", "--stop", "--timeout", "20")
        assert stopped.code == 0, stopped.err
        assert processes_mentioning(str(other.root)) == []
    finally:
        assert other.stop_supervision() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="running services as another user needs root")
def test_services_run_as_the_configured_user_and_still_serve_backups() -> None:
    nobody = pwd.getpwnam("nobody")
    # pytest's own temporary folders are root's alone; the service user must reach these.
    root = Path(tempfile.mkdtemp(prefix="triplicate-user-", dir="/tmp"))
    root.chmod(0o755)
    site = Site(root / "site", ports=2)
    try:
        # Our endpoint where that user may run our Python (a venv under a private home folder
        # may not be), else rclone's.
        runnable = subprocess.run(["chpst", "-u", "nobody", *triplicate_command(), "--version"],
                                  capture_output=True).returncode == 0
        program = "" if runnable else 'endpoint_program = "rclone"\n'
        site.config_path.write_text(site.config_path.read_text().replace(
            "[server]\n", f'[server]\nuser = "nobody"\n{program}'))
        for location in ("usb", "nas"):
            os.chown(site.root / location, nobody.pw_uid, nobody.pw_gid)
        assert site.cli("init").code == 0
        # The watchers share each location's limits in files there (storage/limit_files.py).
        assert (site.root / "state" / "limits").stat().st_uid == nobody.pw_uid
        added = site.add_client("delta", "usb")
        cache = root / "cache"  # the unit's CacheDirectory=, root's as systemd makes it
        cache.mkdir()
        site.start_supervision(env={"CACHE_DIRECTORY": str(cache), "XDG_CACHE_HOME": str(cache)})
        assert cache.stat().st_uid == nobody.pw_uid, "the services' cache stays root's"
        # (the pid is the run script's, which becomes chpst, which becomes the endpoint as nobody)
        wait_until(lambda: real_uid(site.service_pid("delta", "rest")) == nobody.pw_uid, 15, "the endpoint as nobody")
        wait_until(lambda: http_status("GET", _base(added["url"]) + "delta/config") == 401, 10, "the endpoint")
        assert site.restic(str(added["url"]), "init").returncode == 0
        backup = site.restic(str(added["url"]), "backup", "-q", str(site.root / "triplicate.toml"))
        assert backup.returncode == 0, backup.stderr
        snapshots = list((site.root / "repos" / "delta" / "snapshots").iterdir())
        assert len(snapshots) == 1 and snapshots[0].stat().st_uid == nobody.pw_uid
        # The watcher too, where this machine lets that user run our Python (a venv under a
        # private home folder does not).
        if runnable:
            replica = site.root / "usb" / "delta" / "snapshots" / snapshots[0].name
            wait_until(replica.is_file, 20, "the snapshot in usb, copied by a watcher running as nobody")
            wait_until(lambda: real_uid(site.service_pid("delta", "syncd")) == nobody.pw_uid, 5, "syncd as nobody")
    finally:
        leftovers = site.stop_supervision()
        shutil.rmtree(root, ignore_errors=True)
    assert leftovers == []


def test_one_shared_watcher_serves_every_client_and_follows_enable_and_disable(tmp_path: Path) -> None:
    shared = Site(tmp_path / "shared", ports=2)
    shared.config_path.write_text(shared.config_path.read_text().replace("[server]\n", '[server]\nsyncd = "shared"\n'))
    assert shared.cli("init").code == 0
    clients = {name: shared.add_client(name, "usb") for name in ("east", "west")}
    assert not shared.layout.service_dir("east", "syncd").exists()
    shared.start_supervision()
    try:
        watcher = shared.layout.shared_syncd
        wait_until(lambda: shared.service_pid("east", "rest") and shared.service_pid("west", "rest"), 15, "endpoints")
        wait_until(lambda: runsv_pid(watcher), 15, "the shared watcher")
        log = shared.root / "state" / "log" / "_shared" / "syncd" / "current"
        wait_until(lambda: log.is_file() and "2 client(s)" in log.read_text(), 15, "the watcher serving both")
        # Counted once it serves (until runsv's child has exec'd the run script, it is no syncd yet).
        assert len([p for p in processes_mentioning(str(shared.config_path)) if " syncd" in p.cmdline]) == 1

        url = str(clients["west"]["url"])
        wait_until(lambda: http_status("GET", _base(url) + "west/config") == 401, 10, "west's endpoint")
        assert shared.restic(url, "init").returncode == 0
        assert shared.restic(url, "backup", "-q", str(shared.config_path)).returncode == 0
        snapshot = next((shared.root / "repos" / "west" / "snapshots").iterdir()).name
        wait_until((shared.root / "usb" / "west" / "snapshots" / snapshot).is_file, 20, "west's snapshot in usb")

        pid = runsv_pid(watcher)
        assert shared.cli("client", "disable", "east").code == 0
        assert processes_mentioning(*shared.markers("east", int(clients["east"]["port"]))) == []
        wait_until(lambda: "reload: configuration applied, 1 client(s) served" in log.read_text(), 10,
                   "the watcher to drop east")
        assert runsv_pid(watcher) == pid  # reloaded, not restarted
        status = shared.cli("status", "--json").json()
        services = {service: row["state"] for service, row in status["clients"]["west"]["services"].items()}
        assert services == {"supervisor": "run", "rest": "run", "syncd (shared)": "run"}
        assert status["ok"] is True  # a disabled east beside a running shared watcher is fine
    finally:
        assert shared.stop_supervision() == []
