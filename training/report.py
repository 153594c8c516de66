"""The marketer report (`sendwise report`): one offline HTML site, logged to the champions' MLflow runs.

The site is assembled from sections. Each entry of `SECTIONS` is a function of the report's inputs
(`training.reporting.inputs.ReportInputs`: the champions with their runs and training samples, the settings,
where charts go, and the customers as sendwise would decide for them) that returns a `Section` (its page's
template and data, its charts already written) or None when it has nothing to say for the models asked for.
A new section is one such function added to the list; its page can use the generic template (paragraphs,
tables and figures from its context) or a template of its own under `training/reporting/templates/`.

The report reads what the pipeline left in the home and rebuilds nothing: the champions from the registry, the
samples their runs kept, the online features, the raw store's events and the Feast store's point-in-time rows.
It writes the site to `reports/site/` of the home (replacing the last one whole) and logs it to each
champion's run as the artifacts under `report/`. No customer id is written: every figure is an aggregate over
at least 50 customers or rows.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sendwise.asof import resolve_as_of
from sendwise.asof import text as time_text
from sendwise.settings import Settings
from training.registry import MODEL_NAMES, connect
from training.reporting.drivers import drivers_section
from training.reporting.inputs import Champion, ReportInputs, load_champion, missing_champion
from training.reporting.lift import lift_section
from training.reporting.model_card import model_cards_section
from training.reporting.offers import offers_section
from training.reporting.segments import segments_section
from training.reporting.send_time import send_time_section
from training.reporting.site import INDEX, Section, SiteFacts, now, render_site

ModelChoice = Literal["open", "send-time", "offer", "all"]
MODELS: dict[str, list[str]] = {"open": ["open_propensity"], "send-time": ["send_time"], "offer": ["next_best_offer"]}
"""`--model` -> the registered models it names (`all`: every one)."""
ARTIFACT_PATH = "report"
"""Where the site goes among each champion's run artifacts."""

SectionBuilder = Callable[[ReportInputs], Section | None]
SECTIONS: list[tuple[str, SectionBuilder]] = [
    ("drivers", drivers_section),
    ("segments", segments_section),
    ("send time", send_time_section),
    ("offers", offers_section),
    ("realized lift", lift_section),
    ("model cards", model_cards_section),
]
"""The site's sections in page order, each with the name its progress and timing are shown under. A new section
is one more `(name, builder)` entry here."""


@dataclass
class ReportResult:
    """What the report wrote, what it could not and why, and how long each part took."""

    index: Path | None = None
    pages: list[Path] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    """The sections the pages were rendered from (their figures as data)."""
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    logged_runs: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def _champions(
    settings: Settings, result: ReportResult, wanted: list[str], work_dir: Path
) -> tuple[dict[str, Champion], ReportInputs]:
    client = connect(settings)
    every = {}
    for name in MODEL_NAMES:
        found = load_champion(settings, client, name)
        if found is not None:
            every[name] = found
        elif name in wanted:
            result.missing[name] = missing_champion(settings, name)
    chosen = {name: every[name] for name in wanted if name in every}
    return chosen, ReportInputs(settings, client, chosen, every, work_dir)


def _log_to_runs(inputs: ReportInputs, site: Path) -> list[str]:
    """The site as artifacts (`report/`) of every explained champion's run (once per run)."""
    runs = sorted({c.run_id for c in inputs.champions.values() if c.run_id})
    for run_id in runs:
        inputs.client.log_artifacts(run_id, str(site), artifact_path=ARTIFACT_PATH)
    return runs


def _replace(built: Path, target: Path) -> None:
    """Put the site built in `built` at `target`, replacing the one there (if any)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    shutil.copytree(built, target)
    if old.exists():
        shutil.rmtree(old)


def write_report(
    settings: Settings,
    model: ModelChoice = "all",
    site_dir: Path | None = None,
    log_to_mlflow: bool = True,
    console: Console | None = None,
    progress: bool = True,
) -> ReportResult:
    """Build the site for the champions `model` names into `site_dir` (default: `reports/site/` of the home) and
    log it to their runs. Returns what was written; `missing` says, per model, why it has no part and what to
    run."""
    result = ReportResult()
    target = site_dir or settings.reports_dir / "site"
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} sections"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=True,
        disable=not progress,
    )
    with tempfile.TemporaryDirectory(prefix="sendwise-report-") as scratch, bar:
        started = time.perf_counter()
        task = bar.add_task("reading the champions", total=len(SECTIONS))
        champions, inputs = _champions(settings, result, MODELS.get(model, list(MODEL_NAMES)), Path(scratch))
        result.seconds["champions"] = time.perf_counter() - started
        if not champions:
            return result
        inputs.plots_dir.mkdir(parents=True)
        inputs.status = lambda text: bar.update(task, description=text)
        sections: list[Section] = []
        for name, build in SECTIONS:
            began = time.perf_counter()
            bar.update(task, description=name)
            section = build(inputs)
            result.seconds[name] = time.perf_counter() - began
            if section is not None:
                sections.append(section)
                result.notes.extend(n for n in section.notes if n not in result.notes)
            bar.advance(task)
        began = time.perf_counter()
        facts = SiteFacts(
            home=str(settings.home),
            generated_at=now(),
            as_of=time_text(resolve_as_of(settings).time),
            champions={name: c.version for name, c in champions.items()},
        )
        render_site(sections, facts, inputs.site_dir)
        _replace(inputs.site_dir, target)
        result.seconds["site"] = time.perf_counter() - began
    began = time.perf_counter()
    if log_to_mlflow:
        result.logged_runs = _log_to_runs(inputs, target)
    result.seconds["mlflow"] = time.perf_counter() - began
    result.index = target / INDEX
    result.pages = [target / s.page for s in sections]
    result.sections = sections
    return result
