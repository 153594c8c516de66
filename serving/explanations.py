"""The drivers of the predictions the service serves: the open probability at a send hour, and an offer's
conversion probability, each taken apart into SHAP values and said in plain words (`sendwise.explain`).

An explanation is made from the very design row the prediction is scored from (`features.transform`'s
`open_columns` and `offer_columns`, as the curves and the offer table are), so its base value plus its SHAP
values is the log-odds of the probability `/v1/decide` serves: the curve table's entry at that hour, or the
offer's conversion probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from features.transform import (
    CustomerMatrix,
    DesignColumns,
    OfferMatrix,
    feature_names,
    lightgbm_matrix,
    offer_columns,
    open_columns,
)
from sendwise.champions import LoadedModel
from sendwise.explain import CONVERSION, OPEN, DriverFacts, Explanation, explain_rows
from serving.curves import prediction_threads

DECISION_DRIVERS = 3
"""How many drivers `/v1/decide` with `explain` gives each decision to send."""
THREADED_ROWS = 64
"""From this many rows TreeSHAP runs on every core: a row costs as much as hundreds of rows of predict, so
OpenMP's start-up pays off far sooner than for predictions (`serving.curves.SMALL_BATCH_ROWS`)."""


def _explained(model: LoadedModel, columns: DesignColumns, outcome: str, top: int) -> list[Explanation]:
    """Every row of `columns` explained by `model`'s booster, from the matrix LightGBM predicts from (or the
    frame, where the booster's categories are not the design's)."""
    booster = model.booster
    names = feature_names(booster)
    rows = lightgbm_matrix(columns, booster)
    design = rows if rows is not None else columns.frame()[names]
    threads = prediction_threads(columns.rows, small=THREADED_ROWS)
    return explain_rows(booster, design, names, columns.values, outcome, top, threads)


def explain_opens(
    model: LoadedModel,
    matrix: CustomerMatrix,
    rows: np.ndarray,
    send_at: Sequence[datetime],
    kind: str,
    topic: str | None,
    top: int,
) -> list[Explanation]:
    """The open probability of each customer row of `matrix` at its `send_at`, for a campaign of `kind` and
    `topic`, explained."""
    n = len(rows)
    times = pd.DatetimeIndex(list(send_at)).tz_convert("UTC")
    # one instant for every row (a single explanation) takes open_columns' quick path
    when = times[0] if len(times.unique()) == 1 else pd.Series(times)
    columns = open_columns(matrix, rows, when, np.full(n, kind), np.full(n, topic, dtype=object))
    return _explained(model, columns, OPEN, top)


def explain_offer(
    model: LoadedModel,
    matrix: CustomerMatrix,
    row: int,
    offers: OfferMatrix,
    offer: int,
    top: int,
    at: datetime | None = None,
) -> Explanation:
    """The conversion probability of offer row `offer` for customer row `row` in a decision at `at` (its latest
    values judged then; None: as if no recent activity were known), explained."""
    when = None if at is None else pd.Timestamp(at)
    columns = offer_columns(matrix, np.array([row]), offers, np.array([offer]), when)
    return _explained(model, columns, CONVERSION, top)[0]


def decision_drivers(
    model: LoadedModel | None,
    matrix: CustomerMatrix,
    decisions: list[dict[str, object]],
    start: datetime,
    hours: np.ndarray,
    kind: str,
    topic: str | None,
    first: int = 0,
) -> None:
    """Add `drivers` to every decision of a part of a batch (its rows in `matrix` from row `first`, in order;
    `hours` the part's): the top three drivers of a sent decision's open probability at its send hour (`start`
    + `hours[i]`), by the model its curve came from (`model`; no drivers without one); None on a decision not
    to send."""
    sent = [i for i, d in enumerate(decisions) if d["send"]]
    found: list[list[DriverFacts]] = [[] for _ in sent]
    if model is not None and sent:
        offsets = pd.to_timedelta(hours[sent], unit="h")
        send_at = list(pd.Timestamp(start) + offsets)
        rows = np.array(sent) + first
        explained = explain_opens(model, matrix, rows, send_at, kind, topic, DECISION_DRIVERS)
        found = [e.drivers for e in explained]
    for d in decisions:
        d["drivers"] = None
    for i, drivers in zip(sent, found, strict=True):
        decisions[i]["drivers"] = drivers
