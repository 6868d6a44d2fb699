"""``triplicate recover CLIENT --drill``: rebuild the repository into a scratch folder, and time it.

The same rebuild as ``recover``, from the same locations, into a folder of its
own (``--to DIR``, kept; else a private folder under ``state_dir/drills``,
removed afterwards), then ``restic check`` on it when the client's key is
configured. The rebuild's duration is the recovery time objective measured; it
is recorded for ``status``, the metrics and the daemon's notifications.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from triplicate import restic
from triplicate.actions.recover import RecoverReport, Target, recover_client
from triplicate.config.model import Config
from triplicate.engine.mirror import Progress
from triplicate.errors import UsageError
from triplicate.execute import CommandFailed
from triplicate.fsutil import make_private_folder, remove_stale_folders, remove_tree
from triplicate.state.recover_drill import DrillRecord, RecoverDrillState
from triplicate.storage.local import LocalBackend

DRILLS_DIR = "drills"
DRILL_PREFIX = "drill-"


@dataclass
class DrillReport:
    rebuild: RecoverReport
    restic_check: str = "not run"  # 'passed', 'failed', 'not run'
    check_seconds: float | None = None
    check_errors: list[str] | None = None
    kept_at: str | None = None  # --to: where the rebuilt repository stays
    previous_ok: bool | None = None

    @property
    def ok(self) -> bool:
        return self.rebuild.ok and self.restic_check != "failed"

    def to_json(self) -> dict[str, object]:
        return {"client": self.rebuild.client, "ok": self.ok, "drill": True,
                "recovery_seconds": round(self.rebuild.seconds, 3), "restic_check": self.restic_check,
                "check_seconds": None if self.check_seconds is None else round(self.check_seconds, 3),
                "check_errors": self.check_errors, "kept_at": self.kept_at, "rebuild": self.rebuild.to_json()}


def run_drill(config: Config, client: str, sources: list[str], to: Path | None = None,
              stop: threading.Event | None = None, progress: Progress | None = None) -> DrillReport:
    """Rebuild ``client`` from ``sources`` into a scratch folder, check it, record the time; return the report.

    Raises UsageError when ``to`` is a file or a non-empty folder,
    CannotRun when no location can give the repository.
    """
    config.client(client)
    folder = _folder(config, client, to)
    try:
        target = Target(LocalBackend(folder, f"drill folder {folder}"), primary=False)
        report = DrillReport(recover_client(config, client, sources, target=target, stop=stop, progress=progress),
                             kept_at=str(folder) if to is not None else None)
        if report.rebuild.ok:
            _restic_check(config, client, folder, report)
    finally:
        if to is None:
            remove_tree(folder)
    if not report.rebuild.interrupted:
        with RecoverDrillState.opened(config.server.state_dir) as state:
            report.previous_ok = state.record(_record(report))
    return report


def _folder(config: Config, client: str, to: Path | None) -> Path:
    if to is None:
        # A folder of this process's own, so that the next drill cleans one a killed drill left.
        parent = config.server.state_dir / DRILLS_DIR
        remove_stale_folders(parent, DRILL_PREFIX)
        return make_private_folder(parent, DRILL_PREFIX)
    if to.exists() and not to.is_dir():
        raise UsageError(f"--to {to}: not a folder")
    if to.is_dir() and any(to.iterdir()):
        # A repository left there would be kept, not rebuilt: the time recorded would be no recovery's.
        raise UsageError(f"--to {to}: not empty (a drill rebuilds the whole repository into a new or empty folder, "
                         "and never writes over other files)")
    return to


def _restic_check(config: Config, client: str, folder: Path, report: DrillReport) -> None:
    settings = config.client(client)
    if settings.password_file is None and settings.password_command is None:
        return
    env = restic.restic_environment(str(folder), settings.password_file, settings.password_command)
    started = time.monotonic()
    try:
        outcome = restic.check(env)
    except CommandFailed as error:
        report.restic_check, report.check_errors = "failed", [str(error)]
        return
    report.check_seconds = time.monotonic() - started
    stderr = outcome.stderr.decode("utf-8", "replace")
    report.restic_check = "passed" if outcome.returncode == 0 else "failed"
    if outcome.returncode != 0:
        report.check_errors = [line.strip() for line in stderr.splitlines() if line.strip()][:20]


def _record(report: DrillReport) -> DrillRecord:
    rebuild = report.rebuild
    problems = [f"{name}: {source.problem}" for name, source in rebuild.sources.items() if source.problem]
    if rebuild.lost:
        problems.append(f"{len(rebuild.lost)} file(s) no location could give: {', '.join(list(rebuild.lost)[:3])}")
    if report.restic_check == "failed":
        problems.append("restic check failed: " + "; ".join((report.check_errors or [])[:3]))
    return DrillRecord(rebuild.client, time.time(), report.ok, rebuild.seconds, report.check_seconds,
                       rebuild.files_copied + rebuild.files_present, rebuild.bytes_copied + rebuild.bytes_present,
                       report.restic_check, {name: source.bytes for name, source in rebuild.sources.items()},
                       "; ".join(problems) or None)
