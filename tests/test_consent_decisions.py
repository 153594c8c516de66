"""A customers row pushed as an event (`POST /v1/events`) is honoured by the very next decision: a withdrawn
email consent answers as a batch-known non-consenting customer does, a withdrawn profiling consent leaves
population-level predictions only; consent given again lifts only what an event withdrew, never a stop; and
after the next ingest and features build the customer's events are out of the features."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.transform import ENGAGEMENT_FEATURES
from sendwise.raw import load_table
from serving.engine import Engine
from serving.reasons import NO_CONSENT, NO_PROFILING, NOT_ELIGIBLE
from serving.schemas import DecideRequest, EventsRequest, RenderRequest
from tests.conftest import PipelineHome, home_with_own_decision_log

pytestmark = [pytest.mark.integration]

WINDOW = "2026-12-08T10:00:00Z"  # a fixed window: answers compared across calls do not move with the clock


@pytest.fixture(scope="module")
def own_engine(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("consent") / "home")
    yield Engine.load(settings)


def customers_by_consent(settings: Any) -> tuple[list[str], list[str], list[str]]:
    """(sendable customers who allow profiling, batch-known customers without email consent, without profiling
    consent but sendable), as the feature tables have them."""
    features = pd.read_parquet(settings.feature_tables_dir / "customer_features.parquet")
    sendable = features["email_eligible"] > 0
    profiled = features["profiling_allowed"] > 0
    ids = features["customer_id"].astype(str)
    return (
        ids[sendable & profiled].tolist(),
        ids[features["consent_email"] == 0].tolist(),
        ids[sendable & ~profiled].tolist(),
    )


def consent_row(customer: str, email: bool, profiling: bool = True, at: str | None = None) -> dict[str, object]:
    row: dict[str, object] = {
        "table": "customers",
        "customer_id": customer,
        "consent_email": email,
        "consent_profiling": profiling,
    }
    if at is not None:
        row["updated_at"] = at
    return row


def decide(engine: Engine, recipients: list[dict[str, object]]) -> list[dict[str, Any]]:
    request = DecideRequest.model_validate(
        {
            "recipients": recipients,
            "campaign": {"kind": "promotional"},
            "window_start": WINDOW,
            "explore_share": 0.0,
        }
    )
    return engine.decide_payload(request)["decisions"]  # type: ignore[return-value]


def ids_of(*customers: str) -> list[dict[str, object]]:
    return [{"customer_id": c} for c in customers]


def not_sent(decision: dict[str, Any]) -> tuple[object, ...]:
    """What a decision not to send says, without who and which decision."""
    return (decision["send"], decision["send_at"], decision["offers"], decision["modules"], decision["reasons"])


def test_a_withdrawn_email_consent_stops_the_next_decision_as_the_batch_would(own_engine: Engine) -> None:
    profiled, refused, _ = customers_by_consent(own_engine.settings)
    assert refused, "the small world has customers without email consent"
    withdrawing, returning, unsubscribed, staying = profiled[:4]
    ids = [withdrawing, returning, unsubscribed, staying]
    before = decide(own_engine, ids_of(*ids))
    assert [d["send"] for d in before] == [True] * 4

    answer = own_engine.events(
        EventsRequest(
            events=[
                consent_row(withdrawing, False),
                consent_row(returning, False, at="2026-12-01T09:00:00Z"),
                consent_row(unsubscribed, False, at="2026-12-01T09:00:00Z"),
                {
                    "table": "email_events",
                    "customer_id": unsubscribed,
                    "message_id": "m-consent-1",
                    "event": "unsubscribe",
                    "occurred_at": "2026-12-01T09:30:00Z",
                },
            ]
        )
    )
    assert answer.appended == {"customers": 3, "email_events": 1} and answer.status == "ok" and answer.pushed == 3

    after = decide(own_engine, ids_of(*ids, refused[0]))
    assert [d["send"] for d in after] == [False, False, False, True, False]
    # the same answer a customer the customers table says has no consent gets
    assert not_sent(after[0]) == not_sent(after[-1])
    assert after[0]["reasons"][0] == NO_CONSENT and after[0]["offers"] == [] and after[0]["send_at"] is None
    # an email decided before the withdrawal is not rendered after it
    email = own_engine.render(RenderRequest(decision_id=str(before[0]["decision_id"])))
    assert not email.send and email.html is None and NO_CONSENT in email.reasons

    # consent given again: sendable again, but never over an unsubscribe
    own_engine.events(
        EventsRequest(
            events=[
                consent_row(returning, True, at="2026-12-02T09:00:00Z"),
                consent_row(unsubscribed, True, at="2026-12-02T09:00:00Z"),
                consent_row(withdrawing, True, at="2020-01-01T00:00:00Z"),  # older than the withdrawal: loses
            ]
        )
    )
    again = decide(own_engine, ids_of(withdrawing, returning, unsubscribed))
    assert [d["send"] for d in again] == [False, True, False]
    assert NO_CONSENT in again[0]["reasons"] and NOT_ELIGIBLE in again[2]["reasons"]
    assert again[1]["send_at"] == before[1]["send_at"]
    assert again[1]["open_probability"] == pytest.approx(before[1]["open_probability"])


def test_consent_given_by_event_does_not_override_the_customers_table(own_engine: Engine) -> None:
    """Consent the customers table withholds is given by the next ingest and features build: a pushed row
    cannot make a customer sendable whom the batch features say did not consent (nor can a stale one)."""
    _, refused, _ = customers_by_consent(own_engine.settings)
    own_engine.events(EventsRequest(events=[consent_row(refused[1], True, at="2026-12-02T00:00:00Z")]))
    (decision,) = decide(own_engine, ids_of(refused[1]))
    assert decision["send"] is False and decision["reasons"][0] == NO_CONSENT


def test_a_withdrawn_profiling_consent_leaves_population_predictions_only(own_engine: Engine) -> None:
    profiled, _, _ = customers_by_consent(own_engine.settings)
    customer = profiled[10]
    (own,) = decide(own_engine, ids_of(customer))
    assert NO_PROFILING not in own["reasons"]

    # what the customer gets where the batch features say they do not allow profiling
    state = own_engine.online.current()
    assert state is not None
    row = int(state.snapshot.rows([customer])[0])
    allowed, scores = state.snapshot.consent["profiling_allowed"][row], state.offer_table[row].copy()
    state.snapshot.consent["profiling_allowed"][row], state.offer_table[row] = 0.0, np.nan
    try:
        (batch_known,) = decide(own_engine, ids_of(customer))
    finally:
        state.snapshot.consent["profiling_allowed"][row], state.offer_table[row] = allowed, scores

    own_engine.events(EventsRequest(events=[consent_row(customer, True, profiling=False)]))
    features = own_engine.online.for_recipients(ids_of_recipients(customer))
    assert features.profiled.tolist() == [False] and features.consent.tolist() == [True]
    assert np.isnan(features.matrix.scalars[0, : len(ENGAGEMENT_FEATURES)]).all()
    (pushed,) = decide(own_engine, ids_of(customer))
    assert pushed["send"] is True and NO_PROFILING in pushed["reasons"]
    assert pushed["hourly_open_probability"] == pytest.approx(batch_known["hourly_open_probability"])
    assert [o["offer_id"] for o in pushed["offers"]] == [o["offer_id"] for o in batch_known["offers"]]
    assert [o["conversion_probability"] for o in pushed["offers"]] == pytest.approx(
        [o["conversion_probability"] for o in batch_known["offers"]]
    )
    assert pushed["hourly_open_probability"] != pytest.approx(own["hourly_open_probability"])


def ids_of_recipients(*customers: str) -> list[Any]:
    from serving.schemas import Recipient

    return [Recipient(customer_id=c) for c in customers]


def test_a_customer_the_features_do_not_know_yet_arrives_by_a_customers_row(own_engine: Engine) -> None:
    """A customer who joined after the last export: decided as a new customer (population predictions pooled by
    the request's context) where they consent, and not sent, with the reason, where they withdrew consent."""
    consenting, withdrawn = "newcomer-consenting", "newcomer-withdrawn"
    answer = own_engine.events(
        EventsRequest(
            events=[consent_row(consenting, True, profiling=False), consent_row(withdrawn, False, profiling=False)]
        )
    )
    assert answer.appended == {"customers": 2} and answer.pushed == 2
    recipients = [{"customer_id": c, "timezone": "Europe/Paris"} for c in (consenting, withdrawn)]
    sent, refused = decide(own_engine, recipients)
    assert sent["send"] is True and sent["cold_start"] is True and sent["send_at"] is not None
    assert refused["send"] is False and refused["reasons"][0] == NO_CONSENT and refused["offers"] == []


def test_after_the_next_ingest_and_build_the_customers_events_are_out_of_the_features(
    pipeline_home: PipelineHome, tmp_path: Path
) -> None:
    """`sendwise materialize` merges the appended customers row into the raw store and builds the features
    again: the customer no longer allows profiling there, and none of their events are in the feature tables
    (the training sets read them)."""
    from typer.testing import CliRunner

    from sendwise.cli import app
    from sendwise.ingest.appended import append_events, check_events, pending_parts

    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    profiled, _, _ = customers_by_consent(settings)
    activity = pd.read_parquet(settings.feature_tables_dir / "latest_activity.parquet")
    customer = next(c for c in profiled if c in set(activity["customer_id"]))
    stored = load_table(settings, "customers")
    assert stored is not None
    row = stored.loc[stored["customer_id"] == customer].iloc[0]
    whole = {"timezone": row["timezone"], **consent_row(customer, True, profiling=False)}
    append_events(settings, check_events([whole], settings))

    env = {"SENDWISE_HOME": str(settings.home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = CliRunner().invoke(app, ["materialize"], env=env)
    assert result.exit_code == 0, result.output
    assert "appended events merged into the raw store: 1 customers" in result.output  # a changed row counts
    assert pending_parts(settings) == {}
    customers = load_table(settings, "customers")
    assert customers is not None
    merged = customers.loc[customers["customer_id"] == customer].iloc[0]
    assert not merged["consent_profiling"] and merged["consent_email"] and merged["timezone"] == row["timezone"]
    features = pd.read_parquet(settings.feature_tables_dir / "customer_features.parquet")
    assert features.loc[features["customer_id"] == customer, "profiling_allowed"].tolist() == [0.0]
    activity = pd.read_parquet(settings.feature_tables_dir / "latest_activity.parquet")
    assert customer not in set(activity["customer_id"])
    assert len(activity) > 0  # everyone else's are still there
