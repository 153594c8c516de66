"""Customers rows sent as events (`POST /v1/events`, `sendwise push`): a person's consent withdrawn or given now.
Checked as the ingest checks customers, appended durably, merged by the next ingest by `updated_at`, and kept
as latest values (`features.latest.consent_changes`) that the next decision reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.latest import (
    EMAIL_CONSENTS,
    EMAIL_FLAGS,
    EMAIL_STATE_TABLE,
    accumulate,
    consent_changes,
    current,
    email_state_changes,
    with_schema,
)
from sendwise.ingest.appended import EventsError, append_events, check_events, pending_parts
from sendwise.settings import Settings
from tests.test_ingest import run, stored, write_customers

WITHDRAWN = {
    "table": "customers",
    "customer_id": "c2",
    "consent_email": "no",  # the contract's booleans, as the ingest reads them
    "consent_profiling": True,
    "timezone": "Europe/Berlin",
    "updated_at": "2026-11-21T10:00:00+01:00",
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def problems(rows: list[dict[str, object]], settings: Settings) -> list[tuple[str, str]]:
    with pytest.raises(EventsError) as caught:
        check_events(rows, settings)
    return [(p.name, p.message) for p in caught.value.problems]


def test_a_customers_row_is_read_with_the_contracts_rules(settings: Settings) -> None:
    checked = check_events(
        [WITHDRAWN, {**WITHDRAWN, "customer_id": "c3", "country": "UK", "attr_tier": "gold"}], settings
    )
    customers = checked.frames["customers"]
    assert customers["consent_email"].tolist() == [False, False]
    assert customers["consent_profiling"].tolist() == [True, True]
    assert customers["updated_at"].tolist() == [pd.Timestamp("2026-11-21T09:00:00Z")] * 2
    assert customers["country"].tolist()[1] == "GB"
    assert customers["attr_tier"].tolist() == [None, "gold"]


def test_bad_customers_rows_are_named_by_index_and_field(settings: Settings) -> None:
    missing_profiling = {k: v for k, v in WITHDRAWN.items() if k != "consent_profiling"}
    found = problems([WITHDRAWN, missing_profiling, {**WITHDRAWN, "colour": "red"}], settings)
    assert found[0][0] == "events[1].consent_profiling"
    assert "must say whether the customer allows profiling" in found[0][1]
    assert found[1][0] == "events[2].colour" and "not a column of customers" in found[1][1]
    found = problems(
        [WITHDRAWN, {**WITHDRAWN, "consent_email": "maybe"}, {**WITHDRAWN, "consent_email": None}], settings
    )
    assert [name for name, _ in found] == ["events[1].consent_email", "events[2].consent_email"]
    assert found[1][1] == "missing"


def test_a_row_without_updated_at_is_stamped_with_the_time_it_was_received(settings: Settings) -> None:
    row = {k: v for k, v in WITHDRAWN.items() if k != "updated_at"}
    checked = check_events([row], settings)
    assert checked.frames["customers"]["updated_at"].tolist() == [checked.received_at]


def test_the_next_ingest_merges_the_row_by_updated_at(data: Path, settings: Settings) -> None:
    write_customers(data)  # c1, c2, c3 with consent and no updated_at
    run(data, settings)
    stale = {**WITHDRAWN, "customer_id": "c3", "consent_email": True, "updated_at": "2026-11-20T00:00:00Z"}
    fresh = {**WITHDRAWN, "customer_id": "c3", "consent_email": False, "updated_at": "2026-11-22T00:00:00Z"}
    assert append_events(settings, check_events([WITHDRAWN, fresh, stale], settings)) == {"customers": 3}
    assert list(pending_parts(settings)) == ["customers"]
    run(data, settings)  # the same export again: only the appended rows are new

    customers = stored(settings, "customers").set_index("customer_id")
    assert customers["consent_email"].to_dict() == {"c1": True, "c2": False, "c3": False}  # the latest row wins
    assert customers.loc["c2", "updated_at"] == pd.Timestamp("2026-11-21T09:00:00Z")
    assert pending_parts(settings) == {}
    run(data, settings)  # and re-ingesting the old export does not bring the consent back
    assert not stored(settings, "customers").set_index("customer_id").loc["c2", "consent_email"]


def test_latest_consent_follows_updated_at_and_never_lifts_a_stop(settings: Settings) -> None:
    later = {**WITHDRAWN, "consent_email": True, "updated_at": "2026-11-22T00:00:00Z"}
    older = {**WITHDRAWN, "consent_profiling": False, "updated_at": "2026-11-19T00:00:00Z"}
    unsubscribe = {
        "table": "email_events",
        "customer_id": "c2",
        "message_id": "m-1",
        "event": "unsubscribe",
        "occurred_at": "2026-11-21T12:00:00Z",
    }
    checked = check_events([WITHDRAWN, later, older, unsubscribe], settings)
    changes = pd.concat(
        [
            email_state_changes(checked.frames["email_events"]),
            consent_changes(checked.frames["customers"], checked.received_at),
        ],
        ignore_index=True,
    )
    state = current(accumulate(with_schema(changes, EMAIL_STATE_TABLE), EMAIL_CONSENTS, EMAIL_FLAGS))
    [row] = state.to_dict("records")
    assert (row["event_consent_email"], row["event_consent_profiling"]) == (1.0, 1.0)  # the latest row's
    assert row["unsubscribed"] == 1.0  # consent given again does not undo an unsubscribe
    # the batch build's table has the columns, empty: its consent is the customers table's
    built = with_schema(
        accumulate(email_state_changes(checked.frames["email_events"]), (), EMAIL_FLAGS), EMAIL_STATE_TABLE
    )
    assert np.isnan(built["event_consent_email"].to_numpy()).all()
