"""The pipeline's jobs, written once: ingest -> feature tables -> Feast -> train (and tune) -> register and
promote -> materialize (with Redis, and the send history: `serving.history_store.load_raw_history`) -> report.

Each step is a typed function of the home's settings that returns what it did. `sendwise ingest`, `train`,
`pipeline` and `report` parse their options, call these and print the results; the real-data runs
(`training.realdata`) call the same steps, so that what they measure is what a user runs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
from feast import FeatureStore
from rich.console import Console

from features.build import FeatureBuildError, FeatureTables, build_feature_tables
from features.store import MaterializeError, apply_definitions, materialize, open_store
from sendwise.asof import AsOfError, resolve_as_of
from sendwise.ingest import IngestError, IngestReport
from sendwise.ingest import ingest as ingest_files
from sendwise.ingest.run import merge_appended
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.engine import Engine
from serving.history_store import load_raw_history
from training.cluster import DaskSchedulerError
from training.train import ModelChoice, TrainResult, train_models
from training.tuning import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from training.report import ReportResult

JOB_ERRORS = (AsOfError, IngestError, FeatureBuildError, MaterializeError, DaskSchedulerError)
"""What a job raises for a problem with the data or the options, with a sentence a user can act on."""


@dataclass(frozen=True)
class IngestOptions:
    """How to read an export whose files leave something unsaid (`sendwise ingest`'s options)."""

    assume_tz: str | None = None
    profiling_consent: Literal["granted", "denied"] | None = None
    csv_delimiter: str | None = None
    decimal_comma: bool = False


@dataclass(frozen=True)
class TrainOptions:
    """Which models to train, how long to tune them (`sendwise train`'s options), and whether a new version
    that beats the champion becomes champion (without: it is left as challenger, `training.compare`)."""

    model: ModelChoice = "all"
    tune: int = 0
    tune_timeout_s: float | None = DEFAULT_TIMEOUT_S
    promote: bool = True


@dataclass
class Features:
    """A home's feature tables, built as of a time, and its Feast store with the definitions applied over them."""

    tables: FeatureTables
    store: FeatureStore


@dataclass
class PipelineResult:
    """What a `train` or `pipeline` job did: the ingest (pipeline only), the features, the models."""

    settings: Settings
    features: Features
    training: TrainResult
    ingest: IngestReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds of each step that ran, by name."""


@contextmanager
def _step(name: str, description: str, console: Console | None, seconds: dict[str, float]) -> Iterator[None]:
    """Time a step, with a spinner on `console` where there is one."""
    started = time.perf_counter()
    with console.status(description) if console is not None else nullcontext():
        yield
    seconds[name] = time.perf_counter() - started


def ingest(
    settings: Settings,
    data_dir: Path,
    options: IngestOptions | None = None,
    as_of: pd.Timestamp | None = None,
    progress: bool = True,
) -> IngestReport:
    """Validate the export in `data_dir` and merge it into the home's raw store (`sendwise ingest`)."""
    options = options or IngestOptions()
    return ingest_files(
        data_dir,
        settings,
        assume_tz=options.assume_tz,
        profiling_consent=options.profiling_consent,
        csv_delimiter=options.csv_delimiter,
        decimal_comma=options.decimal_comma,
        as_of=as_of,
        progress=progress,
    )


def build_features(settings: Settings, as_of: pd.Timestamp | None = None, progress: bool = True) -> Features:
    """Build the feature tables from the raw store and apply the Feast definitions over them.

    `as_of` is when the export was taken (an `AsOfError` if the raw store holds events after it); without it,
    the latest as-of an ingest recorded, else the data's end.
    """
    resolved = resolve_as_of(settings, as_of)
    tables = build_feature_tables(settings, as_of=resolved.time, progress=progress)
    tables.as_of_source = resolved.source
    store = open_store(settings)
    apply_definitions(store, settings)
    return Features(tables, store)


def materialize_online(settings: Settings, features: Features, progress: bool = True) -> None:
    """Load the features as of the tables' as-of into the online store, for serving (Feast prints what it
    loads unless `progress` is off)."""
    with nullcontext() if progress else redirect_stdout(io.StringIO()):
        materialize(
            features.store,
            features.tables.as_of.to_pydatetime(),
            settings.materialize_workers,
            quiet=not progress,
            offline_memory_gb=settings.offline_memory_gb,
        )


def keep_offer_scores(settings: Settings, progress: bool = True) -> int:
    """With Redis, every customer's offer scores by the offer champion, kept beside their features so that
    replicas look them up rather than score them with each batch (`serving.offer_scores`); customers written."""
    if settings.online_store != "redis":
        return 0
    customers = load_table(settings, "customers")
    if customers is None or not len(customers):
        return 0
    if settings.compiled_trees == "auto":  # every customer's offers are scored here: worth the compiled walk
        settings = settings.model_copy(update={"compiled_trees": "on"})
    engine = Engine.load(settings, log_decisions=False)
    return engine.keep_offer_scores(customers["customer_id"].astype(str).unique().tolist(), progress=progress)


def refresh_features(settings: Settings, progress: bool = True) -> tuple[dict[str, int], Features]:
    """`sendwise materialize`: the appended events merged into the raw store, the feature tables built again
    from it and the online store materialized, without training; rows merged per table, and the features."""
    merged = merge_appended(settings)
    features = build_features(settings, progress=progress)
    materialize_online(settings, features, progress)
    keep_offer_scores(settings, progress)
    return merged, features


def train(
    settings: Settings,
    options: TrainOptions | None = None,
    as_of: pd.Timestamp | None = None,
    console: Console | None = None,
    progress: bool = True,
    features: Features | None = None,
) -> PipelineResult:
    """Build the features, train, register and promote, and materialize the online store (`sendwise train`).

    `features` already built (`build_features`, as a notebook does to look at them first) are trained on as
    they are; `as_of` then has no say.
    """
    options = options or TrainOptions()
    seconds: dict[str, float] = {}
    if features is None:
        with _step("features", "building features and registering them with Feast", console, seconds):
            features = build_features(settings, as_of=as_of, progress=progress)
    started = time.perf_counter()
    training = train_models(
        settings,
        features.tables,
        features.store,
        model=options.model,
        tune=options.tune,
        tune_timeout_s=options.tune_timeout_s,
        console=console,
        progress=progress,
        promote=options.promote,
    )
    seconds["train"] = time.perf_counter() - started
    with _step("materialize", "materializing the online store", console, seconds):
        materialize_online(settings, features, progress)  # serving reads the features training just built
    if settings.online_store == "redis":  # the ESP's sends and exposures that caps count, for every replica
        with _step("history", "loading the send history into Redis", console, seconds):
            load_raw_history(settings, progress)
        with _step("offer scores", "keeping every customer's offer scores in Redis", console, seconds):
            keep_offer_scores(settings, progress)
    return PipelineResult(settings, features, training, seconds=seconds)


def pipeline(
    settings: Settings,
    data_dir: Path,
    ingest_options: IngestOptions | None = None,
    train_options: TrainOptions | None = None,
    as_of: pd.Timestamp | None = None,
    console: Console | None = None,
    progress: bool = True,
    ingested: Callable[[IngestReport], None] | None = None,
) -> PipelineResult:
    """Ingest `data_dir`, then everything `train` does (`sendwise pipeline`).

    `ingested` is called with the ingest report as soon as it exists, before the longer steps.
    """
    started = time.perf_counter()
    report = ingest(settings, data_dir, ingest_options, as_of=as_of, progress=progress)
    ingest_seconds = time.perf_counter() - started
    if ingested is not None:
        ingested(report)
    result = train(settings, train_options, as_of=as_of, console=console, progress=progress)
    result.ingest = report
    result.seconds = {"ingest": ingest_seconds, **result.seconds}
    return result


def report(
    settings: Settings,
    model: Literal["open", "send-time", "offer", "all"] = "all",
    site_dir: Path | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> ReportResult:
    """Write the marketer report of the champions from what the pipeline left in the home, and log it to their
    MLflow runs (`sendwise report`)."""
    from training.report import write_report  # SHAP and matplotlib: only when a report is asked for

    return write_report(settings, model, site_dir=site_dir, console=console, progress=progress)
