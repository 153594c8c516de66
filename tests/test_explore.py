"""What the explore notebook shows: feature tables and their spread, a champion's SHAP drivers, its segments."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sendwise.explain import readable
from sendwise.registry import champion, connect
from sendwise.settings import Settings
from training import explore
from training.registry import RegistryError

T0 = pd.Timestamp("2026-10-01", tz="UTC")


def drivers() -> explore.Drivers:
    """Six rows: `open_rate` pushes up as it grows, `campaign_kind` splits by kind, `sends_7d` does nothing."""
    design = pd.DataFrame(
        {
            "open_rate": np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], dtype="float32"),
            "campaign_kind": pd.Categorical(["promotional", "newsletter"] * 3),
            "sends_7d": np.ones(6, dtype="float32"),
        }
    )
    values = np.column_stack(
        [
            (design["open_rate"].to_numpy() - 0.25) * 2.4,  # -0.6 .. +0.6
            np.where(design["campaign_kind"] == "promotional", -0.3, 0.3),
            np.zeros(6),
        ]
    )
    return explore.Drivers("open_propensity", "7", design, values, base=-1.0)


def test_drivers_table_orders_by_strength_and_says_the_direction() -> None:
    table = drivers().table()
    assert table["feature"].tolist() == ["open_rate", "campaign_kind", "sends_7d"]
    assert table["mean |SHAP|"].tolist() == pytest.approx([0.36, 0.3, 0.0])
    assert table.loc[0, "reads as"] == readable("open_rate")
    assert table.loc[0, "value vs SHAP correlation"] == pytest.approx(1.0)
    assert np.isnan(table.loc[1, "value vs SHAP correlation"])  # a category has no one direction
    assert np.isnan(table.loc[2, "value vs SHAP correlation"])  # a constant says nothing


def test_prediction_is_the_base_plus_the_shap_values_as_a_probability() -> None:
    found = drivers()
    expected = 1 / (1 + np.exp(-(-1.0 + found.values.sum(axis=1))))
    assert found.prediction() == pytest.approx(expected)


def test_segments_by_a_category_say_what_else_sets_them_apart() -> None:
    table = explore.segments(drivers(), "campaign_kind")
    assert table.index.tolist() == ["newsletter", "promotional"]
    assert table["share of rows"].tolist() == [0.5, 0.5]
    assert table.loc["promotional", "campaign_kind SHAP (log-odds)"] == pytest.approx(-0.3)
    # the promotional rows are the rows 0, 2, 4: their open rates (0, 0.2, 0.4) sit below the average
    assert table.loc["promotional", "also sets it apart"] == readable("open_rate")
    assert table.loc["promotional", "by (log-odds vs all rows)"] == pytest.approx(-0.12)
    assert table.loc["newsletter", "mean predicted"] > table.loc["promotional", "mean predicted"]


def test_segments_of_a_numeric_feature_are_its_quantiles() -> None:
    table = explore.segments(drivers(), "open_rate", bins=2)
    assert len(table) == 2 and table["share of rows"].tolist() == [0.5, 0.5]
    assert table["open_rate SHAP (log-odds)"].tolist() == pytest.approx([-0.36, 0.36])
    with pytest.raises(KeyError, match="no feature 'country' in open_propensity's sample; it has open_rate"):
        explore.segments(drivers(), "country")


def test_describe_features_gives_missing_shares_and_spread() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "days_since_session": [1.0, 2.0, None, 4.0],
            "country": ["DE", "DE", "FR", None],
        }
    )
    table = explore.describe_features(frame)
    assert table.index.tolist() == ["days_since_session", "country"]
    assert table.loc["days_since_session", "missing"] == 0.25
    assert table.loc["days_since_session", "median"] == 2.0
    assert table.loc["days_since_session", "reads as"] == readable("days_since_session")
    assert table.loc["country", "distinct"] == 2 and table.loc["country", "most common"] == "DE"


def test_plot_distributions_draws_one_panel_per_feature() -> None:
    frame = pd.DataFrame({"n_emails": np.arange(50.0), "country": ["DE", "FR"] * 25})
    figure = explore.plot_distributions(frame, ["n_emails", "country"])
    shown = [axis for axis in figure.axes if axis.get_visible()]
    assert [axis.get_title() for axis in shown] == [readable("n_emails"), readable("country")]
    assert sum(patch.get_height() for patch in shown[0].patches) == 50  # every row in the histogram
    with pytest.raises(KeyError, match="no feature 'n_clicks'"):
        explore.plot_distributions(frame, ["n_clicks"])


def test_latest_features_keep_each_customers_last_row_without_the_hour_profiles(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    tables = settings.feature_tables_dir
    tables.mkdir(parents=True)
    one_day = pd.Timedelta(days=1)
    pd.DataFrame({"customer_id": ["a", "b"], "event_timestamp": [T0, T0], "country": ["DE", "FR"]}).to_parquet(
        tables / "customer_features.parquet"
    )
    pd.DataFrame(
        {
            "customer_id": ["a", "a", "b"],
            "event_timestamp": [T0 + one_day, T0, T0],
            "n_emails": [5.0, 3.0, 1.0],
            "rhythm_weekday": [np.zeros(24)] * 3,
        }
    ).to_parquet(tables / "engagement_features.parquet")
    with pytest.raises(FileNotFoundError, match=r"customer_attributes\.parquet does not exist: `sendwise pipeline"):
        explore.latest_features(settings)
    pd.DataFrame({"customer_id": ["b"], "event_timestamp": [T0], "attr_tier": ["gold"]}).to_parquet(
        tables / "customer_attributes.parquet"
    )
    latest = explore.latest_features(settings).set_index("customer_id")
    assert list(latest.columns) == ["country", "n_emails", "attr_tier"]
    assert latest.loc["a", "n_emails"] == 5.0  # the later row
    assert pd.isna(latest.loc["a", "attr_tier"]) and latest.loc["b", "attr_tier"] == "gold"


def test_champion_drivers_explain_the_champion_on_its_training_sample(pipeline_home) -> None:  # type: ignore[no-untyped-def]
    settings = pipeline_home.settings
    found = explore.champion_drivers(settings, "open_propensity")
    version, booster = champion(connect(settings), "open_propensity")  # type: ignore[misc]
    assert found.version == version and len(found.design) == 2000
    assert found.prediction() == pytest.approx(booster.predict(found.design), abs=1e-9)
    table = found.table()
    assert table["mean |SHAP|"].iloc[0] > 0.05 and table["mean |SHAP|"].is_monotonic_decreasing
    offer = explore.champion_drivers(settings, "next_best_offer")
    assert "discount_pct" in offer.design.columns


def test_champion_drivers_name_what_is_missing(pipeline_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shutil.copytree(pipeline_home.settings.mlruns_dir, tmp_path / "mlruns")  # the registry, not the samples
    with pytest.raises(RegistryError, match=r"open_propensity v1 has no training-set sample .*`sendwise train`"):
        explore.champion_drivers(Settings(home=tmp_path), "open_propensity")
    with pytest.raises(RegistryError, match=r"next_best_offer has no champion in .*`sendwise pipeline --data"):
        explore.champion_drivers(Settings(home=tmp_path / "empty"), "next_best_offer")


def test_feature_catalog_describes_every_feature_of_every_service(pipeline_home) -> None:  # type: ignore[no-untyped-def]
    from features.store import open_store

    catalog = explore.feature_catalog(open_store(pipeline_home.settings))
    assert set(catalog["service"]) == {"open_propensity_v1", "send_time_v1", "next_best_offer_v1"}
    engagement = catalog[catalog["view"] == "engagement_fv"]
    assert (engagement["description"].str.len() > 10).all()
    row = catalog[(catalog["service"] == "open_propensity_v1") & (catalog["feature"] == "n_emails")].iloc[0]
    assert row["type"] == "Float32" and row["description"] == "Emails the customer received recently."
    latest = explore.latest_features(pipeline_home.settings)
    assert latest["customer_id"].is_unique and len(latest) == 1500
