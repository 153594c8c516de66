"""The LightGBM models: fit on the earlier part of the data, early-stopped on the later part."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score

from features.transform import HOUR_FEATURES, MONOTONE
from training.datasets import TrainingSet

BASE_PARAMS: dict[str, object] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    # No num_threads: LightGBM then follows OpenMP (OMP_NUM_THREADS, else one thread per core). A fixed count
    # above what the machine has free makes every boosting round wait at OpenMP's barriers for threads whose
    # cores other jobs hold (bench/README.md, scale).
    # Keep every feature in the binned Dataset whatever min_data_in_leaf is, so that one Dataset serves
    # every tuning trial and a champion's parameters can be refit on it (LightGBM refuses otherwise).
    "feature_pre_filter": False,
}
MAX_ROUNDS = 1500
EARLY_STOPPING = 50
HELD_OUT = "held_out"
RECALIBRATION_SHARE = 0.5
"""How much of the held-out window's intercept correction the final open model takes (`fit_binary`)."""

# Parameters a loaded booster reports that describe the machine or the run, not the model's recipe.
_NOT_RECIPE = {
    "num_iterations",
    "early_stopping_round",
    "early_stopping_min_delta",
    "num_machines",
    "local_listen_port",
    "time_out",
    "machine_list_filename",
    "machines",
    "gpu_platform_id",
    "gpu_device_id",
    "gpu_use_dp",
    "num_gpu",
    "verbosity",
    "tree_learner",
}


@dataclass
class HeldOutFit:
    """A booster fit on the earlier part only, early-stopped on the later part, and its predictions there."""

    booster: lgb.Booster
    prediction: np.ndarray = field(repr=False)


@dataclass
class FittedModel:
    """A booster with how it was fit and how it did on the held-out window."""

    booster: lgb.Booster
    params: dict[str, object]
    metrics: dict[str, float]
    valid_prediction: np.ndarray = field(repr=False)
    held_out_booster: lgb.Booster | None = field(default=None, repr=False)
    """The booster fit on the earlier part only (what `valid_prediction` and promotion score): kept with the run
    so that what it is judged on later (the report's off-policy estimates) is data it did not learn from."""


def auc(label: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(label)) < 2:
        return float("nan")
    return float(roc_auc_score(label, score))


def logloss(label: np.ndarray, prediction: np.ndarray, weight: np.ndarray | None = None) -> float:
    p = np.clip(prediction, 1e-7, 1 - 1e-7)
    return float(-np.average(label * np.log(p) + (1 - label) * np.log(1 - p), weights=weight))


def mean(values: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The (weighted) mean; NaN for no values."""
    return float(np.average(values, weights=weight)) if len(values) else float("nan")


def _dataset(
    data: TrainingSet,
    mask: np.ndarray,
    params: dict[str, object],
    columns: Sequence[str] | None = None,
    reference: lgb.Dataset | None = None,
) -> lgb.Dataset:
    design = data.design[mask] if columns is None else data.design.loc[mask, list(columns)]
    return lgb.Dataset(
        design,
        label=data.label[mask],
        weight=None if data.weight is None else data.weight[mask],
        reference=reference,
        params=dataset_params(params),
        free_raw_data=False,
    )


def dataset_params(params: dict[str, object]) -> dict[str, object]:
    """What the binned Dataset depends on; the rest of the parameters may change between fits that share it."""
    keys = ("seed", "max_bin", "min_data_in_bin", "bin_construct_sample_cnt", "feature_pre_filter", "verbose")
    return {k: params[k] for k in keys if k in params}


def with_constraints(params: dict[str, object], columns: Sequence[str]) -> dict[str, object]:
    """`params` with the monotone and interaction constraints of the features among `columns`.

    The hour features (features/transform.py) only interact with each other, so the open model's log-odds
    are a customer part plus an hour part.
    """
    signs = [MONOTONE.get(column, 0) for column in columns]
    if not any(signs):
        return params
    hour = [k for k, column in enumerate(columns) if column in HOUR_FEATURES]
    rest = [k for k, column in enumerate(columns) if column not in HOUR_FEATURES]
    return {
        **params,
        "monotone_constraints": signs,
        "monotone_constraints_method": "advanced",
        "interaction_constraints": [hour, rest],
    }


def held_out_datasets(
    data: TrainingSet, params: dict[str, object], columns: Sequence[str] | None = None
) -> tuple[lgb.Dataset, lgb.Dataset]:
    """The earlier part as the training Dataset and the later part binned like it, built once."""
    train = _dataset(data, data.train, params, columns).construct()
    return train, _dataset(data, data.valid, params, columns, reference=train).construct()


def fit_held_out(
    data: TrainingSet,
    params: dict[str, object],
    callbacks: Sequence[Any] = (),
    datasets: tuple[lgb.Dataset, lgb.Dataset] | None = None,
    columns: Sequence[str] | None = None,
) -> HeldOutFit:
    """Fit on the earlier part, early-stopped on the later part's first metric (`metric`, else log loss)."""
    train_set, valid_set = datasets or held_out_datasets(data, params, columns)
    params = with_constraints(params, list(data.design.columns) if columns is None else list(columns))
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid_set],
        valid_names=[HELD_OUT],
        callbacks=[*callbacks, lgb.early_stopping(EARLY_STOPPING, first_metric_only=True, verbose=False)],
    )
    design = data.design[data.valid] if columns is None else data.design.loc[data.valid, list(columns)]
    return HeldOutFit(
        booster=booster, prediction=np.asarray(booster.predict(design, num_iteration=booster.best_iteration))
    )


