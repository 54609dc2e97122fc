"""`output/sweep-NAME/report.html`: found from a name or a path, made from the CSV and the logs.

A sweep's files are `output/sweep-NAME.csv` (the results) beside `output/sweep-NAME/` (logs,
the plan, and the report). Given a NAME, the sweep is looked for in the output folders asked
(the cluster file's project, then the current folder); given a PATH, it is that folder or
that CSV. Logs are read only from the sweep's own `logs/` folder and never through a link, so
a CSV naming another file cannot make the report read it.
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import confined
from ..errors import ConfigError, InfraError
from ..sweep.plan import NAME_PATTERN
from ..sweep.report import ReportInputError, RunCurve, build_report, read_curve, read_results_csv
from ..sweep.results import SortSpec

REPORT_FILE = "report.html"
LOGS_FOLDER = "logs"
MAX_LOG_BYTES = 20 * 1024 * 1024  # a log larger than this is read from its end only
REFRESH_SECONDS = 30.0  # while a sweep runs, its report is rewritten at most this often (a page is ~5 MB)


@dataclass(frozen=True)
class SweepFiles:
    """Where one sweep's results are."""

    name: str
    csv_path: Path
    folder: Path  # output/sweep-NAME/: logs/ and report.html

    @property
    def report_path(self) -> Path:
        return self.folder / REPORT_FILE


def files_of(csv_path: Path) -> SweepFiles:
    stem = csv_path.stem
    name = stem[len("sweep-"):] if stem.startswith("sweep-") else stem
    return SweepFiles(name, csv_path, csv_path.with_name(stem))


def find_sweep(target: str, output_dirs: list[Path]) -> SweepFiles:
    """The sweep a user named: a folder `.../sweep-NAME`, a CSV, or a NAME in one of `output_dirs`."""
    path = Path(target)
    if path.is_dir():
        folder = path.resolve() if path.name in ("", ".", "..") else path  # `.`: its parent is needed
        stem = folder.resolve().name
        for csv_path in (folder.parent / f"{stem}.csv", folder / "results.csv"):
            if csv_path.is_file():
                return SweepFiles(files_of(folder.parent / f"{stem}.csv").name, csv_path, folder)
        raise ConfigError(f"sweep report: no results CSV for {folder} (looked for {folder.parent / (stem + '.csv')})")
    if path.suffix == ".csv" or "/" in target or path.exists():
        if not path.is_file():
            raise ConfigError(f"sweep report: no such sweep results: {path}")
        return files_of(path)
    name = target[len("sweep-"):] if target.startswith("sweep-") else target
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"sweep report: {target!r} is neither a sweep name nor an existing path")
    looked = []
    for output_dir in output_dirs:
        csv_path = output_dir / f"sweep-{name}.csv"
        looked.append(str(csv_path))
        if csv_path.is_file():
            return files_of(csv_path)
    raise ConfigError(f"sweep report: no sweep {name!r}: no {' nor '.join(looked)}")


def _log_lines(folder: Path, log_cell: str) -> list[str] | None:
    """A run's log lines, read inside `folder/logs/` only; None when there is none to read."""
    base = posixpath.basename(log_cell.strip())
    if not base:
        return None
    try:
        data, _ = confined.read_file(folder, posixpath.join(LOGS_FOLDER, base))
    except (OSError, confined.ConfinementError):
        return None
    return data[-MAX_LOG_BYTES:].decode("utf-8", errors="replace").splitlines()


def read_curves(files: SweepFiles, rows: list[dict[str, str]]) -> dict[str, RunCurve]:
    curves = {}
    for row in rows:
        lines = _log_lines(files.folder, row.get("log", ""))
        if lines is not None:
            curves[row["id"]] = read_curve(lines)
    return curves


def report_html(files: SweepFiles, sort: SortSpec | None = None, top: int = 10) -> str:
    """The report's page for a sweep's current results (ConfigError for results it cannot read)."""
    from ..ui.sweep_report import render_report_html

    try:
        text = files.csv_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"sweep report: cannot read {files.csv_path}: {exc}") from None
    try:
        table = read_results_csv(text)
        report = build_report(files.name, table, read_curves(files, table.rows), sort, top)
    except ReportInputError as exc:
        raise ConfigError(f"sweep report: {files.csv_path}: {exc}") from None
    return render_report_html(report, source=str(files.csv_path.name))


def write_report(files: SweepFiles, sort: SortSpec | None = None, top: int = 10) -> Path:
    """Write (atomically, never through a link) the sweep's report.html; its path."""
    page = report_html(files, sort, top)
    try:
        confined.replace_file(files.folder.parent, f"{files.folder.name}/{REPORT_FILE}", page.encode("utf-8"))
    except OSError as exc:
        raise InfraError(f"sweep report: cannot write {files.report_path}: {exc.strerror or exc}") from None
    return files.report_path


class ReportRefresher:
    """Rewrites a running sweep's report now and then, and once at its end.

    The report is for people looking, never a reason to lose a sweep: any failure to make it
    is one warning line (once per distinct reason), and the sweep goes on.
    """

    def __init__(self, csv_path: Path, *, sort: SortSpec | None, top: int, note: Callable[[str], None],
                 every_seconds: float = REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.files = files_of(csv_path)
        self.sort = sort
        self.top = top
        self.note = note
        self.every_seconds = every_seconds
        self.clock = clock
        self.last = clock()
        self.warned: set[str] = set()

    def __call__(self, final: bool = False) -> Path | None:
        if not final and self.clock() - self.last < self.every_seconds:
            return None
        self.last = self.clock()
        try:
            return write_report(self.files, self.sort, self.top)
        except Exception as exc:  # noqa: BLE001 - whatever broke the report must not break the sweep
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if reason not in self.warned:
                self.warned.add(reason)
                self.note(f"warning: no report this time: {reason}")
            return None
