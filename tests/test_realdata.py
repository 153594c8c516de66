"""Real data through the real pipeline: Hillstrom's email experiment and Starbucks' offers, full size.

Each dataset is written in the data contract, ingested, featurized, fetched through Feast and modelled by the
same code as `sendwise train`, on a random half of its customers; its policies are evaluated off-policy on the
other half. The figures and their 95% intervals are attached to each test (`record_property`) and printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HILLSTROM_CSV = DATASETS / "hillstrom" / "hillstrom.csv"
STARBUCKS_DIR = DATASETS / "starbucks"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        not HILLSTROM_CSV.exists() or not (STARBUCKS_DIR / "transcript.json.gz").exists(),
        reason=f"the shared datasets are not beside the checkout ({DATASETS}); they are read, never copied",
    ),
]

# scikit-uplift's tutorial on these two arms (Womens E-Mail over No E-Mail, visits): a figure from outside,
# which the model's own uplift@30% should be consistent with.
PUBLISHED_UPLIFT_AT_30 = 0.0661
# Hillstrom: the learned policy may trail "Mens to everyone" by at most 1 point of visit rate (four paired
# standard errors, ~0.25 pp each): sending Womens to everyone trails it by 3 points, a random arm by 3.6.
MENS_TOLERANCE = 0.01
# Starbucks: the learned policy may trail the best single offer by at most two paired standard errors (a
# one-sided 97.7% non-inferiority test). The best single offer is the easiest to complete, and the learned
# policy sends it to most customers, so the two are close by construction; being strictly above is not robust.
STANDARD_ERRORS = 2.0


def _text(value: dict[str, Any], scale: float = 1.0) -> str:
    return f"{value['value'] * scale:.4f} [{value['low'] * scale:.4f}, {value['high'] * scale:.4f}]"


def _attach(record_property, name: str, value: dict[str, Any], scale: float = 1.0) -> str:  # type: ignore[no-untyped-def]
    text = _text(value, scale)
    record_property(name, text)
    print(f"{name}: {text}")
    return text


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    """The Hillstrom CSV as published: the figures the reports are checked against are computed from it."""
    return pd.read_csv(HILLSTROM_CSV)


@pytest.fixture(scope="module")
def hillstrom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from training.realdata.hillstrom import hillstrom_report

    return hillstrom_report(HILLSTROM_CSV, tmp_path_factory.mktemp("realdata"), seed=42, progress=False)


@pytest.fixture(scope="module")
def starbucks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from training.realdata.starbucks import starbucks_report

    return starbucks_report(STARBUCKS_DIR, tmp_path_factory.mktemp("realdata"), seed=42, progress=False)


# --- Hillstrom ----------------------------------------------------------------------------------------------
def test_hillstrom_goes_through_the_real_ingest_unchanged(hillstrom: dict[str, Any]) -> None:
    assert hillstrom["labels_match_source"] == {"visit": True, "spend": True, "arm": True}
    tables = hillstrom["ingest"]["tables"]
    assert all(t["quarantined"] == 0 for t in tables.values()), tables
    assert tables["customers"]["accepted"] == 64_000
    assert hillstrom["ingest"]["timezones"]["unknown"] == 64_000  # no zone in the source: inferred, reported
    assert hillstrom["train_customers"] == hillstrom["test_customers"] == 32_000
    # the serving path (Feast rows at the decision time + offer_design) scores what training saw
    assert hillstrom["max_abs_difference_served_vs_trained"] < 1e-9
    assert hillstrom["models"]["visit"]["test_auc"] > 0.6


def test_hillstrom_learned_policy_beats_a_random_arm(hillstrom: dict[str, Any], record_property) -> None:  # type: ignore[no-untyped-def]
    learned = hillstrom["policies"]["learned_visits"]["visit"]["IPS"]
    random_arm = hillstrom["policies"]["random"]["visit"]["IPS"]
    gain = hillstrom["versus_random"]["learned_visits"]["visit"]["IPS"]
    text = _attach(record_property, "hillstrom learned visit rate (IPS)", learned)
    _attach(record_property, "hillstrom random arm visit rate (IPS)", random_arm)
    _attach(record_property, "hillstrom learned minus random (IPS, paired)", gain)
    assert learned["low"] < learned["value"] < learned["high"]
    assert learned["value"] > random_arm["value"], text
    assert gain["low"] > 0, f"the paired interval of learned minus random includes 0: {_text(gain)}"
    spend_gain = hillstrom["versus_random"]["learned_spend"]["spend"]["IPS"]
    _attach(record_property, "hillstrom spend policy minus random, $ per customer (IPS, paired)", spend_gain)
    assert spend_gain["low"] > 0


def test_hillstrom_learned_policy_is_within_noise_of_mens_to_everyone(
    hillstrom: dict[str, Any],
    source: pd.DataFrame,
    record_property,  # type: ignore[no-untyped-def]
) -> None:
    learned = hillstrom["policies"]["learned_visits"]["visit"]["IPS"]
    versus = hillstrom["versus_mens"]["learned_visits"]["visit"]["IPS"]
    _attach(record_property, "hillstrom learned minus Mens to everyone (IPS, paired)", versus)
    assert versus["high"] > 0, f"significantly worse than Mens to everyone: {_text(versus)}"
    assert versus["low"] > -MENS_TOLERANCE, f"could trail Mens to everyone by over 1 point: {_text(versus)}"
    mens = _visit_rate(source, "Mens E-Mail")  # Mens to everyone, on the whole file
    assert learned["low"] < mens < learned["high"], f"{_text(learned)} vs {mens:.4f} on the whole file"
    for worse in ("womens_to_all", "no_email", "random"):  # the baselines that are clearly worse, are
        assert hillstrom["versus_mens"][worse]["visit"]["IPS"]["high"] < 0, worse


def test_hillstrom_learned_policy_visit_rate_is_above_mens_to_everyone(
    hillstrom: dict[str, Any], source: pd.DataFrame
) -> None:
    """A finding docs/real-data.md states: the learned policy lands just above Mens to everyone by IPS on the
    held-out half, inside the paired noise (Mens is close to the best arm for everyone in this experiment, and a
    policy can gain at most ~0.15 pp). The run is seeded, so this holds the same way every time; should it fail,
    the finding changed and the page must say so."""
    learned = hillstrom["policies"]["learned_visits"]["visit"]["IPS"]
    assert learned["value"] > _visit_rate(source, "Mens E-Mail"), _text(learned)


def test_hillstrom_uplift_at_30_is_positive_beside_the_published_figure(
    hillstrom: dict[str, Any],
    source: pd.DataFrame,
    record_property,  # type: ignore[no-untyped-def]
) -> None:
    uplift = hillstrom["uplift_at_30"]
    text = _attach(record_property, f"hillstrom uplift@30% (published {PUBLISHED_UPLIFT_AT_30})", uplift)
    # The two arms of the held-out half, against the CSV: the split is stratified by arm and visit, so the half
    # holds half of each arm, and each arm's visit rate is the whole file's to within a customer or two.
    arms = source["segment"].value_counts()
    assert abs(uplift["n"] - (arms["Womens E-Mail"] + arms["No E-Mail"]) / 2) <= 2
    whole_file = _visit_rate(source, "Womens E-Mail") - _visit_rate(source, "No E-Mail")
    assert uplift["overall_uplift"] == pytest.approx(whole_file, abs=5e-4)
    # uplift@30%: the difference of the two arms' visit rates among the 30% ranked highest
    assert uplift["n_top"] == int(0.3 * uplift["n"]) == uplift["n_treated_top"] + uplift["n_control_top"]
    assert uplift["value"] == pytest.approx(uplift["treated_rate"] - uplift["control_rate"], abs=1e-12)
    assert uplift["value"] > 0 and uplift["low"] > 0, text
    assert uplift["low"] < PUBLISHED_UPLIFT_AT_30 < uplift["high"], f"{text} is not consistent with 0.0661"
    assert uplift["value"] > uplift["overall_uplift"]  # the ranking concentrates the effect in its top 30%


# --- Starbucks ----------------------------------------------------------------------------------------------
def test_starbucks_goes_through_the_real_ingest_unchanged(starbucks: dict[str, Any]) -> None:
    tables = starbucks["ingest"]["tables"]
    assert all(t["quarantined"] == 0 for t in tables.values()), tables
    assert tables["offer_events"]["accepted"] == 76_277 + 57_725 + 33_579  # received + viewed + completed
    assert tables["site_events"]["accepted"] == 138_953
    assert starbucks["max_abs_difference_served_vs_trained"] < 1e-9
    assert starbucks["conversion_window_days"] == 10


def test_starbucks_models_learn_more_than_the_offer_alone(starbucks: dict[str, Any], record_property) -> None:  # type: ignore[no-untyped-def]
    models = starbucks["models"]
    record_property("starbucks offer model AUC", models["offer"]["test_auc"])
    record_property("starbucks view model AUC", models["view"]["test_auc"])
    assert models["offer"]["test_auc"] > models["offer_id_only_test_auc"] + 0.1
    assert models["view"]["test_auc"] > models["offer_id_only_view_test_auc"] + 0.02


def test_starbucks_learned_policy_beats_random_and_matches_the_best_single_offer(
    starbucks: dict[str, Any],
    record_property,  # type: ignore[no-untyped-def]
) -> None:
    policies = starbucks["policies"]
    learned, best, random_offer = (policies[n]["IPS"] for n in ("learned", "best_single", "random"))
    _attach(record_property, "starbucks learned completion rate (IPS)", learned)
    _attach(record_property, "starbucks best single offer (IPS)", best)
    _attach(record_property, "starbucks random offer (IPS)", random_offer)
    assert starbucks["versus"]["random"]["IPS"]["low"] > 0.2  # +27 points over a random offer
    for estimator in ("IPS", "DR"):
        versus = starbucks["versus"]["best_single"][estimator]
        _attach(record_property, f"starbucks learned minus best single ({estimator}, paired)", versus)
        assert versus["value"] > -STANDARD_ERRORS * versus["std_error"], _text(versus)


def test_starbucks_intervals_agree_across_methods(starbucks: dict[str, Any]) -> None:
    for name, policy in starbucks["policies"].items():
        low, high = policy["bootstrap_ips"]
        normal = policy["IPS"]
        width = normal["high"] - normal["low"]
        assert abs(low - normal["low"]) < 0.15 * width and abs(high - normal["high"]) < 0.15 * width, name
        assert policy["DR"]["std_error"] <= policy["IPS"]["std_error"], name  # the model explains variance


# --- the command --------------------------------------------------------------------------------------------
def test_realdata_command_prints_the_figures(tmp_path: Path) -> None:
    from sendwise.cli import app

    out = tmp_path / "figures.json"
    arguments = ["realdata", "--only", "hillstrom", "--hillstrom", str(HILLSTROM_CSV), "--json", str(out)]
    arguments += ["--work-dir", str(tmp_path / "work")]
    result = CliRunner().invoke(app, [*arguments, "--plain-customers", "6000"])
    assert result.exit_code == 0, result.output
    assert "uplift@30%" in result.output and "0.0661" in result.output
    assert "policies learned on 32,000 customers" in result.output
    assert "Hillstrom as a plain export" in result.output and "Mens E-Mail to everyone" in result.output
    figures = json.loads(out.read_text())
    assert set(figures) == {"hillstrom"}
    assert figures["hillstrom"]["uplift_at_30"]["value"] > 0
    plain = figures["hillstrom"]["plain_export"]
    assert plain["test_customers"] == 3_000 and plain["decisions"]["cold_start"] == 3_000
    assert set(plain["policies"]) == {"learned", "mens_to_all", "womens_to_all", "no_email"}


def test_realdata_command_names_a_missing_dataset(tmp_path: Path) -> None:
    from sendwise.cli import app

    missing = tmp_path / "nowhere.csv"
    result = CliRunner().invoke(app, ["realdata", "--only", "hillstrom", "--hillstrom", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in result.output.replace("\n", "")
    unnamed = CliRunner().invoke(app, ["realdata", "--only", "starbucks"])
    assert unnamed.exit_code == 2
    assert "pass --starbucks PATH (docs/real-data.md says where to get it)" in " ".join(unnamed.output.split())


# --- Hillstrom as a plain export: `sendwise pipeline --as-of`, then /v1/decide for customers it never saw ----------
@pytest.fixture(scope="module")
def plain_export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from training.realdata.plain_export import plain_export_report

    return plain_export_report(HILLSTROM_CSV, tmp_path_factory.mktemp("plain"), seed=42, progress=False)


def _visit_rate(source: pd.DataFrame, segment: str) -> float:
    return float(source.loc[source["segment"] == segment, "visit"].mean())


def _test_half() -> pd.DataFrame:
    """The half the plain export's evaluation decides, split as its protocol says, straight from the CSV."""
    from sklearn.model_selection import train_test_split

    source = pd.read_csv(HILLSTROM_CSV)
    strata = source["segment"] + "/" + source["conversion"].astype(str)
    _, test = train_test_split(np.arange(len(source)), test_size=0.5, random_state=42, stratify=strata)
    return source.iloc[np.sort(test)]


