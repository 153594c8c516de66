"""Events appended one batch at a time: checked row by row against the contract, written durably to the
append-only part of the raw store, merged by the next ingest exactly once, erased customers refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from sendwise import raw
from sendwise.ingest.appended import (
    EventsError,
    append_events,
    appended_dir,
    check_events,
    pending_parts,
)
from sendwise.settings import Settings
from sendwise.tombstones import add_tombstones
from tests.test_ingest import run, stored, write_customers, write_email_events

SESSION = {"table": "site_events", "customer_id": "c1", "event": "session_start", "occurred_at": "2026-11-20T09:00:00Z"}
UNSUBSCRIBE = {
    "table": "email_events",
    "event_id": "e-unsub",
    "customer_id": "c2",
    "message_id": "m-9",
    "event": "Unsubscribed",  # an alias, any case: the contract's rules, as the ingest applies them
    "occurred_at": "2026-11-20T10:15:00+01:00",
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


def test_rows_are_read_with_the_contracts_rules(settings: Settings) -> None:
    checked = check_events([SESSION, UNSUBSCRIBE, {**SESSION, "event": "purchase", "value": "12.5"}], settings)
    emails, site = checked.frames["email_events"], checked.frames["site_events"]
    assert emails["event"].tolist() == ["unsubscribe"]
    assert emails["occurred_at"].tolist() == [pd.Timestamp("2026-11-20T09:15:00Z")]
    assert site["event"].tolist() == ["session_start", "purchase"]
    assert site["value"].tolist()[1] == 12.5
    assert site["event_id"].str.startswith("h-").all()  # hashed ids: pushing a row twice is one event
    assert checked.positions["site_events"].tolist() == [0, 2]


def test_a_bad_row_is_named_by_its_index_and_field_and_nothing_is_appended(settings: Settings) -> None:
    rows = [
        SESSION,
        {**UNSUBSCRIBE, "occurred_at": "yesterday"},
        {**SESSION, "event": "teleport"},
        {**SESSION, "colour": "red"},
        {**SESSION, "table": "campaigns"},
        {k: v for k, v in UNSUBSCRIBE.items() if k != "message_id"},
    ]
    found = problems(rows, settings)
    assert ("events[3].colour", found[0][1]) in found and "not a column of site_events" in found[0][1]
    assert found[1] == ("events[4].table", "expected one of customers, email_events, site_events, offer_events")
    # the column problems are only looked at once every row names a table and its columns
    found = problems([rows[0], rows[1], rows[2], rows[5]], settings)
    assert found == [
        ("events[1].occurred_at", "not an ISO 8601 timestamp with a zone"),
        ("events[2].event", "not one of session_start, page_view, product_view, add_to_cart, purchase"),
        ("events[3].message_id", "missing"),
    ]
    assert not appended_dir(settings).exists()


def test_a_timestamp_without_a_zone_is_refused(settings: Settings) -> None:
    [(name, message)] = problems([SESSION, {**SESSION, "occurred_at": "2026-11-20T09:00:00"}], settings)
    assert name == "events[0]"
    assert "have no time zone" in message and "row 2" in message


def test_rows_of_erased_customers_are_refused_and_counted(settings: Settings) -> None:
    add_tombstones(settings, ["c2"])
    checked = check_events([SESSION, UNSUBSCRIBE, {**UNSUBSCRIBE, "event_id": "e-2"}], settings)
    assert checked.forgotten == 2
    assert checked.frames["email_events"].empty
    assert append_events(settings, checked) == {"site_events": 1}


def test_an_append_is_a_whole_file_on_disk(settings: Settings) -> None:
    written = append_events(settings, check_events([SESSION, UNSUBSCRIBE], settings))
    assert written == {"site_events": 1, "email_events": 1}
    parts = pending_parts(settings)
    assert {name: len(paths) for name, paths in parts.items()} == {"email_events": 1, "site_events": 1}
    assert not list(appended_dir(settings).rglob(".*.tmp"))
    assert pd.read_parquet(parts["email_events"][0])["customer_id"].tolist() == ["c2"]


def test_ingest_merges_appended_rows_once_and_removes_their_parts(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_email_events(
        data,
        [
            ["e-1", "c1", "m-1", "sent", "2026-11-20T08:00:00Z", ""],
            ["e-unsub", "c2", "m-9", "unsubscribe", "2026-11-20T09:15:00Z", ""],  # also in the export
        ],
    )
    append_events(settings, check_events([SESSION, UNSUBSCRIBE, {**SESSION, "customer_id": "c3"}], settings))
    report = run(data, settings)

    emails, site = stored(settings, "email_events"), stored(settings, "site_events")
    assert sorted(emails["event_id"]) == ["e-1", "e-unsub"]  # the appended copy deduped like a re-delivery
    assert sorted(site["customer_id"]) == ["c1", "c3"]
    assert report.tables["site_events"].accepted == 2
    assert report.tables["email_events"].duplicates == 1
    assert pending_parts(settings) == {}

    # a part left by an ingest killed between its commit and the removals (or pushed twice) changes nothing
    append_events(settings, check_events([SESSION], settings))
    run(data, settings)
    assert sorted(stored(settings, "site_events")["customer_id"]) == ["c1", "c3"]


def test_parts_are_removed_in_the_ingests_commit(
    data: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest killed after writing its commit marker: the next writer finishes the renames and the removals."""
    write_customers(data)
    append_events(settings, check_events([SESSION], settings))
    [part] = pending_parts(settings)["site_events"]

    def killed(marker: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(raw, "_finish", killed)
    with pytest.raises(KeyboardInterrupt):
        run(data, settings)
    assert part.exists() and raw.load_table(settings, "site_events") is None
    monkeypatch.undo()

    with raw.writer_lock(settings):  # what every writer does first
        pass
    assert not part.exists()
    assert stored(settings, "site_events")["customer_id"].tolist() == ["c1"]


def test_an_erasure_removes_appended_rows(data: Path, settings: Settings) -> None:
    from serving.forget import forget_customers

    write_customers(data)
    run(data, settings)
    append_events(settings, check_events([SESSION, UNSUBSCRIBE, {**UNSUBSCRIBE, "customer_id": "c3"}], settings))
    report = forget_customers(settings, ["c2"])
    assert report.rows.get("appended/email_events") == 1
    shutil.rmtree(settings.home / "privacy")  # without the tombstone only the erasure itself could keep c2 out
    run(data, settings)
    assert stored(settings, "email_events")["customer_id"].tolist() == ["c3"]
