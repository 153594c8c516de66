"""Training: training sets through Feast -> LightGBM (+ Optuna) -> MLflow run -> registered version -> promotion.

The steps before (ingest, feature tables, Feast) and after (the online store) are `training.jobs`'s.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
import pandas as pd
from feast import FeatureStore
from rich.console import Console

from features.build import FeatureTables
from sendwise.asof import AsOf, Source
from sendwise.settings import Settings
from sendwise.tombstones import last_erasure
from training import samples, skips
from training.cluster import fitter as cluster_fitter
from training.datasets import TrainingSet, offer_training_set, open_training_set
from training.models import IN_PROCESS, FittedModel, Fitter, auc, fit_binary
from training.registry import (
    HeldOut,
    Promotion,
    code_version,
    connect,
    log_booster,
    promote,
    record_promotions,
)
from training.tuning import DEFAULT_TIMEOUT_S, OBJECTIVE, TuningResult
from training.tuning import tune as run_study

ModelChoice = Literal["open", "send-time", "offer", "all"]
OFFER_PARAMS: dict[str, object] = {"min_data_in_leaf": 100, "num_leaves": 15}
"""Conversions are rare (a few percent of exposures): smaller trees than the open model's (offer efficiency
0.921 against 0.915 with 31 leaves of 50 on a realistic development world)."""
OPEN_BUDGET_SHARE = 0.7
"""Share of the tuning budget the open model's study may use when the offer model is tuned after it."""
MIN_OFF_SCHEDULE = 50


@dataclass
class TrainResult:
    """What a training job did, for the CLI to print and the pipeline to check."""

    as_of: pd.Timestamp
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    promotions: list[Promotion] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Model name -> why it was not trained, one sentence with the facts and the flag or data that fixes it."""
    tuning: dict[str, TuningResult] = field(default_factory=dict)
    held_out: dict[str, HeldOut] = field(default_factory=dict)
    """Model name -> the held-out window its promotion was decided on, with the new version's and the
    champion's predictions there; kept only where training left promotion to a person (`training.compare`)."""
    as_of_source: Source = "given"
    """Where `as_of` came from: "given", "recorded" (an ingest's --as-of) or "data" (the data's end)."""
    sampled: dict[str, str] = field(default_factory=dict)
    """Model name -> the sentence that says it was trained on a sample of its examples (`datasets.sample_rows`)."""

    def as_of_text(self) -> str:
        """`2008-04-14 15:00 UTC, the --as-of given`."""
        return AsOf(self.as_of, self.as_of_source).describe()

    def tuning_lines(self) -> list[str]:
        """One line per tuned model: trials, time, and the best objective beside the fixed parameters'."""
        lines = []
        for name, tuning in self.tuning.items():
            counts, metrics = tuning.counts(), tuning.mlflow_metrics()
            default = metrics.get("tuning_default_value", float("nan"))
            stopped = f", {counts['stopped']} stopped by the time budget" if counts["stopped"] else ""
            lines.append(
                f"tuned {name}: {counts['total']} trials ({counts['complete']} complete, {counts['pruned']} pruned"
                f"{stopped}) in {tuning.seconds:.0f} s; {OBJECTIVE} {tuning.best_value:.4f} "
                f"(fixed parameters {default:.4f})"
            )
        return lines


@dataclass
class Tuner:
    """How a training job tunes: trials per model, and one wall-time budget for all its studies."""

    trials: int = 0
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    seed: int = 0
    console: Console | None = None
    progress: bool = True
    spent_s: float = 0.0

    def __call__(
        self, data: TrainingSet, name: str, base_params: dict[str, object] | None = None, share: float = 1.0
    ) -> TuningResult | None:
        """A study for one model with `share` of the budget left (None: fixed parameters)."""
        if self.trials < 1:
            return None
        timeout = None if self.timeout_s is None else (self.timeout_s - self.spent_s) * share
        if timeout is not None and timeout <= 0:
            return None
        started = time.monotonic()
        try:
            return run_study(
                data,
                self.trials,
                self.seed,
                timeout,
                base_params=base_params,
                progress=self.progress,
                console=self.console,
                description=f"tuning {name}",
            )
        finally:
            self.spent_s += time.monotonic() - started


def registered_names(model: ModelChoice) -> list[str]:
    """The registered models that training `model` makes a new version of."""
    names = {
        "open": ["open_propensity"],
        "send-time": ["send_time"],
        "offer": ["next_best_offer"],
        "all": ["open_propensity", "send_time", "next_best_offer"],
    }
    if model not in names:
        raise ValueError(f"model must be one of {', '.join(names)}, not {model!r}")
    return names[model]


def off_schedule_mask(times: pd.Series) -> np.ndarray:
    """Sends outside the most common UTC hour: the ones that say something about other hours."""
    hours = times.dt.hour
    return (hours != hours.mode().iloc[0]).to_numpy()


