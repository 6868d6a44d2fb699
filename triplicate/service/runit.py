"""Talking to runit: reading a service's supervise folder, sending sv commands, finding runsvdir.

The supervise folder is runsv's public interface (see runsv(8)): ``supervise/status``
holds the state since when, the pid and what is wanted; ``supervise/ok`` is a FIFO
that only a running runsv reads, so opening it for writing tells whether one runs.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from triplicate import execute

# supervise/status (20 bytes): TAI64N label of the last change (12 bytes, big endian),
# pid (4 bytes, little endian), paused flag, want ('u'/'d'), TERM-sent flag, state.
_TAI_OFFSET = 2**62 + 10  # a TAI64 label is 2^62 + TAI seconds; TAI is 10 s ahead of Unix time here
_STATES = {0: "down", 1: "run", 2: "finish"}
POLL = 0.05


@dataclass(frozen=True)
class ServiceState:
    """What runsv says about one service. ``state`` is run, down, finish, or

    ``unsupervised`` (no runsv is running for it; pid and since are then None) or
    ``absent`` (the folder does not exist).
    """

    state: str
    pid: int | None = None
    since: float | None = None  # Unix time of the last state change
    want: str | None = None  # "up" or "down"
    paused: bool = False

    def seconds(self, now: float) -> float | None:
        """How long the service has been in its state (its uptime when running)."""
        return None if self.since is None else max(0.0, now - self.since)

    @property
    def running(self) -> bool:
        return self.state == "run"


def runsv_running(service_dir: Path) -> bool:
    """True when a runsv supervises ``service_dir`` now."""
    try:
        descriptor = os.open(service_dir / "supervise" / "ok", os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.EACCES:  # not ours to write: trust the recorded pid instead
            pid = read_status(service_dir)
            return pid is not None and pid.pid is not None and process_alive(pid.pid)
        return False  # ENXIO: no reader; ENOENT: never supervised
    os.close(descriptor)
    return True


def read_status(service_dir: Path) -> ServiceState | None:
    """Decode ``supervise/status``; None when it is missing or not runit's 20-byte format."""
    try:
        raw = (service_dir / "supervise" / "status").read_bytes()
    except OSError:
        return None
    if len(raw) < 20:
        return None
    # Integer arithmetic first: a float cannot hold 2^62 + seconds to the second.
    unix_seconds = int.from_bytes(raw[0:8], "big") - _TAI_OFFSET + int.from_bytes(raw[8:12], "big") / 1e9
    pid = int.from_bytes(raw[12:16], "little")
    state = _STATES.get(raw[19], "unknown")
    return ServiceState(
        state=state,
        pid=pid or None,
        since=unix_seconds,
        want="up" if raw[17:18] == b"u" else "down",
        paused=bool(raw[16]),
    )


def service_state(service_dir: Path) -> ServiceState:
    """The state of a service, telling apart a live runsv's report from a stale file."""
    if not service_dir.is_dir():
        return ServiceState("absent")
    status = read_status(service_dir)
    if status is None or not runsv_running(service_dir):
        return ServiceState("unsupervised")
    return status


def sv(command: str, service_dir: Path, wait: float = 7.0) -> execute.Result:
    """Run ``sv -w WAIT COMMAND DIR`` (absolute path: sv reads relative names under $SVDIR).

    Never raises on sv's exit status; the caller looks at the state afterwards.
    Raises CommandFailed when sv is not installed.
    """
    return execute.run(["sv", "-w", str(max(1, round(wait))), command, str(service_dir.absolute())],
                       check=False, timeout=wait + 10)


def process_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[0] != b"Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class Supervisor:
    """A live runsvdir or runsv: what it works on and who its parent is."""

    pid: int
    parent: int
    program: str  # "runsvdir" or "runsv"
    folder: Path  # runsvdir: the folder it watches; runsv: the service folder it supervises


