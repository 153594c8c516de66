"""Optuna tuning kept with the MLflow run, pruning, the time budget, and promotion on the same held-out window."""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from sendwise.settings import Settings
from training.datasets import TrainingSet
from training.models import BASE_PARAMS, auc, fit_binary
from training.registry import HeldOut, Promotion, connect, promote, record_promotions
from training.train import _log_run
from training.tuning import DEFAULT_TIMEOUT_S, STOPPED_BY, tune

# One thread: on a shared two-core machine LightGBM's OpenMP threads wait on each other at every round.
ONE_THREAD: dict[str, object] = {"num_threads": 1}
GOOD = {**ONE_THREAD, "num_leaves": 15, "min_data_in_leaf": 20, "learning_rate": 0.15}
CRIPPLED = {**ONE_THREAD, "num_leaves": 2, "max_depth": 1, "learning_rate": 0.3}  # stumps: blind to f1 x f2


def training_set(n: int = 6000, seed: int = 0, until: float = 1.0) -> TrainingSet:
    """Seeded rows over 60 days whose labels depend on f0, on f1 x f2 and on a category; `until` keeps a prefix."""
    rng = np.random.default_rng(seed)
    design = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"f{i}" for i in range(5)]).astype("float32")
    design["kind"] = pd.Categorical(rng.choice(["a", "b", "c"], n))
    logit = design["f0"] + 1.2 * design["f1"] * design["f2"] + 0.6 * (design["kind"] == "a") - 1.0
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("float32").to_numpy()
    start = pd.Timestamp("2026-08-01", tz="UTC")
    times = pd.Series(start + pd.to_timedelta(np.sort(rng.uniform(0, 60, n)), unit="D"))
    keep = (times < times.quantile(until)).to_numpy() if until < 1 else np.ones(n, dtype=bool)
    times = times[keep].reset_index(drop=True)
    return TrainingSet(
        design=design[keep].reset_index(drop=True),
        label=label[keep],
        times=times,
        cut=times.quantile(0.8),
        feature_service="test_v1",
    )


@pytest.fixture(scope="module")
def data() -> TrainingSet:
    return training_set()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, MlflowClient]:
    """A real MLflow store for the promotion tests, each under model names of its own (created with its
    migrations, it takes about ten seconds: the tests that use it are marked slow)."""
    settings = Settings(home=tmp_path_factory.mktemp("registry_home"))
    return settings, connect(settings)


def register(settings: Settings, data: TrainingSet, params: Mapping[str, object], name: str) -> Promotion:
    """Fit, log and register one challenger, then run the promotion and record it with the run."""
    fitted = fit_binary(data, seed=settings.seed, params=dict(params))
    run_id, versions = _log_run(name, data, fitted, {}, [name])
    client = connect(settings)
    decision = promote(client, name, versions[name], fitted.valid_prediction, HeldOut(data), "valid AUC")
    record_promotions(client, run_id, [decision])
    return decision