def promotion_criterion(name: str, data: TrainingSet) -> tuple[str, np.ndarray | None]:
    """The metric a model is promoted on, and the held-out rows it is taken over (None: all of them).

    `send_time` shares the open model's booster but is judged on the sends outside the most common hour, the
    ones that say something about choosing an hour (all sends where too few are off schedule).
    """
    if name == "send_time":
        off = off_schedule_mask(data.times[data.valid])
        if off.sum() > MIN_OFF_SCHEDULE:
            return "off-schedule valid AUC", off
    return "valid AUC", None


def _log_tuning(tuning: TuningResult) -> None:
    """The study with the active run: its settings and best trial, trials.csv, study.db and plots."""
    mlflow.log_params(tuning.mlflow_params())
    mlflow.log_metrics(tuning.mlflow_metrics())
    with tempfile.TemporaryDirectory() as directory:
        tuning.write_artifacts(Path(directory))
        mlflow.log_artifacts(directory, artifact_path="tuning")


HELD_OUT_MODEL = "held_out/model.txt"
"""The run's booster fit before its held-out window (LightGBM's text format), beside the registered one."""
BASELINE_TAG = "baseline_valid_auc"
"""The run tag that says what `baseline_valid_auc`, a simple rule's AUC on the held-out window, ranks by."""


def open_rate_auc(data: TrainingSet) -> float:
    """The held-out AUC of ranking sends by the customer's past open rate alone (a rule senders use)."""
    rate = data.design["open_rate"].to_numpy(dtype=np.float64)[data.valid] if "open_rate" in data.design else None
    if rate is None:
        return float("nan")
    return auc(data.label[data.valid], np.where(np.isnan(rate), np.nanmean(rate), rate))


def best_seller_auc(data: TrainingSet) -> float:
    """The held-out AUC of ranking exposures by their offer's conversion rate before the window (best sellers
    first)."""
    if "offer_id" not in data.design:
        return float("nan")
    offers = data.design["offer_id"].astype(str)
    rates = pd.Series(data.label[data.train]).groupby(offers[data.train].to_numpy()).mean()
    score = offers[data.valid].map(rates).astype(float).fillna(float(np.mean(data.label[data.train])))
    return auc(data.label[data.valid], score.to_numpy())


