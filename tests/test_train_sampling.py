"""Past `SENDWISE_TRAIN_MAX_ROWS` examples a model is trained on a seeded sample that keeps the rarer label's
examples first, each row weighted by how many of its label it stands for, and its MLflow run says so."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from tests.conftest import PipelineHome
from training.datasets import Sample, sample_rows


def labels(n: int, positives: int, seed: int = 3) -> np.ndarray:
    label = np.zeros(n, dtype=np.float32)
    label[np.random.default_rng(seed).choice(n, size=positives, replace=False)] = 1.0
    return label


def test_up_to_the_cap_every_row_is_kept_unweighted() -> None:
    rows, sample = sample_rows(labels(5_000, 500), 5_000)
    assert sample is None and rows.tolist() == list(range(5_000))
    rows, sample = sample_rows(labels(5_000, 500), None)
    assert sample is None and len(rows) == 5_000


def test_past_the_cap_every_rare_example_is_kept_and_the_rest_sampled_uniformly() -> None:
    """Conversions are a few in a hundred: a uniform 20% sample would keep a fifth of them."""
    label = labels(100_000, 3_000)
    rows, sample = sample_rows(label, 20_000)
    assert sample == Sample(available=100_000, kept=20_000, positives_available=3_000, positives_kept=3_000)
    assert len(rows) == len(np.unique(rows)) == 20_000
    assert (np.diff(rows) > 0).all() and rows.min() >= 0 and rows.max() < 100_000
    assert np.array_equal(rows, sample_rows(label, 20_000)[0])  # the same rows on every run
    assert set(np.flatnonzero(label)) <= set(rows.tolist())
    # The negatives uniformly: each tenth of them keeps about 17,000 / 97,000 of itself.
    negatives = rows[label[rows] == 0]
    per_tenth = np.bincount(negatives // 10_000, minlength=10)
    assert per_tenth.min() > 1_550 and per_tenth.max() < 1_950
    weights = sample.weights(label[rows])
    assert weights[label[rows] > 0] == pytest.approx(1.0)
    assert weights[label[rows] == 0] == pytest.approx(97_000 / 17_000)
    assert weights.sum() == pytest.approx(100_000, rel=1e-5)  # the kept rows stand for all of them
    assert sample.mlflow_params() == {
        "training_rows_sampled": "true",
        "training_rows_available": 100_000,
        "training_rows_kept": 20_000,
        "training_positives_available": 3_000,
        "training_positives_kept": 3_000,
        "training_sample_rate": 0.2,
        "training_positive_weight": 1.0,
        "training_negative_weight": round(97_000 / 17_000, 6),
    }
    assert sample.sentence("next_best_offer") == (
        "next_best_offer: trained on a sample of 20,000 of 100,000 examples (SENDWISE_TRAIN_MAX_ROWS): 3,000 of "
        "3,000 positives, each weighted 1.00, and 17,000 of 97,000 negatives, each weighted 5.71"
    )


def test_when_both_labels_pass_half_the_cap_each_keeps_half() -> None:
    label = labels(100_000, 30_000)
    rows, sample = sample_rows(label, 20_000)
    assert sample is not None and sample.positives_kept == 10_000 and int((label[rows] == 0).sum()) == 10_000
    assert sample.positive_weight == pytest.approx(3.0) and sample.negative_weight == pytest.approx(7.0)
    # weighted, the sample's rate is the whole set's
    assert np.average(label[rows], weights=sample.weights(label[rows])) == pytest.approx(0.3)


def test_weighted_metrics_of_a_sample_are_those_of_the_whole_set() -> None:
    from training.models import intercept_shift, logloss, mean

    rng = np.random.default_rng(5)
    prediction = rng.uniform(0.01, 0.2, 200_000)
    label = (rng.uniform(size=200_000) < prediction).astype(np.float32)
    rows, sample = sample_rows(label, 40_000)
    assert sample is not None
    weight = sample.weights(label[rows])
    assert mean(label[rows], weight) == pytest.approx(label.mean(), rel=1e-6)
    assert logloss(label[rows], prediction[rows], weight) == pytest.approx(logloss(label, prediction), rel=0.02)
    shift = intercept_shift(prediction[rows], label[rows], weight=weight)
    assert shift == pytest.approx(intercept_shift(prediction, label), abs=0.03)
    assert abs(intercept_shift(prediction[rows], label[rows])) > 0.5  # unweighted, the balanced sample misleads


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
    # Every send once, and a stable share again with its open history hidden, each weighted by its label.
    assert 4_000 < len(data.label) < 8_000 and len(data.weight) == len(data.label)
    assert np.allclose(data.weight[data.label > 0], data.sample.positive_weight)
    assert np.allclose(data.weight[data.label == 0], data.sample.negative_weight)
    found = offer_training_set(features.store, features.tables, settings.conversion_window_days, 1_000)
    assert found is not None and found[0].sample is not None and len(found[0].label) == 1_000

    result = train_models(settings, features.tables, features.store, progress=False, promote=False)
    assert set(result.sampled) == {"open_propensity"} | (
        {"next_best_offer"} if found[0].sample.available > 4_000 else set()
    )
    assert result.sampled["open_propensity"].startswith("open_propensity and send_time: trained on a sample of 4,000")
    client = mlflow.MlflowClient(settings.tracking_uri)
    run = client.search_runs(
        [client.get_experiment_by_name("sendwise").experiment_id],  # type: ignore[union-attr]
        "tags.model = 'open_propensity'",
        order_by=["start_time DESC"],
        max_results=1,
    )[0]
    assert run.data.params["training_rows_sampled"] == "true"
    assert run.data.params["training_rows_kept"] == "4000"
    assert float(run.data.params["training_negative_weight"]) == pytest.approx(data.sample.negative_weight, rel=1e-5)
    assert result.metrics["open_propensity"]["valid_auc"] > 0.7
