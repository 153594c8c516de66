"""Two registered versions compared on one held-out window, promotion left to a person, roll back, the listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient

from sendwise.settings import Settings
from tests.test_tuning import CRIPPLED, GOOD, training_set
from training import compare
from training.datasets import TrainingSet
from training.models import fit_binary
from training.registry import (
    PREVIOUS_CHAMPION,
    ROLLED_BACK,
    HeldOut,
    Promotion,
    RegistryError,
    alias_version,
    connect,
    list_versions,
    previous_champion,
    promote,
    record_promotions,
    roll_back,
)
from training.train import _log_run


@pytest.fixture(scope="module")
def data() -> TrainingSet:
    return training_set(seed=4)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, MlflowClient]:
    """A real MLflow store (its migrations take about ten seconds: the tests that use it are marked slow)."""
    settings = Settings(home=tmp_path_factory.mktemp("compare_home"))
    return settings, connect(settings)


def register(
    settings: Settings, data: TrainingSet, params: dict[str, object], name: str, apply: bool = True
) -> tuple[Promotion, HeldOut]:
    """Fit, log and register one version as training does, and decide its promotion (applied or not)."""
    fitted = fit_binary(data, seed=settings.seed, params=params)
    run_id, versions = _log_run(name, data, fitted, {}, [name])
    client = connect(settings)
    held_out = HeldOut(data)
    held_out.remember(run_id, fitted.valid_prediction)
    decision = promote(client, name, versions[name], fitted.valid_prediction, held_out, "valid AUC", apply=apply)
    record_promotions(client, run_id, [decision])
    return decision, held_out


def scored(role: str, version: str, prediction: np.ndarray | None) -> compare.Scored:
    return compare.Scored(role, version, prediction, "as given")


def comparison(challenger: np.ndarray | None, champion: np.ndarray | None, label: np.ndarray) -> compare.Comparison:
    window = {"start": "2026-10-01 00:00", "end": "2026-10-08 00:00", "rows": str(len(label)), "positives": "2"}
    return compare.Comparison(
        name="m",
        metric="valid AUC",
        window=window,
        label=label,
        challenger=scored("challenger", "2", challenger),
        champion=None if champion is None else scored("champion", "1", champion),
    )


LABEL = np.array([0, 0, 1, 0, 1, 1, 0, 0], dtype=float)
GOOD_SCORES = np.array([0.1, 0.2, 0.8, 0.3, 0.7, 0.9, 0.2, 0.1])
WORSE_SCORES = np.array([0.1, 0.8, 0.2, 0.3, 0.7, 0.9, 0.2, 0.6])


def test_the_comparison_applies_promotions_rule() -> None:
    better = comparison(GOOD_SCORES, WORSE_SCORES, LABEL)
    assert better.challenger_score == 1.0 and better.champion_score == pytest.approx(0.7)  # 10.5 of 15 pairs
    assert better.challenger_wins
    assert better.verdict().startswith("challenger v2 valid AUC 1.0000 beats champion v1 0.7000 (+0.3000)")
    assert "the held-out window 2026-10-01 00:00 UTC to 2026-10-08 00:00 UTC (8 rows)" in better.verdict()
    worse = comparison(WORSE_SCORES, GOOD_SCORES, LABEL)
    assert not worse.challenger_wins and "does not beat champion v1" in worse.verdict()
    tie = comparison(GOOD_SCORES, GOOD_SCORES * 0.5, LABEL)  # the same ranking: the same AUC
    assert not tie.challenger_wins and "(a tie keeps the champion)" in tie.verdict()
    assert comparison(WORSE_SCORES, None, LABEL).challenger_wins  # no champion
    unable = comparison(WORSE_SCORES, None, LABEL)
    unable.champion = scored("champion", "1", None)  # a champion that cannot score the new features loses
    assert unable.challenger_wins and np.isnan(unable.table().loc["champion", "AUC"])


def test_the_table_has_each_versions_metrics() -> None:
    table = comparison(GOOD_SCORES, WORSE_SCORES, LABEL).table()
    assert list(table.index) == ["challenger", "champion"]
    assert table.loc["challenger", "version"] == "2"
    assert table.loc["challenger", "Brier"] == pytest.approx(np.mean((GOOD_SCORES - LABEL) ** 2))
    assert table.loc["champion", "calibration"] == pytest.approx(WORSE_SCORES.mean() / LABEL.mean())
    summary = compare.summary([comparison(GOOD_SCORES, WORSE_SCORES, LABEL)])
    assert summary.loc["m", "difference"] == pytest.approx(0.3)
    assert bool(summary.loc["m", "challenger wins"]) and summary.loc["m", "rows"] == 8


def test_reliability_table_bins_by_the_prediction() -> None:
    prediction = np.linspace(0.0, 0.99, 100)
    label = (np.arange(100) >= 50).astype(float)  # the upper half of the predictions are all positives
    table = compare.reliability_table(prediction, label, bins=4)
    assert table["rows"].tolist() == [25, 25, 25, 25]
    assert table["observed"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert table["predicted"].iloc[0] == pytest.approx(prediction[:25].mean())


def test_the_plot_shows_both_versions() -> None:
    figure = compare.plot_comparison(comparison(GOOD_SCORES, WORSE_SCORES, LABEL))
    assert isinstance(figure, Figure)
    roc, reliability, bars = figure.axes
    assert [line.get_label() for line in roc.get_lines()][:2] == [
        "challenger v2 (AUC 1.0000)",
        "champion v1 (AUC 0.7000)",
    ]
    assert [line.get_label() for line in reliability.get_lines()] == ["challenger v2", "champion v1", "calibrated"]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["AUC", "log loss", "Brier", "calibration"]
    assert len(bars.patches) == 8  # four metrics, two versions


@pytest.mark.integration
@pytest.mark.slow
def test_a_challenger_left_for_a_person_is_compared_promoted_and_rolled_back(
    registry: tuple[Settings, MlflowClient], data: TrainingSet
) -> None:
    settings, client = registry
    name = "retrained"
    first, _ = register(settings, data, CRIPPLED, name)
    assert first.promoted and alias_version(client, name, "champion") == "1"
    assert client.get_model_version(name, "1").tags[PREVIOUS_CHAMPION] == ""
    held, held_out = register(settings, data, GOOD, name, apply=False)
    assert held.wins and not held.promoted
    assert held.reason.endswith("; left as challenger: promotion was not applied")
    assert alias_version(client, name, "champion") == "1" and alias_version(client, name, "challenger") == "2"
    run_id = client.get_model_version(name, "2").run_id
    assert run_id is not None and client.get_run(run_id).data.tags[f"promoted.{name}"] == "false"

    # the window training decided on, and the same window built again: both give training's figures
    remembered = compare.compare_versions(client, compare.Window.of(name, held_out))
    rebuilt = compare.compare_versions(client, compare.Window.of(name, HeldOut(data)), challenger="2", champion="1")
    for found in (remembered, rebuilt):
        assert found.challenger_score == pytest.approx(held.challenger_score, abs=1e-12)
        assert found.champion_score == pytest.approx(held.champion_score, abs=1e-12)
        assert found.challenger_wins and found.challenger_score > held.champion_score + 0.01  # type: ignore[operator]
    assert "challenger's parameters and features refit on the rows before" in rebuilt.challenger.how
    assert remembered.verdict().split("; ")[0] == held.reason.split("; ")[0]

    path = compare.log_comparison(client, remembered)
    assert path == f"comparisons/{name}_v2_vs_v1.json"
    kept = json.loads(Path(client.download_artifacts(run_id, path)).read_text())
    assert kept["challenger_wins"] is True and kept["versions"]["champion"]["version"] == "1"
    assert kept["versions"]["challenger"]["AUC"] == pytest.approx(held.challenger_score, abs=1e-12)
    image = Path(client.download_artifacts(run_id, f"comparisons/{name}_v2_vs_v1.png")).read_bytes()
    assert image.startswith(b"\x89PNG")

    decision = compare.promote_if_better(client, remembered)
    assert decision.promoted and decision.champion_version == "1"
    assert alias_version(client, name, "champion") == "2" and alias_version(client, name, "challenger") is None
    assert client.get_model_version(name, "2").tags[PREVIOUS_CHAMPION] == "1"
    assert client.get_model_version(name, "2").tags["promotion"] == remembered.verdict()
    assert client.get_run(run_id).data.tags[f"promoted.{name}"] == "true"

    listed = list_versions(client, name)
    assert listed["version"].tolist() == ["2", "1"]
    assert listed["aliases"].tolist() == ["champion", ""]
    assert listed["previous_champion"].tolist() == ["1", ""]
    assert listed["valid_auc"].iloc[0] == pytest.approx(held.challenger_score, abs=1e-12)

    back = roll_back(client, name, "a test")
    assert (back.from_version, back.to_version) == ("2", "1")
    assert alias_version(client, name, "champion") == "1"
    assert client.get_model_version(name, "2").tags[ROLLED_BACK] == back.reason
    assert "v1 is champion again in place of v2 (a test)" in back.reason
    with pytest.raises(RegistryError, match="v1 was the first champion: there is no earlier champion"):
        roll_back(client, name)
    assert list_versions(client, name)["aliases"].tolist() == ["", "champion"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_challenger_that_does_not_win_stays_challenger(
    registry: tuple[Settings, MlflowClient], data: TrainingSet
) -> None:
    settings, client = registry
    name = "kept"
    register(settings, data, GOOD, name)
    held, held_out = register(settings, data, CRIPPLED, name, apply=False)
    assert not held.wins and not held.promoted and "left as challenger" not in held.reason
    found = compare.compare_versions(client, compare.Window.of(name, held_out))
    assert not found.challenger_wins
    decision = compare.promote_if_better(client, found)
    assert not decision.promoted and "does not beat champion v1" in decision.reason
    assert alias_version(client, name, "champion") == "1" and alias_version(client, name, "challenger") == "2"
    assert client.get_model_version(name, "2").tags["promotion"] == decision.reason
    assert PREVIOUS_CHAMPION not in client.get_model_version(name, "2").tags


@pytest.mark.integration
@pytest.mark.slow
def test_roll_back_reads_the_runs_where_versions_have_no_previous_champion_tag(
    registry: tuple[Settings, MlflowClient], data: TrainingSet
) -> None:
    """Homes promoted before versions kept the champion they replaced: the runs' promotion tags say it."""
    settings, client = registry
    name = "older_home"
    with pytest.raises(RegistryError, match="older_home has no champion to roll back"):
        roll_back(client, name)
    register(settings, data, CRIPPLED, name)
    register(settings, data, GOOD, name, apply=False)  # its run did not promote it
    register(settings, data, GOOD, name)
    assert alias_version(client, name, "champion") == "3"
    for version in ("1", "3"):
        client.delete_model_version_tag(name, version, PREVIOUS_CHAMPION)
    assert previous_champion(client, name) == "1"  # v2's run did not promote it
    assert roll_back(client, name).to_version == "1"


@pytest.mark.integration
@pytest.mark.slow
def test_comparing_without_a_challenger_says_how_to_make_one(
    registry: tuple[Settings, MlflowClient], data: TrainingSet
) -> None:
    settings, client = registry
    register(settings, data, GOOD, "alone")
    window = compare.Window.of("alone", HeldOut(data))
    with pytest.raises(RegistryError, match=r"alone has no challenger: train one with .*promote=False"):
        compare.compare_versions(client, window)
    with pytest.raises(RegistryError, match="alone v1 is both champion and champion"):
        compare.compare_versions(client, window, challenger="champion")
    assert list_versions(client, "never_registered").empty
    assert isinstance(list_versions(client, "alone"), pd.DataFrame)