def supervisors() -> list[Supervisor]:
    """Every live runsvdir and runsv of this machine that may be inspected, whoever started it.

    runsvdir's folder is its first argument that is not an option (relative to its
    working folder); runsv works in the service folder it supervises.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            program = (entry / "comm").read_text().strip()
            if program not in ("runsvdir", "runsv"):
                continue
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if fields[0] == b"Z":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
            folder = cwd
            if program == "runsvdir":
                arguments = [arg.decode() for arg in (entry / "cmdline").read_bytes().split(b"\0")[1:] if arg]
                watched = next((arg for arg in arguments if not arg.startswith("-")), None)
                if watched is None:
                    continue
                folder = cwd / watched
            found.append(Supervisor(int(entry.name), int(fields[1]), program, folder.resolve()))
        except (OSError, UnicodeDecodeError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to inspect
    return found


def supervisors_below(folder: Path, every: list[Supervisor] | None = None) -> list[Supervisor]:
    """The runsvdir and runsv processes working on ``folder`` or below it, whoever their parent."""
    wanted = folder.resolve()
    return [found for found in (supervisors() if every is None else every) if found.folder.is_relative_to(wanted)]


def orphans(below: Path, every: list[Supervisor] | None = None) -> list[Supervisor]:
    """Supervisors working on ``below`` or under it whose parent is no supervisor.

    In a healthy tree every runsv is the child of a runsvdir and every runsvdir but
    the top one the child of a runsv. A runsvdir whose runsv was killed lives on
    under init and runs its services with nobody to stop them: an orphan.
    """
    every = supervisors() if every is None else every
    pids = {found.pid for found in every}
    return [found for found in supervisors_below(below, every) if found.parent not in pids]


def find_runsvdir(folder: Path) -> int | None:
    """The pid of a runsvdir watching ``folder``, or None."""
    wanted = folder.resolve()
    return next((found.pid for found in supervisors() if found.program == "runsvdir" and found.folder == wanted),
                None)


def end_supervisors(folder: Path, timeout: float, only_orphans: bool = False) -> list[int]:
    """Stop the runsvdir and runsv processes working on ``folder`` or below (only the orphans
    among them, with ``only_orphans``), whoever their parent; wait until they are gone.

    A runsvdir gets HUP (it sends TERM to each of its runsv and exits); a runsv gets
    TERM (it stops its service and exits). What still lives after ``timeout`` seconds
    is killed, with what it started. Returns the pids killed.
    """
    found = orphans(folder) if only_orphans else supervisors_below(folder)
    if not found:
        return []
    for supervisor in found:
        _signal(supervisor.pid, signal.SIGHUP if supervisor.program == "runsvdir" else signal.SIGTERM)
    pids = {supervisor.pid for supervisor in found}

    def remaining() -> list[Supervisor]:
        return [left for left in supervisors_below(folder) if not only_orphans or left.pid in pids
                or left.parent in pids]

    if wait_until(lambda: not remaining(), timeout):
        return []
    killed = []
    for supervisor in remaining():
        # runsv first, so that it cannot start its service again; then what it had started.
        children = descendants(supervisor.pid)
        _signal(supervisor.pid, signal.SIGKILL)
        for pid in children:
            _signal(pid, signal.SIGKILL)
        killed += [supervisor.pid, *children]
    wait_until(lambda: not any(process_alive(pid) for pid in killed), 5.0)
    return killed


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``: its children, theirs, and so on."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += parents.get(child, [])
    return found


def port_answers(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host``:``port`` now (a wildcard host: loopback)."""
    target = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with socket.create_connection((target, port), timeout=2):
            return True
    except OSError:
        return False


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)


def kill_leftovers(service_dirs: Iterable[Path]) -> list[int]:
    """Kill the service of every folder whose runsv still runs, and make that runsv exit.

    The last resort when a service ignores TERM. Returns the pids killed.
    """
    killed = []
    for folder in service_dirs:
        status = read_status(folder)
        if not runsv_running(folder):
            continue
        if status is not None and status.pid:
            killed.append(status.pid)
        # runsv's control FIFO: d(own), k(ill the service), (e)x(it once it is down).
        try:
            descriptor = os.open(folder / "supervise" / "control", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            os.write(descriptor, b"dkx")
        finally:
            os.close(descriptor)
    return killed