def champion_version(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


def run_of(client: MlflowClient, name: str, version: str = "champion") -> str:
    """The id of the run that trained a version (or the version an alias points to)."""
    found = (
        client.get_model_version(name, version)
        if version.isdigit()
        else client.get_model_version_by_alias(name, version)
    )
    assert found.run_id is not None
    return found.run_id


def test_first_trial_is_the_fixed_parameters_and_the_fit_reproduces_the_best_trial(data: TrainingSet) -> None:
    result = tune(data, trials=6, seed=1, timeout_s=60, base_params=ONE_THREAD)
    first = result.study.trials[0]
    assert first.params["learning_rate"] == BASE_PARAMS["learning_rate"]
    assert first.params["num_leaves"] == BASE_PARAMS["num_leaves"]
    complete = [float(t.value or 0) for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert result.best_value == max(complete) >= float(first.value or 0)
    fitted = fit_binary(data, seed=1, params={**ONE_THREAD, **result.params})
    assert fitted.metrics["valid_auc"] == pytest.approx(result.best_value, abs=1e-12)
    assert fitted.metrics["valid_auc"] > 0.75


def test_pruning_stops_trials_that_lag_the_median(data: TrainingSet) -> None:
    aggressive = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0, interval_steps=1)
    result = tune(data, trials=12, seed=2, timeout_s=120, base_params=ONE_THREAD, pruner=aggressive)
    pruned = [t for t in result.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert result.counts()["pruned"] == len(pruned) >= 1
    assert result.counts()["total"] == 12
    longest = max(max(t.intermediate_values) for t in complete)
    for trial in pruned:  # cut short, and behind an earlier trial at the round it was stopped
        step = max(trial.intermediate_values)
        assert step < longest
        before = result.study.trials[: trial.number]
        earlier = [t.intermediate_values[step] for t in before if step in t.intermediate_values]
        assert max(trial.intermediate_values.values()) < max(earlier)


def test_time_budget_stops_the_study_and_the_running_trial(data: TrainingSet) -> None:
    result = tune(data, trials=10_000, seed=3, timeout_s=2.0, base_params=ONE_THREAD)
    counts = result.counts()
    assert counts["complete"] >= 1
    assert counts["total"] < 10_000
    assert result.seconds < 8.0
    stopped = [t for t in result.study.trials if STOPPED_BY in t.user_attrs]
    assert len(stopped) == counts["stopped"] <= 1


@pytest.mark.integration
@pytest.mark.slow
def test_worse_challenger_is_not_promoted_and_the_run_says_why(
    registry: tuple[Settings, MlflowClient], data: TrainingSet
) -> None:
    settings, client = registry
    first = register(settings, data, GOOD, "worse_challenger")
    worse = register(settings, data, CRIPPLED, "worse_challenger")
    assert first.promoted and first.reason.startswith("first worse_challenger model: valid AUC")
    assert not worse.promoted
    assert worse.challenger_score < worse.champion_score  # type: ignore[operator]
    assert "does not beat champion v1" in worse.reason
    assert f"{worse.challenger_score:.4f}" in worse.reason and f"{worse.champion_score:.4f}" in worse.reason
    assert "held-out window 2026-09-" in worse.reason and "refit on the rows before" in worse.reason
    assert champion_version(client, "worse_challenger") == "1"
    run = client.get_run(run_of(client, "worse_challenger", "2"))
    assert run.data.tags["promoted.worse_challenger"] == "false"
    assert run.data.tags["promotion.worse_challenger"] == worse.reason
    recorded = json.loads(Path(client.download_artifacts(run.info.run_id, "promotion.json")).read_text())
    (entry,) = recorded["promotions"]
    assert entry["promoted"] is False
    assert entry["champion_version"] == "1"
    assert entry["champion_score"] == pytest.approx(worse.champion_score)
    assert entry["window"]["rows"] == str(int(data.valid.sum()))


@pytest.mark.integration
@pytest.mark.slow
def test_better_challenger_is_promoted(registry: tuple[Settings, MlflowClient], data: TrainingSet) -> None:
    settings, client = registry
    register(settings, data, CRIPPLED, "better_challenger")
    better = register(settings, data, GOOD, "better_challenger")
    assert better.promoted
    assert better.challenger_score > better.champion_score + 0.01  # type: ignore[operator]
    assert "beats champion v1" in better.reason and "does not beat" not in better.reason
    assert champion_version(client, "better_challenger") == "2"
    tags = client.get_run(run_of(client, "better_challenger", "2")).data.tags
    assert tags["promoted.better_challenger"] == "true"


@pytest.mark.integration
@pytest.mark.slow
def test_a_tie_keeps_the_champion(registry: tuple[Settings, MlflowClient], data: TrainingSet) -> None:
    """The same parameters on the same rows: the champion refit on the rows before the window scores the same."""
    settings, client = registry
    register(settings, data, GOOD, "tie")
    same = register(settings, data, GOOD, "tie")
    assert same.challenger_score == same.champion_score
    assert not same.promoted
    assert "does not beat" in same.reason and "a tie keeps the champion" in same.reason
    assert champion_version(client, "tie") == "1"


@pytest.mark.integration
@pytest.mark.slow
def test_a_champion_fit_before_the_window_is_scored_as_registered(
    registry: tuple[Settings, MlflowClient], data: TrainingSet
) -> None:
    settings, _ = registry
    older = training_set(until=0.75)  # the same world, but its rows end before `data`'s window starts
    assert older.times.max() < data.cut
    register(settings, older, GOOD, "older_champion")
    challenger = register(settings, data, GOOD, "older_champion")
    registered = mlflow.lightgbm.load_model("models:/older_champion/1")
    expected = auc(data.label[data.valid], registered.predict(data.design[data.valid]))
    assert challenger.champion_score == pytest.approx(expected, abs=1e-12)
    assert "champion scored as registered" in challenger.reason


@pytest.mark.integration
@pytest.mark.slow
def test_tuned_pipeline_keeps_the_study_and_the_promotion_with_the_run(small_world: Path, tmp_path: Path) -> None:
    from sendwise.cli import app

    home = tmp_path / "home"
    env = {"SENDWISE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    args = ["pipeline", "--data", str(small_world), "--tune", "5", "--tune-timeout", "900"]  # trials, not time, stop it
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "tuned open_propensity: 5 trials" in result.output
    settings = Settings(home=home)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    for name in ("open_propensity", "next_best_offer"):
        run = client.get_run(run_of(client, name))
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        assert params["tuning_trials_requested"] == "5"
        assert params["tuning_sampler"] == f"TPESampler(seed={settings.seed})"
        assert float(params["learning_rate"]) == pytest.approx(float(params["tuning_best_learning_rate"]))
        assert tags["tuned"] == "true"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tuning")}
        expected = {"trials.csv", "study.db", "best_params.json", "optimization_history.png", "intermediate_values.png"}
        assert artifacts == {f"tuning/{f}" for f in expected}
        trials = pd.read_csv(client.download_artifacts(run.info.run_id, "tuning/trials.csv"))
        assert len(trials) == metrics["tuning_trials_total"] <= 5
        best = trials.loc[trials["state"] == "COMPLETE", "value"].max()
        assert metrics["tuning_best_value"] == pytest.approx(best, abs=1e-12)
        assert metrics["valid_auc"] == pytest.approx(best, abs=1e-9)  # the registered fit used the best trial
        assert metrics["tuning_best_value"] >= metrics["tuning_default_value"]
        study_db = client.download_artifacts(run.info.run_id, "tuning/study.db")
        stored = optuna.load_study(study_name="sendwise", storage=f"sqlite:///{study_db}")
        assert stored.best_value == pytest.approx(best, abs=1e-12)
        plot = Path(client.download_artifacts(run.info.run_id, "tuning/optimization_history.png")).read_bytes()
        assert plot.startswith(b"\x89PNG")
        assert tags[f"promoted.{name}"] == "true"
        assert tags[f"promotion.{name}"].startswith(f"first {name} model")
    open_run = run_of(client, "open_propensity")
    recorded = json.loads(Path(client.download_artifacts(open_run, "promotion.json")).read_text())
    assert [p["name"] for p in recorded["promotions"]] == ["open_propensity", "send_time"]
    assert recorded["promotions"][1]["metric"] == "off-schedule valid AUC"


def test_cli_tuning_budget_default_is_the_library_default() -> None:
    from sendwise import cli

    for command in (cli.train, cli.pipeline):
        assert inspect.signature(command).parameters["tune_timeout"].default == DEFAULT_TIMEOUT_S


def test_examples_at_one_instant_are_split_by_customer_not_by_time() -> None:
    from training.datasets import VALID_SHARE, TrainingSet, _split

    customers = pd.Series([f"c-{i:05d}" for i in range(5000)])
    once = pd.Series(pd.Timestamp("2008-03-01", tz="UTC"), index=customers.index)
    cut, by_customer = _split(once, customers)
    assert by_customer is not None
    data = TrainingSet(
        design=pd.DataFrame({"x": np.arange(5000)}),
        label=np.zeros(5000),
        times=once,
        cut=cut,
        feature_service="s",
        held_out_customers=by_customer,
    )
    assert abs(data.valid.mean() - VALID_SHARE) < 0.03 and (data.train == ~data.valid).all()
    assert "by a hash of their id" in data.window()["split"]
    again = _split(once, customers.sample(frac=1.0, random_state=1).sort_index())[1]
    assert again is not None and (again == by_customer).all()  # stable: the same customers every time
    spread = pd.Series(pd.date_range("2026-01-01", periods=5000, freq="h", tz="UTC"))
    cut, by_customer = _split(spread, customers)
    assert by_customer is None and (spread >= cut).mean() == pytest.approx(VALID_SHARE, abs=0.01)


def test_fatigue_is_counted_at_the_moment_of_each_send() -> None:
    from training.datasets import sends_in_previous_week

    t = pd.Timestamp("2026-10-01 00:00", tz="UTC")
    sends = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "a"],
            "send_at": [t, t + pd.Timedelta(hours=9), t + pd.Timedelta(days=3), t, t + pd.Timedelta(days=8)],
        }
    )
    asked = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "c", "a"],
            "at": [
                t,  # nothing before the first send
                t + pd.Timedelta(hours=10),  # both sends of that day count, not only those before midnight
                t + pd.Timedelta(days=7, hours=5),  # the first send left the window 5 hours ago, two remain
                t + pd.Timedelta(hours=1),
                t + pd.Timedelta(days=1),  # a customer without sends
                t + pd.Timedelta(days=8),  # a send at exactly that time is not before it
            ],
        }
    )
    counts = sends_in_previous_week(sends, asked["customer_id"], asked["at"])
    assert counts.tolist() == [0, 2, 2, 1, 0, 1]
