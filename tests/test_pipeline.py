"""The whole pipeline on a small world: features point-in-time, machine opens, registry, quality bars."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from features.build import build_feature_tables
from features.labels import label_sends
from sendwise.raw import load_table
from sendwise.settings import Settings
from sendwise.simulator.truth import World
from training.evaluate import evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pipeline_registers_three_champions_with_their_data_window(pipeline_home) -> None:  # type: ignore[no-untyped-def]
    client = MlflowClient(tracking_uri=pipeline_home.settings.tracking_uri)
    for name in ("open_propensity", "send_time", "next_best_offer"):
        version = client.get_model_version_by_alias(name, "champion")
        run = client.get_run(version.run_id) if version.run_id else None
        assert "promotion" in client.get_model_version(name, version.version).tags
        if run is not None:
            assert run.data.params["feature_service"].endswith("_v1")
            assert pd.Timestamp(run.data.params["train_end"]) < pd.Timestamp(run.data.params["data_end"])
            assert 0.6 < run.data.metrics["valid_auc"] < 1.0
    assert (pipeline_home.settings.mlruns_dir / "mlflow.db").exists()
    assert (pipeline_home.settings.feast_dir / "online.db").exists()


def test_features_use_only_events_before_their_time(pipeline_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Rows up to a cut are identical whether or not the events after the cut exist."""
    full = pd.read_parquet(pipeline_home.settings.feature_tables_dir / "engagement_features.parquet")
    home = tmp_path / "home"
    shutil.copytree(pipeline_home.settings.raw_dir, home / "raw")
    settings = Settings(home=home)
    events = load_table(settings, "email_events")
    assert events is not None
    cut = events["occurred_at"].min().floor("D") + pd.Timedelta(days=20)
    for table in ("email_events", "site_events", "offer_events"):
        frame = pd.read_parquet(home / "raw" / f"{table}.parquet")
        frame[frame["occurred_at"] < cut].to_parquet(home / "raw" / f"{table}.parquet")
    build_feature_tables(settings, as_of=cut + pd.Timedelta(days=30), progress=False)
    truncated = pd.read_parquet(settings.feature_tables_dir / "engagement_features.parquet")
    key = ["customer_id", "event_timestamp"]
    before = full[full["event_timestamp"] < cut].sort_values(key).reset_index(drop=True)
    after = truncated[truncated["event_timestamp"] < cut].sort_values(key).reset_index(drop=True)
    assert len(before) > 1000
    merged = before.merge(after, on=key, suffixes=("", "_t"))
    assert len(merged) == len(before)
    for column in ("n_emails", "n_human_opens", "sends_7d", "days_since_session"):
        np.testing.assert_allclose(merged[column], merged[f"{column}_t"], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(
        np.stack(merged["open_hours_weekday"].to_numpy()), np.stack(merged["open_hours_weekday_t"].to_numpy())
    )


def test_machine_open_detector_against_the_truth(pipeline_home) -> None:  # type: ignore[no-untyped-def]
    events = load_table(pipeline_home.settings, "email_events")
    assert events is not None
    opens = label_sends(events).opens
    truth = World.load(pipeline_home.world).email_opens().drop_duplicates("event_id").set_index("event_id")
    joined = opens.join(truth["is_machine"].rename("true_machine"), on="event_id", how="inner")
    assert len(joined) > 0.9 * len(opens)
    detected, actual = joined["is_machine"].astype(bool), joined["true_machine"].astype(bool)
    precision = (detected & actual).sum() / detected.sum()
    recall = (detected & actual).sum() / actual.sum()
    flagged_recall = (joined["flagged"] & actual).sum() / actual.sum()
    assert precision >= 0.97
    assert recall >= 0.97
    assert recall > flagged_recall  # the detector finds machine opens the ESP did not flag


def test_evaluation_beats_every_baseline(pipeline_home) -> None:  # type: ignore[no-untyped-def]
    result = evaluate(pipeline_home.settings, pipeline_home.world, progress=False)
    st = result.send_time
    assert result.customers > 1000
    for baseline in ("random hour", "best single UTC hour", "most frequent past engagement hour"):
        assert st["sendwise"] > st[baseline], (baseline, st)
    offer = result.offer
    for baseline in ("random offer", "best single offer"):
        assert offer["sendwise"] > offer[baseline], (baseline, offer)
    assert result.open_model["AUC ratio"] > 0.85
    assert 0.5 < result.open_model["mean predicted / mean true"] < 1.5
