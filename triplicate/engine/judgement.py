"""One judgement of a repository file that could not be taken as listed.

Every restic file but ``config`` is named by the SHA-256 of its content. When a
file's content does not hash to its name, or it cannot be read at all, the
mirror, the keyless verifier and the daemon all ask :func:`judge_mismatch` what
it is, so that the three never disagree: still being written (an in-place
upload, modified within ``in_progress_grace``), vanished (gone since the
listing, or listed where it cannot be opened), corrupt, unreadable, or
suspicious (modified in the future: its age says nothing, so it is never taken
for a recent upload).
"""

from __future__ import annotations

from enum import StrEnum

from triplicate.storage.backend import Backend, NotFound, StorageError
from triplicate.storage.handle import Handle

# Clocks of a server and its disks drift by a few seconds; beyond this a time is in the future.
FUTURE_TOLERANCE_SECONDS = 60.0


class Outcome(StrEnum):
    """Why a listed file was not taken (copied, or judged good)."""

    IN_PROGRESS = "in_progress"
    VANISHED = "vanished"
    CORRUPT = "corrupt"
    UNREADABLE = "unreadable"
    SUSPICIOUS_FUTURE_MTIME = "future_mtime"

    @property
    def content_mismatch(self) -> bool:
        """The content was read and did not hash to the name (judged by time only afterwards)."""
        return self in (Outcome.IN_PROGRESS, Outcome.CORRUPT, Outcome.SUSPICIOUS_FUTURE_MTIME)

    @property
    def description(self) -> str:
        """A few words for logs and tables: "still being written", "corrupt", ..."""
        return _DESCRIPTIONS[self]

    def advice(self, client: str, path: str) -> str:
        """One sentence: what the operator should do about ``path`` of ``client``'s primary."""
        quarantine = f"`triplicate quarantine {client} {path}`"
        heal = f"`triplicate heal {client}`"
        if self is Outcome.IN_PROGRESS:
            return (f"if no backup or prune of {client} is running, the upload was cut short: move it "
                    f"aside with {quarantine}, then run {heal}.")
        if self is Outcome.VANISHED:
            name = path.rpartition("/")[2]
            return (f"it is listed but cannot be opened at {path}: it is in another data/ sub-folder "
                    f"(`find {client} -name {name}` in repos_dir): move it there.")
        if self is Outcome.CORRUPT:
            return f"its content does not match its name: move it aside with {quarantine}, then run {heal}."
        if self is Outcome.UNREADABLE:
            return (f"it cannot be read as a regular file (a link, a FIFO or a device, denied, or a failing "
                    f"disk): put the real file in its place, fix its permissions or the disk, or move it aside "
                    f"with {quarantine}.")
        return ("its modification time is in the future and its content does not match its name: check "
                f"the server's clock, then move it aside with {quarantine} and run {heal}.")


_DESCRIPTIONS = {
    Outcome.IN_PROGRESS: "still being written",
    Outcome.VANISHED: "vanished",
    Outcome.CORRUPT: "corrupt",
    Outcome.UNREADABLE: "unreadable",
    Outcome.SUSPICIOUS_FUTURE_MTIME: "modified in the future",
}


def judge_mismatch(mtime: float | None, now: float, grace: float) -> Outcome:
    """What a file whose content does not hash to its name is, by its modification time.

    Returns IN_PROGRESS when it was modified less than ``grace`` seconds ago (an
    in-place upload), SUSPICIOUS_FUTURE_MTIME when its time is more than a minute
    ahead of ``now`` (never taken for recent), else CORRUPT (also when the time is
    unknown: nothing says it is being written).
    """
    if mtime is None:
        return Outcome.CORRUPT
    if mtime > now + FUTURE_TOLERANCE_SECONDS:
        return Outcome.SUSPICIOUS_FUTURE_MTIME
    if now - mtime < grace:
        return Outcome.IN_PROGRESS
    return Outcome.CORRUPT


def judge_file(backend: Backend, handle: Handle, now: float, grace: float) -> Outcome:
    """Judge a file of ``backend`` whose content did not hash to its name, looking at it again.

    Returns VANISHED when it is gone, UNREADABLE when it cannot even be looked at,
    else :func:`judge_mismatch` on its modification time. Never raises StorageError.
    """
    try:
        info = backend.stat(handle)
    except NotFound:
        return Outcome.VANISHED
    except StorageError:
        return Outcome.UNREADABLE
    return judge_mismatch(info.mtime, now, grace)


def is_failure(outcome: Outcome, unsettled_for: float, grace: float) -> bool:
    """Whether a file unsettled for ``unsettled_for`` seconds is a failure now.

    Returns True for a corrupt file (its modification time already shows it is older
    than ``grace``), for one that cannot be read as a file (a FIFO, a device, a link, denied:
    waiting changes nothing) and for any file unsettled across runs for ``grace`` or longer:
    nothing that does not converge stays a quiet "incomplete" run.
    """
    return outcome in (Outcome.CORRUPT, Outcome.UNREADABLE) or unsettled_for >= grace


def problem_text(client: str, path: str, outcome: Outcome, unsettled_for: float) -> str:
    """The failure's one line: "the primary's data/ab/<id> is corrupt (for 6m): <advice>"."""
    from triplicate.state.replication import PRIMARY_PROBLEM_PREFIX
    from triplicate.units import format_duration

    return (f"{PRIMARY_PROBLEM_PREFIX}{path} is {outcome.description} (unsettled for "
            f"{format_duration(max(0.0, unsettled_for))}): {outcome.advice(client, path)}")