def test_plain_export_trains_the_offer_model_and_decides_customers_it_never_saw(plain_export: dict[str, Any]) -> None:
    assert plain_export["train_customers"] == plain_export["test_customers"] == 32_000
    assert plain_export["command"].endswith("--as-of 2008-04-14T15:00:00Z")
    rows = plain_export["contract_rows"]
    assert rows["customers"] == 32_000 and rows["offers"] == 3
    assert rows["offer_events"] == 32_000 + 578 - int(_test_half()["conversion"].sum())  # exposures + conversions
    decisions = plain_export["decisions"]
    assert decisions["model_versions"]["next_best_offer"] == "1"
    assert decisions["cold_start"] == decisions["sent"] == 32_000  # every one unknown to the home, all sent
    assert decisions["batches"] == 4
    assert plain_export["offer_model"]["train_rows"] + plain_export["offer_model"]["valid_rows"] == 32_000
    assert plain_export["served_model"]["test_auc"] > 0.55  # ranks conversions of customers it never saw
    # a customer the home knows, decided by id, and the same customer as an unknown one with its attributes
    assert plain_export["diagnostics"]["known_vs_unknown_max_difference"] < 1e-9


def test_plain_export_ips_figures_come_from_the_logged_arms(plain_export: dict[str, Any]) -> None:
    test = _test_half()
    arms = {"Mens E-Mail": "mens_to_all", "Womens E-Mail": "womens_to_all", "No E-Mail": "no_email"}
    for segment, policy in arms.items():
        logged = (test["segment"] == segment).to_numpy()
        for outcome in ("conversion", "spend"):
            expected = float(np.mean(3.0 * logged * test[outcome].to_numpy(dtype=float)))
            assert plain_export["policies"][policy][outcome]["IPS"]["value"] == pytest.approx(expected, rel=1e-9)
    learned = plain_export["policies"]["learned"]
    for outcome in ("conversion", "spend"):
        ips = learned[outcome]["IPS"]
        assert ips["low"] < ips["value"] < ips["high"] and ips["n"] == 32_000


