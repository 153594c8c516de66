"""Optuna studies over the LightGBM parameters, on the same time split and metric the models are promoted on.

Every trial fits on the earlier part of the training set and is early-stopped on the later part; the objective
is the held-out AUC of that booster, which is exactly the challenger's score at promotion (`send_time`, the
same booster, is promoted on the off-schedule part of that window). Trials whose
held-out AUC lags the median of the earlier trials at the same boosting round are pruned
(`optuna_integration.LightGBMPruningCallback`). The first trial is always the fixed parameters, so a study
never ends with parameters that did worse than them on the objective.

The window that picks the parameters is the window the challenger is then judged on, so a tuned challenger's
score carries the optimism of having been chosen there (the best of N on one window). `sendwise evaluate`
measures against the world's truth on later data, where that optimism cannot help.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import optuna
from optuna_integration import LightGBMPruningCallback
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from training.datasets import TrainingSet
from training.models import BASE_PARAMS, HELD_OUT, auc, fit_held_out, held_out_datasets

DEFAULT_TIMEOUT_S = 540.0
"""Wall time a training job spends in its studies, all models together (see `train.train`)."""
DEFAULT_TRIALS = 40
"""Trials per model that about fill the default budget on 10,000 customers x 90 days on 2 cores."""
PRUNING_METRIC = "auc"
OBJECTIVE = "held-out AUC"
REPORT_INTERVAL = 5
STUDY_NAME = "sendwise"
STOPPED_BY = "stopped_by"


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial and study at INFO; the progress bar and the MLflow run say it instead."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def default_pruner() -> optuna.pruners.BasePruner:
    """Prune below the median of the earlier trials, after 5 trials and 40 rounds, checking every 10 rounds."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=40, interval_steps=10)


def suggest_params(trial: optuna.Trial) -> dict[str, object]:
    """The search space; the ranges hold `BASE_PARAMS`, which the first trial tries."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 8, 256, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 10, 2000, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l1": trial.suggest_float("lambda_l1", 1e-8, 10.0, log=True),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-8, 10.0, log=True),
        "min_gain_to_split": trial.suggest_float("min_gain_to_split", 0.0, 1.0),
    }


def _defaults(fixed: dict[str, object]) -> dict[str, object]:
    """The fixed parameters as a point of the search space (LightGBM's lambda_l1 = 0 as 1e-8)."""
    return {
        "learning_rate": fixed["learning_rate"],
        "num_leaves": fixed["num_leaves"],
        "min_data_in_leaf": fixed["min_data_in_leaf"],
        "feature_fraction": fixed["feature_fraction"],
        "bagging_fraction": fixed["bagging_fraction"],
        "lambda_l1": max(_number(fixed, "lambda_l1"), 1e-8),
        "lambda_l2": max(_number(fixed, "lambda_l2"), 1e-8),
        "min_gain_to_split": fixed.get("min_gain_to_split", 0.0),
    }


@dataclass
class TuningResult:
    """A finished study: the parameters to fit with, and everything needed to keep the study with the run."""

    study: optuna.Study
    storage: optuna.storages.BaseStorage = field(repr=False)
    params: dict[str, object]
    """Overrides for `fit_binary`: the best trial's parameters and the metric it was early-stopped on."""
    trials: int
    timeout_s: float | None
    seconds: float
    sampler: str
    pruner: str

    @property
    def best_value(self) -> float:
        return float(self.study.best_value)

    def counts(self) -> dict[str, int]:
        states = [t.state for t in self.study.trials]
        stopped = sum(1 for t in self.study.trials if STOPPED_BY in t.user_attrs)
        return {
            "complete": states.count(optuna.trial.TrialState.COMPLETE),
            "pruned": states.count(optuna.trial.TrialState.PRUNED) - stopped,
            "stopped": stopped,
            "failed": states.count(optuna.trial.TrialState.FAIL),
            "total": len(states),
        }

    def mlflow_params(self) -> dict[str, object]:
        return {
            "tuning_trials_requested": self.trials,
            "tuning_timeout_s": self.timeout_s,
            "tuning_objective": OBJECTIVE,
            "tuning_sampler": self.sampler,
            "tuning_pruner": self.pruner,
            **{f"tuning_best_{k}": v for k, v in self.study.best_params.items()},
        }

    def mlflow_metrics(self) -> dict[str, float]:
        counts = self.counts()
        first = self.study.trials[0]
        default = first.value if first.state == optuna.trial.TrialState.COMPLETE else None
        return {
            "tuning_best_value": self.best_value,
            "tuning_best_trial": float(self.study.best_trial.number),
            **({"tuning_default_value": float(default)} if default is not None else {}),
            **{f"tuning_trials_{state}": float(n) for state, n in counts.items()},
            "tuning_seconds": self.seconds,
        }

    def write_artifacts(self, directory: Path) -> list[Path]:
        """trials.csv, study.db (Optuna's SQLite storage), best_params.json and the two plots."""
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / "trials.csv", directory / "best_params.json", directory / "study.db"]
        self.study.trials_dataframe().to_csv(written[0], index=False)
        summary = {
            "objective": OBJECTIVE,
            "best_value": self.best_value,
            "best_trial": self.study.best_trial.number,
            "best_params": self.study.best_params,
            "fit_params": self.params,
            "trials": self.counts(),
            "seconds": self.seconds,
            "sampler": self.sampler,
            "pruner": self.pruner,
        }
        written[1].write_text(json.dumps(summary, indent=2, default=str))
        with _quiet_optuna():
            optuna.copy_study(
                from_study_name=self.study.study_name,
                from_storage=self.storage,
                to_storage=f"sqlite:///{written[2]}",
            )
        written += _plots(self.study, directory)
        return written


