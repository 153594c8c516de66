"""Offer scores as decisions compute them (`serving.offers.offer_probabilities`: the float matrix LightGBM would
convert the design to, walked by the compiled trees) against LightGBM itself on the design's frame, the way
training and the reference path read it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from features.transform import feature_names, offer_design
from sendwise.raw import load_table
from serving.engine import Engine
from serving.offers import offer_probabilities
from serving.schemas import Recipient
from tests.conftest import PipelineHome

START = datetime(2026, 12, 5, 3, tzinfo=UTC)


def test_offer_scores_equal_lightgbm_on_the_designs_frame(
    loaded_engine: Engine, pipeline_home: PipelineHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    ids = [*customers["customer_id"].sample(n=400, random_state=5).tolist(), "nobody-1"]
    recipients = [Recipient(customer_id=c) for c in ids[:-1]]
    recipients.append(Recipient(customer_id=ids[-1], timezone="Asia/Tokyo", interests=["books"]))
    features = loaded_engine.online.for_recipients(recipients)
    chosen = loaded_engine.catalog.eligible(START, None)
    assert chosen is not None and len(chosen.ids) >= 5
    model = loaded_engine.models["next_best_offer"]
    booster = model.booster
    n, m = len(ids), len(chosen.ids)
    frame = offer_design(features.matrix, np.repeat(np.arange(n), m), chosen.matrix, np.tile(np.arange(m), n))
    expected = booster.predict(frame[feature_names(booster)], num_threads=1).reshape(n, m)

    framed: list[int] = []
    predict = lgb.Booster.predict

    def counting(self: lgb.Booster, data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, pd.DataFrame):
            framed.append(len(data))
        return predict(self, data, *args, **kwargs)

    monkeypatch.setattr(lgb.Booster, "predict", counting)
    scored = offer_probabilities(features.matrix, np.arange(n), chosen.matrix, model)
    assert framed == []  # no frame was built for LightGBM to convert
    assert np.abs(scored - expected).max() < 1e-9
    assert np.ptp(expected[:, 0]) > 0.01 and np.ptp(expected[0]) > 0.001  # scores that differ by customer and offer
    assert features.known[:-1].sum() > 350 and not features.known[-1]
