"""The final open model is recalibrated by what the held-out window asked of the model fit without it."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from training.models import intercept_shift, shift_log_odds


def _booster() -> tuple[lgb.Booster, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    design = rng.normal(size=(2000, 3))
    label = (design[:, 0] + rng.normal(size=2000) > 0.5).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1}  # OpenMP threads only wait on a busy machine
    booster = lgb.train(params, lgb.Dataset(design, label), num_boost_round=20)
    return booster, design, label


def test_shift_moves_every_raw_score_and_survives_saving() -> None:
    booster, design, _ = _booster()
    before = booster.predict(design, raw_score=True)
    shift_log_odds(booster, 0.3)
    reloaded = lgb.Booster(model_str=booster.model_to_string())
    np.testing.assert_allclose(reloaded.predict(design, raw_score=True), before + 0.3, atol=1e-9)


def test_intercept_shift_matches_the_observed_rate() -> None:
    booster, design, label = _booster()
    inflated = 1 / (1 + np.exp(-(booster.predict(design, raw_score=True) + 0.4)))
    shift = intercept_shift(inflated, label)
    assert shift < -0.3
    corrected = 1 / (1 + np.exp(-(np.log(inflated / (1 - inflated)) + shift)))
    assert corrected.mean() == pytest.approx(label.mean(), abs=1e-5)


def test_intercept_shift_is_bounded_and_zero_without_both_classes() -> None:
    assert intercept_shift(np.full(100, 0.9), np.zeros(100)) == 0.0
    assert intercept_shift(np.full(100, 0.999), np.r_[np.ones(1), np.zeros(99)]) == -1.0
