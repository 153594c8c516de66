"""Training jobs: features -> LightGBM -> MLflow run -> registered version -> promotion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import mlflow
import numpy as np
import pandas as pd
from rich.console import Console

from features.build import FeatureTables, build_feature_tables
from features.store import apply_definitions, materialize, open_store
from sendwise.settings import Settings
from training.datasets import TrainingSet, offer_training_set, open_training_set
from training.models import FittedModel, auc, fit_binary
from training.registry import Promotion, champion_auc_scorer, code_version, connect, log_booster, promote

ModelChoice = Literal["open", "send-time", "offer", "all"]


@dataclass
class TrainResult:
    """What a training job did, for the CLI to print and the pipeline to check."""

    as_of: pd.Timestamp
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    promotions: list[Promotion] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def off_schedule_mask(times: pd.Series) -> np.ndarray:
    """Sends outside the most common UTC hour: the ones that say something about other hours."""
    hours = times.dt.hour
    return (hours != hours.mode().iloc[0]).to_numpy()


def _log_run(
    name: str, data: TrainingSet, fitted: FittedModel, extra_metrics: dict[str, float], registered: list[str]
) -> dict[str, str]:
    with mlflow.start_run(run_name=name):
        mlflow.log_params({k: v for k, v in fitted.params.items() if k not in ("verbose",)})
        mlflow.log_params({"feature_service": data.feature_service, **data.window()})
        mlflow.log_metrics({**fitted.metrics, **extra_metrics})
        mlflow.set_tags({"feature_service": data.feature_service, "code_version": code_version(), "model": name})
        return log_booster(fitted.booster, registered)


def train_open(settings: Settings, data: TrainingSet, result: TrainResult, names: list[str]) -> None:
    fitted = fit_binary(data, seed=settings.seed)
    valid_times = data.times[data.valid]
    off = off_schedule_mask(valid_times)
    label = data.label[data.valid]
    hour_auc = auc(label[off], fitted.valid_prediction[off]) if off.sum() > 50 else fitted.metrics["valid_auc"]
    extra = {"valid_off_schedule_auc": hour_auc}
    versions = _log_run("open_propensity", data, fitted, extra, names)
    result.metrics["open_propensity"] = {**fitted.metrics, **extra}
    client = connect(settings)
    valid_design = data.design[data.valid]
    for name in names:
        if name == "open_propensity":
            scorer = champion_auc_scorer(valid_design, label)
            result.promotions.append(
                promote(client, name, versions[name], fitted.metrics["valid_auc"], scorer, "valid AUC")
            )
        else:
            scorer = champion_auc_scorer(valid_design[off], label[off])
            result.promotions.append(promote(client, name, versions[name], hour_auc, scorer, "off-schedule valid AUC"))


def train_offer(settings: Settings, tables: FeatureTables, store, result: TrainResult) -> None:  # type: ignore[no-untyped-def]
    found = offer_training_set(store, tables, settings.conversion_window_days)
    if found is None:
        result.skipped["next_best_offer"] = "no offers or too few closed offer exposures (need 200 with conversions)"
        return
    data, _ = found
    fitted = fit_binary(data, seed=settings.seed, params={"min_data_in_leaf": 50})
    versions = _log_run("next_best_offer", data, fitted, {}, ["next_best_offer"])
    result.metrics["next_best_offer"] = fitted.metrics
    client = connect(settings)
    scorer = champion_auc_scorer(data.design[data.valid], data.label[data.valid])
    result.promotions.append(
        promote(
            client,
            "next_best_offer",
            versions["next_best_offer"],
            fitted.metrics["valid_auc"],
            scorer,
            "valid AUC",
        )
    )


def prepare_features(settings: Settings, progress: bool = True) -> tuple[FeatureTables, object]:
    """Build the feature tables and register the Feast definitions over them."""
    tables = build_feature_tables(settings, progress=progress)
    store = open_store(settings)
    apply_definitions(store, settings)
    return tables, store


def train(
    settings: Settings,
    model: ModelChoice = "all",
    progress: bool = True,
    console: Console | None = None,
    tables: FeatureTables | None = None,
    store: object | None = None,
) -> TrainResult:
    """Build features, train the chosen models, log and register them, promote the ones that win."""
    console = console or Console(quiet=not progress)
    connect(settings)
    if tables is None or store is None:
        with console.status("building features"):
            tables, store = prepare_features(settings, progress=progress)
    result = TrainResult(as_of=tables.as_of)
    if model in ("open", "send-time", "all"):
        names = {
            "open": ["open_propensity"],
            "send-time": ["send_time"],
            "all": ["open_propensity", "send_time"],
        }[model]
        with console.status("training the open-propensity / send-time model"):
            data = open_training_set(store, tables, settings.label_window_hours)  # type: ignore[arg-type]
            if data is None:
                for name in names:
                    result.skipped[name] = "no email events, or too few sends with a closed 72-hour window (need 200)"
            else:
                train_open(settings, data, result, names)
    if model in ("offer", "all"):
        with console.status("training the next-best-offer model"):
            train_offer(settings, tables, store, result)
    return result


def materialize_online(settings: Settings, tables: FeatureTables, store: object) -> None:
    """Load the features as of the end of the data into the online store."""
    materialize(store, tables.as_of.to_pydatetime())  # type: ignore[arg-type]