def _plots(study: optuna.Study, directory: Path) -> list[Path]:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from optuna.visualization.matplotlib import plot_intermediate_values, plot_optimization_history

    paths = []
    # Optuna's plots switch matplotlib to its ggplot style; rc_context puts the caller's style back after.
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in (
            ("optimization_history.png", plot_optimization_history),
            ("intermediate_values.png", plot_intermediate_values),
        ):
            figure = plot(study).figure
            if not isinstance(figure, Figure):
                raise TypeError(f"Optuna's {name} plot is a {type(figure).__name__}, not a matplotlib figure")
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(directory / name, dpi=100)
            plt.close(figure)
            paths.append(directory / name)
    return paths


class _Budget:
    """The study's wall-time budget: a LightGBM callback stops a trial that runs past it, and the study too.

    It only bites once a trial has completed, so that a study always has a best trial.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.deadline = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
        self.armed = False

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.armed = self.armed or trial.state == optuna.trial.TrialState.COMPLETE

    def callback(self, trial: optuna.Trial) -> Callable[[lgb.callback.CallbackEnv], None]:
        def stop_when_out_of_time(env: lgb.callback.CallbackEnv) -> None:
            if self.armed and time.monotonic() > self.deadline:
                trial.set_user_attr(STOPPED_BY, f"time budget, at round {env.iteration}")
                trial.study.stop()
                raise optuna.TrialPruned("out of the tuning time budget")

        return stop_when_out_of_time


def _progress(console: Console | None, progress: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
        transient=True,
    )


def _describe(obj: object) -> str:
    keys = ("_n_startup_trials", "_n_warmup_steps", "_interval_steps", "_percentile")
    args = ", ".join(f"{k.lstrip('_')}={getattr(obj, k)}" for k in keys if hasattr(obj, k))
    return f"{type(obj).__name__}({args})"


def tune(
    data: TrainingSet,
    trials: int,
    seed: int,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    *,
    base_params: dict[str, object] | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    progress: bool = False,
    console: Console | None = None,
    description: str = "tuning",
) -> TuningResult:
    """Search LightGBM parameters for `data` with a seeded TPE sampler and pruning; at most `trials` trials.

    `timeout_s` bounds the wall time: no trial starts after it, and a running one is stopped at it (unless no
    trial has completed yet). `base_params` are the model's fixed overrides of `BASE_PARAMS`.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    fixed = {**BASE_PARAMS, **(base_params or {}), "metric": PRUNING_METRIC, "seed": seed}
    datasets = held_out_datasets(data, fixed)
    label = data.label[data.valid]
    storage = optuna.storages.InMemoryStorage()
    pruner = pruner or default_pruner()
    budget = _Budget(timeout_s)

    def objective(trial: optuna.Trial) -> float:
        pruning = LightGBMPruningCallback(trial, PRUNING_METRIC, valid_name=HELD_OUT, report_interval=REPORT_INTERVAL)
        params = {**fixed, **suggest_params(trial)}
        fit = fit_held_out(data, params, callbacks=[pruning, budget.callback(trial)], datasets=datasets)
        trial.set_user_attr("best_iteration", fit.booster.best_iteration)
        return auc(label, fit.prediction)

    started = time.monotonic()
    with _quiet_optuna():
        study = optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=pruner,
        )
        study.enqueue_trial(_defaults(fixed), user_attrs={"fixed_parameters": True})
        with _progress(console, progress) as bar:
            task = bar.add_task(description, total=trials, status="")

            def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
                best = f"best {OBJECTIVE} {study.best_value:.4f}, " if budget.armed else ""
                bar.update(task, advance=1, status=f"{best}{pruned} pruned")

            study.optimize(objective, n_trials=trials, timeout=timeout_s, callbacks=[budget.after_trial, show])
    return TuningResult(
        study=study,
        storage=storage,
        params={**study.best_params, "metric": PRUNING_METRIC},
        trials=trials,
        timeout_s=timeout_s,
        seconds=time.monotonic() - started,
        sampler=f"TPESampler(seed={seed})",
        pruner=_describe(pruner),
    )


def _number(params: dict[str, object], name: str) -> float:
    """A numeric LightGBM parameter (0 when unset); a ValueError that names it when it is not a number."""
    value = params.get(name, 0.0)
    if not isinstance(value, int | float):
        raise ValueError(f"LightGBM parameter {name} must be a number, not {value!r}")
    return float(value)
