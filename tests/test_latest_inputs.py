"""Latest values as model inputs: point in time for training, read at decision time (pushed events included),
and the campaign-scale curve still the booster's own for customers with and without a recent visit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

import serving.curves as curves_module
from features.latest import ACTIVITY_TABLE
from features.store import open_store
from features.transform import HOURS_SINCE_VISIT, VISIT_HOURS_CAP, customer_matrix, open_design
from sendwise.raw import load_table
from serving.engine import Engine
from serving.schemas import DecideRequest, EventsRequest, Recipient
from tests.conftest import PipelineHome, home_with_own_decision_log
from training.datasets import historical_features

pytestmark = [pytest.mark.integration]


def _profiled_sendable(settings: object, n: int) -> list[str]:
    customers = load_table(settings, "customers")  # type: ignore[arg-type]
    assert customers is not None
    features = pd.read_parquet(settings.feature_tables_dir / "customer_features.parquet")  # type: ignore[attr-defined]
    eligible = set(features.loc[(features["email_eligible"] > 0) & (features["profiling_allowed"] > 0), "customer_id"])
    return [c for c in customers["customer_id"].astype(str) if c in eligible][:n]


def test_training_rows_see_only_the_activity_before_their_time(pipeline_home: PipelineHome) -> None:
    """Feast's point-in-time join through the open model's FeatureService: a row at a time sees the last site
    event at or before it, never one after, and the hours since it are what the model is trained on."""
    settings = pipeline_home.settings
    activity = pd.read_parquet(settings.feature_tables_dir / f"{ACTIVITY_TABLE}.parquet")
    counts = activity["customer_id"].value_counts()
    chosen = counts[counts >= 3].index[:40]
    events = activity[activity["customer_id"].isin(chosen)].sort_values("event_timestamp")
    first = events.groupby("customer_id").nth(0).set_index("customer_id")["event_timestamp"]
    middle = events.groupby("customer_id").nth(1).reset_index()
    at = middle["event_timestamp"]
    entity_df = pd.DataFrame(
        {
            "customer_id": np.r_[middle["customer_id"], middle["customer_id"]],
            "event_timestamp": pd.concat([at - pd.Timedelta(seconds=1), at]).to_numpy(),
        }
    )
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    rows = historical_features(open_store(settings), "open_propensity_v1", entity_df)
    seen = rows["last_session_ts"].to_numpy()
    stamps = entity_df["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    assert (seen <= stamps + 1e-3).all()  # nothing from after a row's time
    n = len(middle)
    middle_s = at.astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    previous = first.loc[middle["customer_id"]].astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6
    np.testing.assert_allclose(seen[:n], previous, atol=1e-3)  # a second before the event: the one before it
    np.testing.assert_allclose(seen[n:], middle_s, atol=1e-3)  # at the event's time: the event itself
    design = open_design(
        customer_matrix(rows),
        np.arange(len(rows)),
        entity_df["event_timestamp"],
        np.full(len(rows), "promotional"),
        np.full(len(rows), None, dtype=object),
    )
    since = design[HOURS_SINCE_VISIT].to_numpy()
    assert (since[n:] == 0.0).all()
    expected = np.clip((stamps[:n] - previous) / 3600, 0, VISIT_HOURS_CAP)
    assert (since[:n] <= expected).all() and (since[:n] > expected - 12).all()  # rounded down onto the grid


def test_the_served_curve_is_the_boosters_with_and_without_a_recent_visit(engine: Engine) -> None:
    ids = _profiled_sendable(engine.settings, 60)
    start = datetime(2026, 12, 5, 3, tzinfo=UTC)
    features = engine.online.for_recipients([Recipient(customer_id=c) for c in ids])
    minutes_ago = np.r_[np.full(20, np.nan), np.linspace(5, 60 * 60, 40)]  # none; 5 minutes to 60 hours ago
    features.set_latest({"last_session_ts": start.timestamp() - 60 * minutes_ago})
    matrix = features.matrix
    fast = engine.curves.curves(matrix, start, 48, "promotional", None)
    model = engine.curves.model
    assert model is not None and engine.curves._scorers[id(model.booster)] is not None  # the table was used
    design = curves_module.window_design(matrix, np.arange(len(ids)), start, 48, "promotional", None)
    assert (design[HOURS_SINCE_VISIT] < VISIT_HOURS_CAP).sum() > 300  # many (customer, hour) rows are recent
    direct = np.asarray(model.booster.predict(design[model.booster.feature_name()])).reshape(len(ids), 48)
    assert np.abs(fast - direct).max() < 1e-9
    # the visit is learned: the first hour after a visit minutes ago beats the same hour without one
    without = engine.curves.curves(
        engine.online.for_recipients([Recipient(customer_id=c) for c in ids]).matrix, start, 48, "promotional", None
    )
    features.set_latest({"last_session_ts": np.full(len(ids), start.timestamp() - 300.0)})
    just_now = engine.curves.curves(features.matrix, start, 48, "promotional", None)
    assert np.median(just_now[:, 0] / without[:, 0]) > 1.3


@pytest.fixture(scope="module")
def own_engine(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("latest") / "home")
    yield Engine.load(settings)


VISITED = datetime(2026, 12, 1, 10, tzinfo=UTC)
"""When the tests' pushed visits and purchases happen (a Tuesday, a month after the test world's data end)."""


def _z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _decide(engine: Engine, ids: list[str], start: datetime) -> list[dict[str, object]]:
    request = DecideRequest.model_validate(
        {
            "recipients": [{"customer_id": c} for c in ids],
            "campaign": {"kind": "promotional"},
            "window_start": start.isoformat(),
            "explore_share": 0.0,
        }
    )
    return engine.decide_payload(request)["decisions"]  # type: ignore[return-value]


def test_a_pushed_visit_moves_the_send_time_and_a_purchase_the_offer(own_engine: Engine) -> None:
    # A fixed moment, the visit one hour before the window opens: at the wall clock's now the hours since the
    # visit moved with the minute, and the send hours the visit competes with with the hour and the weekday.
    visited = VISITED
    start = visited + timedelta(hours=1)
    ids = _profiled_sendable(own_engine.settings, 200)
    before = _decide(own_engine, ids, start)
    late = [d for d in before if d["send"] and d["send_at"] != _z(start)][:20]
    assert len(late) == 20
    visit = {"table": "site_events", "event": "session_start", "occurred_at": visited.isoformat()}
    own_engine.events(EventsRequest(events=[{**visit, "customer_id": d["customer_id"]} for d in late]))
    after = {d["customer_id"]: d for d in _decide(own_engine, [str(d["customer_id"]) for d in late], start)}
    first_before = np.array([d["hourly_open_probability"][0] for d in late])
    first_after = np.array([after[d["customer_id"]]["hourly_open_probability"][0] for d in late])
    rise = first_after / first_before  # the first hour, an hour after the visit, is likelier for everyone
    assert (rise > 1.4).all(), np.round(rise, 2)
    moved = [str(after[d["customer_id"]]["send_at"]) for d in late]
    assert sum(m < str(d["send_at"]) for m, d in zip(moved, late, strict=True)) >= 15  # sooner, toward the visit
    assert sum(m == _z(start) for m in moved) >= 10  # most of them to the first hour of the window

    # a purchase in the category of the offer a customer was given changes that offer's score
    given = [d for d in before if d["send"] and d["offers"]][:20]
    category = own_engine.catalog.rows_by_id()
    purchases = [
        {
            "table": "site_events",
            "customer_id": d["customer_id"],
            "event": "purchase",
            "category": category[d["offers"][0]["offer_id"]]["category"],
            "value": 40.0,
            "occurred_at": visited.isoformat(),
        }
        for d in given
        if category[d["offers"][0]["offer_id"]].get("category")
    ]
    assert len(purchases) >= 10
    own_engine.events(EventsRequest(events=purchases))
    bought = {p["customer_id"] for p in purchases}
    again = {d["customer_id"]: d for d in _decide(own_engine, sorted(bought), start)}
    ratios, changed = [], 0
    for d in given:
        if d["customer_id"] not in bought:
            continue
        offer = d["offers"][0]["offer_id"]
        now_offers = {o["offer_id"]: o for o in again[d["customer_id"]]["offers"]}
        changed += again[d["customer_id"]]["offers"][0]["offer_id"] != offer
        if offer in now_offers:
            ratios.append(now_offers[offer]["conversion_probability"] / d["offers"][0]["conversion_probability"])
    moved_scores = np.abs(np.log(np.array(ratios))) > 0.1
    assert len(ratios) >= 15 and moved_scores.mean() >= 0.7, ratios
