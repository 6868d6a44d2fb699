"""The process tree, through psutil: what the tests ask of the programs the product starts."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def children_of(pid: int, name: str | None = None) -> list[int]:
    """The processes whose parent is ``pid`` (only those named ``name``, when given)."""
    try:
        children = psutil.Process(pid).children()
    except _GONE:
        return []
    return [child.pid for child in children if name is None or process_name(child.pid) == name]


def descendants_of(pid: int) -> list[int]:
    """Every process below ``pid``: its children, theirs, and so on."""
    try:
        return [process.pid for process in psutil.Process(pid).children(recursive=True)]
    except _GONE:
        return []


def exists(pid: int) -> bool:
    """Whether ``pid`` is there at all, a zombie not yet reaped included (not waited for)."""
    return psutil.pid_exists(pid)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie waiting to be reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except _GONE:
        return False


def process_name(pid: int) -> str | None:
    """The program's name (the kernel's, as ``ps`` shows it), None when there is no such process."""
    try:
        return psutil.Process(pid).name()
    except _GONE:
        return None


def command_line(pid: int) -> list[str] | None:
    """The process's arguments, None when there is no such process (or it is a zombie)."""
    try:
        return psutil.Process(pid).cmdline()
    except _GONE:
        return None


def real_uid(pid: int | None) -> int | None:
    """The real user ID of a process, None when there is none."""
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).uids().real)
    except _GONE:
        return None


@dataclass(frozen=True)
class Process:
    pid: int
    cmdline: str
    cwd: str


def processes_mentioning(*markers: str) -> list[Process]:
    """Live processes (zombies excluded) whose command line or working folder contains a marker."""
    found = []
    for process in psutil.process_iter(["pid", "status", "cmdline", "cwd"]):
        info = process.info
        if info["pid"] == os.getpid() or info["status"] in (None, psutil.STATUS_ZOMBIE):
            continue
        if info["cmdline"] is None or info["cwd"] is None:
            continue  # exited meanwhile, or not ours to read
        cmdline = " ".join(info["cmdline"])
        if any(marker in cmdline or marker in info["cwd"] for marker in markers):
            found.append(Process(info["pid"], cmdline, info["cwd"]))
    return found