def recipe(booster: lgb.Booster) -> dict[str, object]:
    """The parameters a (loaded) booster was trained with, enough to train it again on other rows."""
    params = {k: v for k, v in booster.params.items() if k not in _NOT_RECIPE}
    return {**params, "verbose": -1}


def refit_held_out(data: TrainingSet, booster: lgb.Booster) -> np.ndarray:
    """Train `booster`'s recipe (parameters and features) on the earlier part; predictions on the later part.

    Raises ValueError when the training set lacks a feature the booster uses.
    """
    columns = booster.feature_name()
    missing = [c for c in columns if c not in data.design.columns]
    if missing:
        raise ValueError(f"features missing: {missing[:5]}")
    return fit_held_out(data, recipe(booster), columns=columns).prediction


class Fitter(Protocol):
    """Where boosters are fit: in this process (`InProcess`) or on a Dask cluster (`training.cluster`)."""

    def held_out(self, data: TrainingSet, params: dict[str, object]) -> HeldOutFit:
        """A booster fit on the earlier part, early-stopped on the later part, as `fit_held_out` does."""
        ...

    def rounds(self, data: TrainingSet, params: dict[str, object], rounds: int) -> lgb.Booster:
        """A booster fit on every row for `rounds` rounds."""
        ...

    def describe(self) -> dict[str, str]:
        """What the MLflow run records about where its boosters were fit (`trained_on`, ...)."""
        ...


class InProcess:
    """Fits in this process, with LightGBM's own early stopping."""

    def held_out(self, data: TrainingSet, params: dict[str, object]) -> HeldOutFit:
        return fit_held_out(data, params)

    def rounds(self, data: TrainingSet, params: dict[str, object], rounds: int) -> lgb.Booster:
        return lgb.train(params, _dataset(data, np.ones(len(data.label), dtype=bool), params), num_boost_round=rounds)

    def describe(self) -> dict[str, str]:
        return {"trained_on": "in process"}


IN_PROCESS = InProcess()


def fit_binary(
    data: TrainingSet,
    seed: int,
    params: dict[str, object] | None = None,
    recalibrate: bool = False,
    fitter: Fitter = IN_PROCESS,
) -> FittedModel:
    """Fit with early stopping on the held-out window, then refit on all of it for that many rounds.

    With `recalibrate`, the final booster's log-odds move by half of what the held-out window asked of the
    model fit without it (`recalibration_shift`): a model fit on the past overpredicts the weeks after it by
    the mail's drift and its own optimism, and the final model predicts the weeks after the data the same way.
    Half, because one window's calibration is a noisy witness: it varies by a few percent from one fortnight of
    mail to the next, and taken whole it moved some worlds' calibration past the truth by more than it fixed.
    Both fits are `fitter`'s: in this process, or on a Dask cluster (`training.cluster`).
    """
    params = with_constraints({**BASE_PARAMS, **(params or {}), "seed": seed}, list(data.design.columns))
    held_out = fitter.held_out(data, params)
    booster, prediction = held_out.booster, held_out.prediction
    # a sampled training set's rows stand for more (`datasets.sample_rows`): rates and losses are weighted
    weight = None if data.weight is None else data.weight[data.valid]
    label = data.label[data.valid]
    train_weight = None if data.weight is None else data.weight[data.train]
    base_rate = mean(data.label[data.train], train_weight) if data.train.any() else mean(label, weight)
    metrics = {
        "valid_auc": auc(label, prediction),
        "valid_logloss": logloss(label, prediction, weight),
        # the log loss of predicting the earlier part's rate for everyone: what the model's must beat
        "baseline_valid_logloss": logloss(label, np.full(len(label), base_rate), weight),
        "valid_positive_rate": mean(label, weight),
        "valid_calibration": mean(prediction, weight) / max(mean(label, weight), 1e-9),
        "valid_rows": float(data.valid.sum()),
        "train_rows": float(data.train.sum()),
        "best_iteration": float(booster.best_iteration),
    }
    rounds = max(int(booster.best_iteration * 1.1), 10)
    final = fitter.rounds(data, params, rounds)
    if recalibrate:
        metrics["recalibration_shift"] = shift = RECALIBRATION_SHARE * intercept_shift(prediction, label, weight=weight)
        shift_log_odds(final, shift)
    return FittedModel(
        booster=final,
        params={**params, "num_boost_round": rounds},
        metrics=metrics,
        valid_prediction=prediction,
        held_out_booster=booster,
    )


def intercept_shift(
    prediction: np.ndarray, label: np.ndarray, bound: float = 1.0, weight: np.ndarray | None = None
) -> float:
    """The change of log-odds that makes the (weighted) mean prediction the observed rate (within +-`bound`)."""
    if len(label) == 0:
        return 0.0
    rate = mean(label, weight)
    if not 0.0 < rate < 1.0:
        return 0.0
    log_odds = np.log(np.clip(prediction, 1e-9, 1 - 1e-9) / np.clip(1 - prediction, 1e-9, 1.0))

    def excess(delta: float) -> float:
        return mean(1.0 / (1.0 + np.exp(-(log_odds + delta))), weight) - rate

    if excess(-bound) > 0:
        return -bound
    if excess(bound) < 0:
        return bound
    return float(brentq(excess, -bound, bound, xtol=1e-6))


def shift_log_odds(booster: lgb.Booster, shift: float) -> None:
    """Add `shift` to every raw score of `booster` (every leaf of its first tree), SHAP and all."""
    if shift == 0.0 or booster.num_trees() == 0:
        return
    leaves = booster.dump_model(num_iteration=1)["tree_info"][0]["num_leaves"]
    for leaf in range(leaves):
        booster.set_leaf_output(0, leaf, booster.get_leaf_output(0, leaf) + shift)
