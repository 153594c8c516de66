"""The compiled tree walk predicts what LightGBM predicts, or is not used."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.transform import lightgbm_matrix, open_columns
from serving.compiled import CompiledTrees, compiled
from serving.schemas import Recipient

START = pd.Timestamp("2026-03-02 07:00", tz="UTC")


def _rows(engine, customers, booster: lgb.Booster) -> np.ndarray:  # type: ignore[no-untyped-def]
    ids = customers["customer_id"].head(400).tolist()
    matrix = engine.online.for_recipients([Recipient(customer_id=c) for c in ids]).matrix
    n = len(ids)
    columns = open_columns(matrix, np.arange(n), START, np.full(n, "promotional"), np.full(n, "outdoor", dtype=object))
    rows = lightgbm_matrix(columns, booster)
    assert rows is not None
    return rows


def test_compiled_trees_equal_lightgbm_on_served_rows_missing_values_and_odd_categories(engine, customers) -> None:  # type: ignore[no-untyped-def]
    booster = engine.models["open_propensity"].booster
    trees = CompiledTrees.parse(booster.model_to_string())
    assert trees is not None and len(trees.roots) == booster.num_trees()
    assert (trees.decision & 1).any()  # the world's models split on categories: the bitsets are exercised
    rows = _rows(engine, customers, booster)
    rng = np.random.default_rng(3)
    odd = rows.copy()
    odd[rng.random(odd.shape) < 0.2] = np.nan  # missing values, numeric and categorical
    odd[rng.random(odd.shape) < 0.05] = -0.5  # a category code between -1 and 0 (C++ casts it to 0)
    odd[rng.random(odd.shape) < 0.05] = 0.0  # zero, a missing value for some splits
    odd[rng.random(odd.shape) < 0.05] = 1e3  # beyond every bitset
    for matrix in (rows, odd):
        raw = booster.predict(matrix, raw_score=True, num_threads=1)
        assert np.array_equal(trees.raw(matrix), raw)  # the same sums, in the same order
        probability = booster.predict(matrix, num_threads=1)
        assert np.abs(trees.predict(matrix) - probability).max() <= 1e-15
    big = np.tile(odd, (12, 1))  # enough rows to be split between two threads
    assert np.array_equal(trees.raw(big, threads=2), booster.predict(big, raw_score=True, num_threads=1))


def test_a_booster_the_walk_does_not_read_stays_with_lightgbm(engine, customers) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(float)
    linear = lgb.train(
        {"objective": "binary", "linear_tree": True, "verbose": -1}, lgb.Dataset(x, y), num_boost_round=3
    )
    assert CompiledTrees.parse(linear.model_to_string()) is None and compiled(linear, x) is None
    regression = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(x, y), num_boost_round=3)
    assert compiled(regression, x) is None
    booster = engine.models["open_propensity"].booster
    assert compiled(booster, _rows(engine, customers, booster)) is not None