def test_plain_export_policy_is_at_least_mens_to_everyone(plain_export: dict[str, Any], record_property) -> None:  # type: ignore[no-untyped-def]
    policies, versus = plain_export["policies"], plain_export["versus_mens"]
    for outcome, scale in (("conversion", 100.0), ("spend", 1.0)):
        _attach(record_property, f"plain export: learned {outcome} (IPS)", policies["learned"][outcome]["IPS"], scale)
        difference = versus["learned"][outcome]["IPS"]
        text = _attach(record_property, f"plain export: learned minus Mens, {outcome} (IPS, paired)", difference, scale)
        assert difference["high"] >= 0, f"significantly below Mens E-Mail to everyone: {text}"
        assert policies["learned"][outcome]["IPS"]["value"] > policies["no_email"][outcome]["IPS"]["value"]
    assert versus["no_email"]["conversion"]["IPS"]["high"] < 0  # the baselines the bar is read against are apart
    shares = policies["learned"]["shares"]
    record_property("plain export: offer mix", json.dumps(shares))
    assert shares["no-email"] < 0.5 and shares["mens-email"] > 0.5, shares  # not "no email" for everyone
    assert all(plain_export["bar"].values()), plain_export["bar"]


def run_cli(arguments: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """`sendwise ARGUMENTS...` in a process of its own, with `home` as SENDWISE_HOME (wide output, no colour)."""
    env = {**os.environ, "SENDWISE_HOME": str(home), "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    command = [sys.executable, "-m", "sendwise.cli", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False)


def test_plain_export_without_as_of_says_why_no_offer_model(tmp_path: Path) -> None:
    from sendwise.adapters import hillstrom

    rows = np.random.default_rng(0).choice(64_000, 3_000, replace=False)
    hillstrom.to_plain_export(HILLSTROM_CSV, tmp_path / "data", rows=rows)
    tables = ("offer_events", "site_events")
    latest = max(pd.read_parquet(tmp_path / "data" / f"{t}.parquet")["occurred_at"].max() for t in tables)
    end = latest.floor("h") + pd.Timedelta(hours=1)
    assert end < hillstrom.SEND_TIME + pd.Timedelta(days=14)  # no event in the last hour of the two weeks
    finished = run_cli(["pipeline", "--data", str(tmp_path / "data")], tmp_path / "home")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    text = re.sub(r"[\s│┃]+", " ", finished.stdout)
    assert (
        f"next_best_offer - - not trained: none of 3,000 offer exposures has a closed 14-day conversion window by "
        f"{end:%Y-%m-%d %H:%M} UTC, the data's end; pass --as-of with the time the export was taken (200 offer "
        "exposures are closed by 2008-03-17 15:00 UTC)" in text
    ), text
