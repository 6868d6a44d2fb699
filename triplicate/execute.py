"""The one place that spawns subprocesses (restic, rclone, runit's sv, user hooks).

Secrets travel in the environment or in files, never in argv; whatever is
registered as secret is masked in every log line and error message.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from triplicate.errors import TriplicateError

T = TypeVar("T")
log = logging.getLogger("triplicate.execute")
MASK = "***"
# The programs run() waits for, with the stop event of the scope that started them.
_running: dict[subprocess.Popen[bytes], threading.Event] = {}
_running_lock = threading.RLock()  # re-entrant: a signal handler may call terminate_running()
_scope: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("triplicate_stop", default=None)


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class CommandFailed(TriplicateError):
    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


class Interrupted(CommandFailed):
    """The program was stopped by :func:`terminate_running` (or not started): its outcome says
    nothing about what it was checking, and is not to be recorded as a failure."""


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def command(argv: list[str]) -> list[str]:
    """The program and its first word that is not an option: ``restic backup``, ``sv status``."""
    words = [word for word in argv[1:] if not word.startswith("-") and not word.isdigit()]
    return [argv[0], *words[:1]]


def describe(argv: list[str], secrets: Iterable[str] = ()) -> str:
    return mask(shlex.join(argv), secrets)


def environment(extra: Mapping[str, str] | None = None, remove: Iterable[str] = ()) -> dict[str, str]:
    """The current environment plus ``extra``, less ``remove``."""
    env = {key: value for key, value in os.environ.items() if key not in set(remove)}
    env.update(extra or {})
    return env


def run(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    stdin: bytes | None = None,
    timeout: float | None = None,
    check: bool = True,
    cwd: str | None = None,
) -> Result:
    """Run a program to its end and capture its output.

    Raises CommandFailed when it is missing, times out, or (with ``check``) exits non-zero,
    with its last error line, secrets masked.
    """
    secrets = list(secrets)
    log.debug("run: %s", describe(argv, secrets))
    stop = _scope.get()
    if stop is not None and stop.is_set():
        raise Interrupted(f"{describe(command(argv), secrets)}: not started: stopping")
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=dict(env) if env is not None else None, cwd=cwd)
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: program not found (is it installed?)") from None
    if stop is not None:
        with _running_lock:
            _running[process] = stop
            if stop.is_set():  # terminate_running() came between the check above and now
                process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise CommandFailed(f"{describe(command(argv), secrets)}: timed out after {timeout:.0f}s") from None
    except BaseException:  # interrupted (SystemExit from a signal handler...): never leave it running
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        raise
    finally:
        with _running_lock:
            _running.pop(process, None)
    result = Result(argv, process.returncode, stdout, stderr)
    if stop is not None and stop.is_set() and result.returncode != 0:
        raise Interrupted(f"{describe(command(argv), secrets)}: interrupted: stopping", result)
    if check and result.returncode != 0:
        raise CommandFailed(failure_message(result, secrets), result)
    return result


@contextmanager
def stoppable(stop: threading.Event) -> Iterator[None]:
    """Programs :func:`run` starts in this context (and in threads given it, as
    ``asyncio.to_thread`` does) are stopped by ``terminate_running(stop)``."""
    token = _scope.set(stop)
    try:
        yield
    finally:
        _scope.reset(token)


class ScopedPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context, so programs they start stay
    in its :func:`stoppable` scope (a plain pool's threads start with an empty context)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def terminate_running(stop: threading.Event) -> int:
    """Set ``stop`` and interrupt every program :func:`run` waits for in its scope (a stopping
    daemon's restic prune, check or restore); none starts there from then on. SIGINT, not
    SIGTERM: restic 0.14 removes its repository lock on SIGINT only. Returns how many."""
    with _running_lock:
        stop.set()
        running = [process for process, scope in _running.items() if scope is stop and process.poll() is None]
    for process in running:
        log.info("stopping: %s (pid %d)", describe(command(list(process.args))), process.pid)  # type: ignore[arg-type]
        process.send_signal(signal.SIGINT)
    return len(running)


async def run_async(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
    stdin: bytes | None = None,
    timeout: float | None = None,
) -> Result:
    """As :func:`run`, for the daemon; never checks the exit status (the caller judges).

    Raises CommandFailed when the program is missing or times out (it is killed then).
    """
    secrets = list(secrets)
    log.debug("run: %s", describe(argv, secrets))
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: program not found") from None
    except PermissionError:
        raise CommandFailed(f"{argv[0]}: not executable") from None
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError):
        process.kill()
        await process.wait()
        if timeout is not None:
            raise CommandFailed(f"{describe(argv[:1], secrets)}: timed out after {timeout:.0f}s") from None
        raise
    return Result(argv, process.returncode or 0, stdout, stderr)


def start(argv: list[str], *, env: Mapping[str, str] | None = None, secrets: Iterable[str] = (),
          capture_log: bool = False) -> subprocess.Popen[bytes]:
    """Start a long-running program (a supervisor, a server) in the background.

    Its output goes where ours goes; with ``capture_log`` its standard output is
    discarded and its standard error is a pipe the caller reads (a server's log: its
    address, its errors). The caller stops it with :func:`stop`. Raises
    CommandFailed when the program is missing.
    """
    log.debug("start: %s", describe(argv, secrets))
    try:
        return subprocess.Popen(argv, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL if capture_log else None,
                                stderr=subprocess.PIPE if capture_log else None)
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: program not found (is it installed?)") from None


def replace_process(argv: list[str]) -> None:
    """Become ``argv`` (exec): used to hand the foreground to a supervisor. Never returns.

    Raises CommandFailed when the program is missing or not executable.
    """
    log.debug("exec: %s", describe(argv))
    for stream in (sys.stdout, sys.stderr):  # what we printed must not vanish with our buffers
        stream.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        raise CommandFailed(f"{argv[0]}: cannot run: {error.strerror}") from None


def failure_message(result: Result, secrets: Iterable[str] = ()) -> str:
    lines = [line for line in result.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no error output"
    return mask(f"{describe(command(result.argv))} exited with status {result.returncode}: {last}", secrets)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop a program started by :func:`start`: TERM, then KILL after ``timeout``; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