def _log_run(
    name: str,
    data: TrainingSet,
    fitted: FittedModel,
    extra_metrics: dict[str, float],
    registered: list[str],
    tuning: TuningResult | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """Log and register one model; returns the run id and name -> version."""
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({k: v for k, v in fitted.params.items() if k not in ("verbose",)})
        mlflow.log_params({"feature_service": data.feature_service, **data.window()})
        if data.sample is not None:
            mlflow.log_params(data.sample.mlflow_params())
        mlflow.log_metrics({**fitted.metrics, **extra_metrics})
        mlflow.set_tags(
            {
                "feature_service": data.feature_service,
                "code_version": code_version(),
                "model": name,
                "tuned": str(tuning is not None).lower(),
                **(tags or {}),
            }
        )
        if tuning is not None:
            _log_tuning(tuning)
        if fitted.held_out_booster is not None:
            mlflow.log_text(fitted.held_out_booster.model_to_string(), HELD_OUT_MODEL)
        return run.info.run_id, log_booster(fitted.booster, registered)


def train_open(
    settings: Settings,
    data: TrainingSet,
    result: TrainResult,
    names: list[str],
    tuning: TuningResult | None = None,
    apply: bool = True,
    fitter: Fitter = IN_PROCESS,
) -> None:
    fitted = fit_binary(
        data, seed=settings.seed, params=tuning.params if tuning else None, recalibrate=True, fitter=fitter
    )
    _, off = promotion_criterion("send_time", data)
    label = data.label[data.valid]
    hour_auc = auc(label[off], fitted.valid_prediction[off]) if off is not None else fitted.metrics["valid_auc"]
    extra = {"valid_off_schedule_auc": hour_auc, "baseline_valid_auc": open_rate_auc(data)}
    tags = {BASELINE_TAG: "the customer's past open rate alone", **fitter.describe()}
    run_id, versions = _log_run("open_propensity", data, fitted, extra, names, tuning, tags)
    samples.save_sample(settings, run_id, data.design)
    result.metrics["open_propensity"] = {**fitted.metrics, **extra}
    if tuning is not None:
        result.tuning["open_propensity"] = tuning
    client = connect(settings)
    held_out = HeldOut(data)
    held_out.remember(run_id, fitted.valid_prediction)
    promotions = [
        promote(
            client,
            name,
            versions[name],
            fitted.valid_prediction,
            held_out,
            *promotion_criterion(name, data),
            apply,
            erased_since=last_erasure(settings),
        )
        for name in names
    ]
    record_promotions(client, run_id, promotions)
    result.promotions.extend(promotions)
    if not apply:
        result.held_out.update(dict.fromkeys(names, held_out))


def train_offer(
    settings: Settings,
    tables: FeatureTables,
    store: FeatureStore,
    result: TrainResult,
    tuner: Tuner | None = None,
    apply: bool = True,
    fitter: Fitter = IN_PROCESS,
) -> None:
    found = offer_training_set(store, tables, settings.conversion_window_days, settings.train_max_rows)
    if found is None:
        result.skipped["next_best_offer"] = skips.offer_model(tables, settings)
        return
    data, _ = found
    if data.sample is not None:
        result.sampled["next_best_offer"] = data.sample.sentence("next_best_offer")
    tuning = tuner(data, "next_best_offer", base_params=OFFER_PARAMS) if tuner else None
    params = {**OFFER_PARAMS, **(tuning.params if tuning else {})}
    fitted = fit_binary(data, seed=settings.seed, params=params, fitter=fitter)
    extra = {"baseline_valid_auc": best_seller_auc(data)}
    tags = {BASELINE_TAG: "each offer's conversion rate before the window (best sellers first)", **fitter.describe()}
    run_id, versions = _log_run("next_best_offer", data, fitted, extra, ["next_best_offer"], tuning, tags)
    samples.save_sample(settings, run_id, data.design)
    result.metrics["next_best_offer"] = fitted.metrics
    if tuning is not None:
        result.tuning["next_best_offer"] = tuning
    client = connect(settings)
    held_out = HeldOut(data)
    held_out.remember(run_id, fitted.valid_prediction)
    decision = promote(
        client,
        "next_best_offer",
        versions["next_best_offer"],
        fitted.valid_prediction,
        held_out,
        *promotion_criterion("next_best_offer", data),
        apply,
        erased_since=last_erasure(settings),
    )
    record_promotions(client, run_id, [decision])
    result.promotions.append(decision)
    if not apply:
        result.held_out["next_best_offer"] = held_out


def train_models(
    settings: Settings,
    tables: FeatureTables,
    store: FeatureStore,
    model: ModelChoice = "all",
    tune: int = 0,
    tune_timeout_s: float | None = DEFAULT_TIMEOUT_S,
    console: Console | None = None,
    progress: bool = True,
    promote: bool = True,
) -> TrainResult:
    """Train the chosen models on the home's feature tables, log and register them, promote the ones that win.

    With `tune` > 0 each model gets an Optuna study of at most that many trials before its fit, all studies
    together within `tune_timeout_s` seconds; the studies are kept with the models' MLflow runs. Each run keeps
    a sample of its training set in the home (`training.samples`) for the reports; samples of runs that no
    longer serve are dropped. Without `promote`, each new version is left as challenger whether it wins or not
    (its `Promotion` says whether it would have), for a person to compare and promote (`training.compare`).
    With `settings.dask_scheduler` the boosters are fit on that Dask cluster (`training.cluster`); tuning stays
    in process.
    """
    console = console or Console(quiet=not progress)
    client = connect(settings)
    result = TrainResult(as_of=tables.as_of, as_of_source=tables.as_of_source)
    tuner = Tuner(trials=tune, timeout_s=tune_timeout_s, seed=settings.seed, console=console, progress=progress)
    with cluster_fitter(settings) as fitter:
        _train_chosen(settings, tables, store, model, result, tuner, console, promote, fitter)
    samples.keep_only(settings, samples.serving_runs(client))
    return result


def _train_chosen(
    settings: Settings,
    tables: FeatureTables,
    store: FeatureStore,
    model: ModelChoice,
    result: TrainResult,
    tuner: Tuner,
    console: Console,
    promote: bool,
    fitter: Fitter,
) -> None:
    if model in ("open", "send-time", "all"):
        names = [name for name in registered_names(model) if name != "next_best_offer"]
        with console.status("training the open-propensity / send-time model"):
            data = open_training_set(store, tables, settings.label_window_hours, settings.train_max_rows)
            if data is not None and data.sample is not None:
                result.sampled["open_propensity"] = data.sample.sentence("open_propensity and send_time")
            if data is None:
                why = skips.open_model(tables, settings)
                for name in names:
                    result.skipped[name] = why
            else:
                share = OPEN_BUDGET_SHARE if model == "all" else 1.0
                tuning = tuner(data, "open_propensity", share=share)
                train_open(settings, data, result, names, tuning, apply=promote, fitter=fitter)
    if model in ("offer", "all"):
        with console.status("training the next-best-offer model"):
            train_offer(settings, tables, store, result, tuner, apply=promote, fitter=fitter)
