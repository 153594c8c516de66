"""Past `SENDWISE_TRAIN_MAX_ROWS` examples a model is trained on a seeded uniform sample, each row weighted by the
inverse of the share kept, and its MLflow run says so."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import PipelineHome
from training.datasets import Sample, sample_rows


def test_up_to_the_cap_every_row_is_kept_unweighted() -> None:
    rows, sample = sample_rows(5_000, 5_000)
    assert sample is None and rows.tolist() == list(range(5_000))
    rows, sample = sample_rows(5_000, None)
    assert sample is None and len(rows) == 5_000


def test_past_the_cap_a_seeded_uniform_sample_in_order() -> None:
    rows, sample = sample_rows(100_000, 20_000)
    assert sample == Sample(available=100_000, kept=20_000)
    assert len(rows) == len(np.unique(rows)) == 20_000
    assert (np.diff(rows) > 0).all() and rows.min() >= 0 and rows.max() < 100_000
    assert np.array_equal(rows, sample_rows(100_000, 20_000)[0])  # the same rows on every run
    # Uniform: each tenth of the rows keeps about a fifth of itself.
    per_tenth = np.bincount(rows // 10_000, minlength=10)
    assert per_tenth.min() > 1_800 and per_tenth.max() < 2_200
    assert sample.rate == pytest.approx(0.2)
    assert sample.mlflow_params() == {
        "training_rows_sampled": "true",
        "training_rows_available": 100_000,
        "training_rows_kept": 20_000,
        "training_sample_rate": 0.2,
        "training_sample_weight": 5.0,
    }
    assert sample.sentence("next_best_offer") == (
        "next_best_offer: trained on a uniform sample of 20,000 of 100,000 examples (20.0%, "
        "SENDWISE_TRAIN_MAX_ROWS), each weighted 5.00"
    )


def test_a_capped_training_is_weighted_logged_and_still_learns(pipeline_home: PipelineHome, tmp_path: Path) -> None:
    """The small world's pipeline home, copied, trained again with a cap below its sends and its exposures."""
    import shutil

    from training import jobs
    from training.datasets import offer_training_set, open_training_set
    from training.train import train_models

    home = tmp_path / "home"
    shutil.copytree(pipeline_home.settings.home, home)
    settings = pipeline_home.settings.model_copy(update={"home": home, "train_max_rows": 4_000})
    settings.activate()
    features = jobs.build_features(settings, progress=False)
    data = open_training_set(features.store, features.tables, settings.label_window_hours, settings.train_max_rows)
    assert data is not None and data.sample is not None and data.weight is not None
    assert data.sample.kept == 4_000 and data.sample.available > 4_000
    # Every send once, and a stable share again with its open history hidden: one weight for all of them.
    assert 4_000 < len(data.label) < 8_000
    assert np.allclose(data.weight, data.sample.available / 4_000) and len(data.weight) == len(data.label)
    found = offer_training_set(features.store, features.tables, settings.conversion_window_days, 1_000)
    assert found is not None and found[0].sample is not None and len(found[0].label) == 1_000

    result = train_models(settings, features.tables, features.store, progress=False, promote=False)
    assert set(result.sampled) == {"open_propensity"} | (
        {"next_best_offer"} if found[0].sample.available > 4_000 else set()
    )
    assert result.sampled["open_propensity"].startswith("open_propensity and send_time: trained on a uniform sample")
    client = mlflow.MlflowClient(settings.tracking_uri)
    run = client.search_runs(
        [client.get_experiment_by_name("sendwise").experiment_id],  # type: ignore[union-attr]
        "tags.model = 'open_propensity'",
        order_by=["start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.params["training_rows_sampled"] == "true"
    assert run.data.params["training_rows_kept"] == "4000"
    assert float(run.data.params["training_sample_weight"]) == pytest.approx(data.sample.available / 4_000, rel=1e-5)
    assert result.metrics["open_propensity"]["valid_auc"] > 0.7
