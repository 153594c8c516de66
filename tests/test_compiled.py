"""The compiled tree walk predicts what LightGBM predicts, or is not used."""

from __future__ import annotations

import subprocess
import sys

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.transform import lightgbm_matrix, open_columns
from sendwise.settings import Settings
from serving.compiled import CompiledTrees, compiled
from serving.curves import use_compiled_trees
from serving.schemas import DecideRequest, Recipient

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


def test_decisions_are_the_same_with_the_trees_compiled_or_scored_by_lightgbm(engine, customers) -> None:  # type: ignore[no-untyped-def]
    """`SENDWISE_COMPILED_TREES`: LightGBM's own predict gives every curve and offer the compiled walk gives."""
    ids = customers.loc[customers["consent_email"], "customer_id"].head(200).tolist()
    request = DecideRequest(recipients=[Recipient(customer_id=c) for c in ids], window_start=START.to_pydatetime())
    answers = []
    try:
        for on in (True, False):
            use_compiled_trees(on)
            engine.reseed(7)
            answers.append(engine.decide(request).decisions)
    finally:
        use_compiled_trees(True)
    compiled_answer, lightgbm_answer = answers
    curves = [np.array([d.hourly_open_probability for d in a], dtype=object) for a in answers]
    assert sum(len(c) for c in curves[0]) > 1000  # curves were scored
    for one, other in zip(compiled_answer, lightgbm_answer, strict=True):
        assert np.allclose(one.hourly_open_probability, other.hourly_open_probability, rtol=0, atol=1e-12)
        assert [o.offer_id for o in one.offers] == [o.offer_id for o in other.offers]
        assert one.send_at == other.send_at


def test_compiled_trees_follow_the_online_store_unless_set() -> None:
    assert Settings().uses_compiled_trees and not Settings(online_store="redis").uses_compiled_trees
    assert Settings(online_store="redis", compiled_trees="on").uses_compiled_trees
    assert not Settings(compiled_trees="off").uses_compiled_trees


def test_a_replica_on_redis_never_imports_the_compiler(redis_home: Settings) -> None:
    """A Redis replica scores with LightGBM: numba (and LLVM, about 130 MB resident) stays out of its process,
    through loading and a decide; so does DuckDB (about 10 MB), which only the pipeline host's loads use, and
    MLflow (about 70 MB) when the champions are exported by a child process, as the service loads them."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from sendwise.champions import PendingChampions\n"
        "from sendwise.raw import load_table\n"
        "from sendwise.settings import Settings\n"
        "from serving.engine import Engine\n"
        "from serving.schemas import DecideRequest, Recipient\n"
        f"settings = Settings(home=Path({str(redis_home.home)!r}), online_store='redis', "
        f"redis_url={redis_home.redis_url!r})\n"
        "settings.activate()\n"
        "exported = PendingChampions(settings.tracking_uri)\n"
        "engine = Engine.load(settings, log_decisions=False, champions=exported.result)\n"
        "customers = load_table(settings, 'customers')\n"
        "ids = customers.loc[customers['consent_email'], 'customer_id'].head(50).tolist()\n"
        "answer = engine.decide(DecideRequest(recipients=[Recipient(customer_id=c) for c in ids]))\n"
        "scored = sum(len(d.hourly_open_probability) == 24 for d in answer.decisions)\n"
        "print(scored, len(engine.models), *(m in sys.modules for m in ('numba', 'llvmlite', 'duckdb', 'mlflow')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-6:] == ["50", "3", "False", "False", "False", "False"], done.stdout
