"""The LightGBM models: fit on the earlier part of the data, early-stopped on the later part."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
from sklearn.metrics import roc_auc_score

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
    "num_threads": 2,
}
MAX_ROUNDS = 1500
EARLY_STOPPING = 50


@dataclass
class FittedModel:
    """A booster with how it was fit and how it did on the held-out window."""

    booster: lgb.Booster
    params: dict[str, object]
    metrics: dict[str, float]
    valid_prediction: np.ndarray = field(repr=False)


def auc(label: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(label)) < 2:
        return float("nan")
    return float(roc_auc_score(label, score))


def fit_binary(data: TrainingSet, seed: int, params: dict[str, object] | None = None) -> FittedModel:
    """Fit with early stopping on the held-out window, then refit on all of it for that many rounds."""
    params = {**BASE_PARAMS, **(params or {}), "seed": seed}
    train, valid = data.train, data.valid
    weight = data.weight

    def dataset(mask: np.ndarray) -> lgb.Dataset:
        return lgb.Dataset(
            data.design[mask],
            label=data.label[mask],
            weight=None if weight is None else weight[mask],
            free_raw_data=False,
        )

    train_set = dataset(train)
    valid_set = dataset(valid)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)],
    )
    prediction = booster.predict(data.design[valid], num_iteration=booster.best_iteration)
    label = data.label[valid]
    metrics = {
        "valid_auc": auc(label, prediction),
        "valid_logloss": float(
            -np.mean(
                label * np.log(np.clip(prediction, 1e-7, 1)) + (1 - label) * np.log(np.clip(1 - prediction, 1e-7, 1))
            )
        ),
        "valid_calibration": float(prediction.mean() / max(label.mean(), 1e-9)),
        "valid_rows": float(valid.sum()),
        "train_rows": float(train.sum()),
        "best_iteration": float(booster.best_iteration),
    }
    rounds = max(int(booster.best_iteration * 1.1), 10)
    final = lgb.train(params, dataset(np.ones(len(data.label), dtype=bool)), num_boost_round=rounds)
    return FittedModel(
        booster=final,
        params={**params, "num_boost_round": rounds},
        metrics=metrics,
        valid_prediction=prediction,
    )
