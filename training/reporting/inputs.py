"""What every section of the report reads: the champions with their MLflow runs and training samples, the
home's settings, where charts go, and the customers as sendwise would decide for them (computed once, when a
section first asks)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import lightgbm as lgb
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from features.labels import message_sends
from sendwise.raw import load_table
from sendwise.registry import MODEL_NAMES, LoadedModel, champion
from sendwise.settings import Settings
from training.reporting.audience import Audience, load_engine, score_audience
from training.reporting.site import PLOTS
from training.samples import load_sample

PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
NO_AUDIENCE = (
    "no customer may be emailed now, or the home has no online features (run `sendwise pipeline --data DATA_DIR`)"
)
TITLES = {
    "open_propensity": "Open propensity",
    "send_time": "Send time",
    "next_best_offer": "Next best offer",
}


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """MLflow without its download progress bar for the block (the report has its own)."""
    before = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = before


@dataclass
class Champion:
    """A registered model's champion: its version, booster, the run that trained it and the sample it kept."""

    name: str
    version: str
    booster: lgb.Booster
    run: Run | None
    sample: pd.DataFrame | None
    registered_at: datetime | None = None

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name.replace("_", " "))

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run is not None else None


def load_champion(settings: Settings, client: MlflowClient, name: str) -> Champion | None:
    """`name`'s champion with its run and sample, or None where the registry has none."""
    found = champion(client, name)
    if found is None:
        return None
    version, booster = found
    details = client.get_model_version(name, version)
    run = None
    if details.run_id:
        try:
            run = client.get_run(details.run_id)
        except MlflowException:  # the run was deleted: the card says what it cannot
            run = None
    sample = load_sample(settings, details.run_id) if details.run_id else None
    registered = datetime.fromtimestamp(details.creation_timestamp / 1000, UTC) if details.creation_timestamp else None
    return Champion(name, version, booster, run, sample, registered)


@dataclass
class ReportInputs:
    """The home's champions (those the report explains, and every one, which the engine scores with)."""

    settings: Settings
    client: MlflowClient
    champions: dict[str, Champion]
    """The champions the report explains (`sendwise report --model`), by registered name."""
    every_champion: dict[str, Champion]
    work_dir: Path
    """A scratch folder of the report's own: the site is built in `site/` under it."""
    status: Callable[[str], None] = field(default=lambda _: None)
    """Says what is being computed (the progress bar's description)."""
    _tables: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    @property
    def site_dir(self) -> Path:
        return self.work_dir / "site"

    @property
    def plots_dir(self) -> Path:
        """Where sections write their charts (the site's `plots/`)."""
        return self.site_dir / PLOTS

    def models(self) -> dict[str, LoadedModel]:
        return {name: LoadedModel(c.version, c.booster) for name, c in self.every_champion.items()}

    @cached_property
    def audience(self) -> Audience | None:
        """The customers sendwise could email now, scored by the champions (None without online features)."""
        if not (self.settings.feast_dir / "registry.db").exists():
            return None
        self.status("scoring every customer as sendwise would decide")
        return score_audience(self.settings, load_engine(self.settings, self.models()))

    @cached_property
    def sends(self) -> pd.DataFrame | None:
        """One row per message of the raw store (who, campaign, when sent, decision id), None without sends."""
        events = self.table("email_events")
        if events is None or events.empty:
            return None
        return message_sends(events)

    def table(self, name: str) -> pd.DataFrame | None:
        """A raw-store table, read once for every section."""
        if name not in self._tables:
            self._tables[name] = load_table(self.settings, name)
        return self._tables[name]

    def run_artifact(self, found: Champion, path: str) -> Path | None:
        """A file of the champion's run artifacts, copied into the report's scratch folder (None: not there)."""
        if found.run_id is None:
            return None
        target = self.work_dir / "artifacts" / found.run_id
        target.mkdir(parents=True, exist_ok=True)
        with quiet_downloads():
            try:
                return Path(self.client.download_artifacts(found.run_id, path, str(target)))
            except (MlflowException, OSError):
                return None

    def explains(self, *names: str) -> bool:
        """Whether the report explains any of these models."""
        return any(name in self.champions for name in names)


def missing_champion(settings: Settings, name: str) -> str:
    """Why a model has no report, and what to run."""
    return (
        f"no {name} champion in the registry of {settings.home}: run `sendwise pipeline --data DATA_DIR` "
        "(or `sendwise train` after `sendwise ingest DATA_DIR`)"
    )


def missing_sample(settings: Settings, found: Champion) -> str:
    return (
        f"the {found.name} champion (v{found.version}) kept no sample of its training set in "
        f"{settings.training_sets_dir}: run `sendwise train` to train it again (it keeps one)"
    )


__all__ = ["MODEL_NAMES", "Champion", "ReportInputs", "load_champion", "missing_champion", "missing_sample"]
