"""The ingest against hostile files: every rule of docs/data-contract.md that the ingest enforces."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sendwise import contract
from sendwise.ingest import IngestError, IngestReport, ingest
from sendwise.raw import load_table
from sendwise.settings import Settings
from sendwise.timezones import country_zones, zone_for_offset

CUSTOMER_HEADER = ["customer_id", "consent_email", "consent_profiling", "timezone"]
CONTRACT_PAGE = Path(__file__).resolve().parents[1] / "docs" / "data-contract.md"


# --- fixture helpers --------------------------------------------------------------------------------------
def write_csv(
    path: Path,
    header: list[str],
    rows: Sequence[Sequence[object]],
    *,
    delimiter: str = ",",
    bom: bool = False,
) -> Path:
    """A CSV file written byte by byte, so that tests control BOM, delimiter and empty cells exactly."""
    lines = [delimiter.join(header)]
    lines += [delimiter.join("" if value is None else str(value) for value in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def write_customers(data: Path, ids: tuple[str, ...] = ("c1", "c2", "c3")) -> Path:
    rows: list[list[object]] = [[cid, "true", "true", "Europe/Berlin"] for cid in ids]
    return write_csv(data / "customers.csv", CUSTOMER_HEADER, rows)


EMAIL_HEADER = ["event_id", "customer_id", "message_id", "event", "occurred_at", "machine_open"]


def write_email_events(data: Path, rows: Sequence[Sequence[object]], name: str = "email_events.csv") -> Path:
    return write_csv(data / name, EMAIL_HEADER, rows)


def run(data: Path, settings: Settings, **options: object) -> IngestReport:
    return ingest(data, settings, progress=False, **options)  # type: ignore[arg-type]


def quarantine(settings: Settings, table: str) -> pd.DataFrame:
    return pd.read_parquet(settings.quarantine_dir / f"{table}.parquet")


def stored(settings: Settings, table: str) -> pd.DataFrame:
    frame = load_table(settings, table)
    assert frame is not None, f"{table} was not written"
    return frame


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


# --- the contract page's own examples ----------------------------------------------------------------------
def test_the_contract_pages_examples_are_ingested_as_it_says(data: Path, settings: Settings) -> None:
    """docs/data-contract.md shows one small file per table: each is ingested whole, with what the page says."""
    text = CONTRACT_PAGE.read_text(encoding="utf-8")
    for section in re.split(r"^## ", text, flags=re.MULTILINE):
        table = section.split(maxsplit=1)[0]
        example = re.search(r"```csv\n(.*?)```", section, flags=re.DOTALL)
        if table in contract.TABLES and example:
            (data / f"{table}.csv").write_text(example.group(1), encoding="utf-8")
    assert sorted(p.stem for p in data.iterdir()) == sorted(contract.TABLES)
    report = run(data, settings)
    assert {name: (t.rows_read, t.accepted) for name, t in report.tables.items()} == {
        "customers": (4, 4),
        "campaigns": (2, 2),
        "email_events": (7, 7),
        "site_events": (3, 3),
        "offers": (3, 3),
        "offer_events": (4, 4),
    }
    customers = stored(settings, "customers").set_index("customer_id")
    assert customers.loc["c-00124", "timezone"] == "Europe/Berlin"  # from its country
    assert customers.loc["c-00126", "timezone"] == "UTC" and customers.loc["c-00126", "timezone_inferred"]
    assert customers.loc["c-00123", "attr_loyalty_tier"] == "gold"
    events = stored(settings, "email_events").set_index("event_id")
    assert events.loc["e-1", "event"] == "sent" and events.loc["e-4", "event"] == "open"  # ESPs' names
    offers = stored(settings, "offers").set_index("offer_id")
    assert offers.loc["of-tents-20", "description"] == "Light, waterproof, room for two."
    assert offers.loc["of-guide", "url"] == "https://shop.example/guides/tents"
    assert report.currency == "EUR"


# --- layout -----------------------------------------------------------------------------------------------
def test_bom_semicolon_csv_keeps_ids_as_strings(data: Path, settings: Settings) -> None:
    write_csv(
        data / "customers.csv",
        ["customer_id", "consent_email", "consent_profiling", "country", "attr_tier", "attr_score"],
        [[" 00123 ", "yes", "no", "DE", "gold", "1"], ["0042", "no", "yes", "FR", "basic", "2.5"]],
        delimiter=";",
        bom=True,
    )
    report = run(data, settings)
    customers = stored(settings, "customers")
    assert customers["customer_id"].tolist() == ["00123", "0042"]
    assert customers["customer_id"].dtype == object
    assert customers["consent_email"].tolist() == [True, False]
    assert customers["attr_tier"].tolist() == ["gold", "basic"]
    assert customers["attr_score"].dtype == np.float64
    assert customers["attr_score"].tolist() == [1.0, 2.5]
    assert list(customers.columns[:9]) == list(contract.RAW_COLUMNS["customers"])
    assert report.tables["customers"].accepted == 2


def test_tab_delimited_csv(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_csv(
        data / "email_events.csv",
        EMAIL_HEADER,
        [
            ["e1", "c1", "m1", "sent", "2026-11-20T08:15:00Z", None],
            ["e2", "c1", "m1", "open", "2026-11-20T09:00:00Z", "0"],
        ],
        delimiter="\t",
    )
    run(data, settings)
    events = stored(settings, "email_events")
    assert events["event"].tolist() == ["sent", "open"]
    assert events["machine_open"].tolist() == [pd.NA, False]
    assert str(events["machine_open"].dtype) == "boolean"


def test_csv_delimiter_can_be_given(data: Path, settings: Settings) -> None:
    # a column name full of commas makes ',' the likelier delimiter; the given one wins
    header = [*CUSTOMER_HEADER, "note,a,b,c,d,e"]
    write_csv(data / "customers.csv", header, [["c1", "true", "true", "UTC", "x"]], delimiter=";")
    report = run(data, settings, csv_delimiter=";")
    assert stored(settings, "customers")["timezone"].tolist() == ["UTC"]
    assert any("ignored: note,a,b,c,d,e" in warning for warning in report.warnings)
    with pytest.raises(IngestError) as error:
        run(data, settings)
    assert "customers.csv, column customer_id: missing" in str(error.value)
    assert "the file has customer_id;consent_email;consent_profiling;timezone;note, a, b" in str(error.value)
    assert "(read with delimiter ',': pass --csv-delimiter if that is wrong)" in str(error.value)


def test_decimal_comma_only_when_told(data: Path, settings: Settings, tmp_path: Path) -> None:
    write_customers(data)
    header = ["event_id", "customer_id", "event", "occurred_at", "value"]
    rows = [
        ["s1", "c1", "purchase", "2026-11-20T08:15:00Z", "12,5"],
        ["s2", "c1", "purchase", "2026-11-20T09:15:00Z", "1.234,75"],
    ]
    write_csv(data / "site_events.csv", header, rows, delimiter=";")
    report = run(data, settings, decimal_comma=True)
    assert stored(settings, "site_events")["value"].tolist() == [12.5, 1234.75]
    assert report.tables["site_events"].quarantined == 0

    other = Settings(home=tmp_path / "other")
    report = run(data, other)
    assert report.tables["site_events"].quarantined == 2
    assert report.tables["site_events"].top_reasons[0].reason == "value: not a number"
    assert any("decimal comma" in warning for warning in report.warnings)


def test_parquet_with_zone_aware_timestamps_and_numeric_ids(data: Path, settings: Settings) -> None:
    pd.DataFrame(
        {"customer_id": [123, 7], "consent_email": [True, False], "consent_profiling": [True, True]}
    ).to_parquet(data / "customers.parquet")
    occurred = pd.to_datetime(["2026-11-20 10:00", "2026-11-20 11:30"]).tz_localize("Europe/Berlin")
    pd.DataFrame(
        {
            "customer_id": [123, 123],
            "message_id": ["m1", "m1"],
            "event": ["sent", "open"],
            "occurred_at": occurred,
            "machine_open": [None, True],
        }
    ).to_parquet(data / "email_events.parquet")
    run(data, settings)
    events = stored(settings, "email_events")
    assert events["customer_id"].tolist() == ["123", "123"]
    assert str(events["occurred_at"].dtype) == "datetime64[us, UTC]"
    assert events["occurred_at"].tolist() == [
        pd.Timestamp("2026-11-20T09:00Z"),
        pd.Timestamp("2026-11-20T10:30Z"),
    ]
    assert stored(settings, "customers")["customer_id"].tolist() == ["123", "7"]


def test_parquet_without_zone_needs_assume_tz(data: Path, settings: Settings) -> None:
    write_customers(data)
    pd.DataFrame(
        {
            "customer_id": ["c1"],
            "message_id": ["m1"],
            "event": ["sent"],
            "occurred_at": [pd.Timestamp("2026-11-20 10:00")],
        }
    ).to_parquet(data / "email_events.parquet")
    with pytest.raises(IngestError, match=r"email_events\.parquet, column occurred_at: 1 timestamps have no time zone"):
        run(data, settings)
    run(data, settings, assume_tz="America/New_York")
    assert stored(settings, "email_events")["occurred_at"].tolist() == [pd.Timestamp("2026-11-20T15:00Z")]


def test_folder_of_parts(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_email_events(data, [["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None]], "email_events/part-0.csv")
    write_email_events(data, [["e2", "c2", "m2", "sent", "2026-11-21T08:00:00Z", None]], "email_events/part-1.csv")
    report = run(data, settings)
    assert stored(settings, "email_events")["event_id"].tolist() == ["e1", "e2"]
    assert report.tables["email_events"].files == ["email_events/part-0.csv", "email_events/part-1.csv"]


def test_mixed_formats_in_a_folder_are_an_error(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_email_events(data, [["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None]], "email_events/a.csv")
    pd.DataFrame({"customer_id": ["c1"]}).to_parquet(data / "email_events" / "b.parquet")
    with pytest.raises(
        IngestError, match=r"email_events/: the parts mix formats \(\.csv: a\.csv; \.parquet: b\.parquet\)"
    ):
        run(data, settings)
    assert not settings.raw_dir.exists()


def test_two_entries_for_one_table_are_an_error(data: Path, settings: Settings) -> None:
    write_customers(data)
    pd.DataFrame({"customer_id": ["c1"], "consent_email": [True]}).to_parquet(data / "customers.parquet")
    with pytest.raises(IngestError, match="table customers has 2 entries"):
        run(data, settings)


def test_missing_customers_is_an_error(data: Path, settings: Settings) -> None:
    write_email_events(data, [["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None]])
    with pytest.raises(IngestError, match=r"no customers table\. Expected customers\.csv, customers\.parquet"):
        run(data, settings)


def test_other_files_are_ignored_with_a_warning_naming_them(data: Path, settings: Settings) -> None:
    write_customers(data)
    (data / "README.txt").write_text("hello")
    (data / "clicks.csv").write_text("a,b\n1,2\n")
    (data / "truth").mkdir()
    report = run(data, settings)
    ignored = [w for w in report.warnings if w.startswith("ignored")]
    assert len(ignored) == 1
    for name in ("README.txt", "clicks.csv", "truth/"):
        assert name in ignored[0]


def test_missing_optional_tables_are_reported_as_skipped(data: Path, settings: Settings) -> None:
    write_customers(data)
    report = run(data, settings)
    assert report.skipped_tables == ["campaigns", "email_events", "site_events", "offers", "offer_events"]
    assert list(report.tables) == ["customers"]
    assert load_table(settings, "email_events") is None
    assert "skipped tables" in report.to_text()


def test_unknown_columns_are_dropped_with_a_warning(data: Path, settings: Settings) -> None:
    write_csv(data / "customers.csv", [*CUSTOMER_HEADER, "email"], [["c1", "true", "true", "UTC", "a@b.co"]])
    report = run(data, settings)
    assert "email" not in stored(settings, "customers").columns
    assert any("customers.csv: columns not in the contract were ignored: email" in w for w in report.warnings)


# --- ids ----------------------------------------------------------------------------------------------------
def test_ids_over_128_characters_are_quarantined(data: Path, settings: Settings) -> None:
    write_csv(data / "customers.csv", CUSTOMER_HEADER, [["x" * 128, "1", "1", "UTC"], ["y" * 129, "1", "1", "UTC"]])
    report = run(data, settings)
    assert stored(settings, "customers")["customer_id"].tolist() == ["x" * 128]
    bad = quarantine(settings, "customers")
    assert bad["customer_id"].tolist() == ["y" * 129]
    assert bad["_reason"].tolist() == ["customer_id: longer than 128 characters"]
    assert report.tables["customers"].top_reasons[0].rows == 1


def test_email_address_as_customer_id_is_refused(data: Path, settings: Settings) -> None:
    write_csv(
        data / "customers.csv",
        CUSTOMER_HEADER,
        [["ann@example.com", "1", "1", "UTC"], ["c1", "1", "1", "UTC"]],
    )
    write_email_events(data, [["e1", "bob@example.org", "m1", "sent", "2026-11-20T08:00:00Z", None]])
    report = run(data, settings)
    assert stored(settings, "customers")["customer_id"].tolist() == ["c1"]
    assert load_table(settings, "email_events") is None or stored(settings, "email_events").empty
    reason = "customer_id: looks like an email address (a direct identifier; hash it upstream)"
    assert quarantine(settings, "customers")["_reason"].tolist() == [reason]
    assert quarantine(settings, "email_events")["_reason"].tolist() == [reason]
    assert report.tables["email_events"].quarantined == 1


# --- timestamps ---------------------------------------------------------------------------------------------
def test_zoneless_timestamps_need_assume_tz(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_email_events(
        data,
        [
            ["e1", "c1", "m1", "sent", "2026-07-01T09:00:00", None],
            ["e2", "c1", "m1", "open", "2026-07-01 10:30", None],
        ],
    )
    with pytest.raises(IngestError) as error:
        run(data, settings)
    message = str(error.value)
    assert "email_events.csv, column occurred_at: 2 timestamps have no time zone" in message
    assert "'2026-07-01T09:00:00' in row 1" in message
    assert "--assume-tz" in message
    assert not settings.raw_dir.exists()

    report = run(data, settings, assume_tz="Europe/Berlin")
    assert stored(settings, "email_events")["occurred_at"].tolist() == [
        pd.Timestamp("2026-07-01T07:00Z"),
        pd.Timestamp("2026-07-01T08:30Z"),
    ]
    assert report.options.assume_tz == "Europe/Berlin"


def test_unknown_assume_tz_is_an_error(data: Path, settings: Settings) -> None:
    write_customers(data)
    with pytest.raises(IngestError, match="--assume-tz 'Mars/Olympus' is not a time zone"):
        run(data, settings, assume_tz="Mars/Olympus")


def test_offsets_are_converted_to_utc(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_email_events(
        data,
        [
            ["e1", "c1", "m1", "sent", "2026-11-20T08:15:00Z", None],
            ["e2", "c1", "m1", "open", "2026-11-20T13:45:00+05:30", None],
            ["e3", "c1", "m1", "click", "2026-11-20T04:30:00.250-04:00", None],
            ["e4", "c1", "m1", "click", "not a time", None],
        ],
    )
    report = run(data, settings)
    events = stored(settings, "email_events").set_index("event_id")
    assert events.loc["e2", "occurred_at"] == pd.Timestamp("2026-11-20T08:15:00Z")
    assert events.loc["e3", "occurred_at"] == pd.Timestamp("2026-11-20T08:30:00.250Z")
    assert quarantine(settings, "email_events")["_reason"].tolist() == [
        "occurred_at: not an ISO 8601 timestamp with a zone"
    ]
    span = report.tables["email_events"].span
    assert (span.first, span.last) == (
        pd.Timestamp("2026-11-20T08:15Z"),
        pd.Timestamp("2026-11-20T08:30:00.250Z"),
    )


# --- values -----------------------------------------------------------------------------------------------
def test_boolean_aliases(data: Path, settings: Settings) -> None:
    words = ["TRUE", "False", "yes", "NO", "y", "n", "T", "f", "1", "0"]
    rows: list[list[object]] = [[f"c{i}", word, "true", "UTC"] for i, word in enumerate(words)]
    rows += [["bad", "maybe", "true", "UTC"], ["none", "", "true", "UTC"]]
    report = run_customers(data, settings, rows)
    customers = stored(settings, "customers").set_index("customer_id")
    assert [bool(customers.loc[f"c{i}", "consent_email"]) for i in range(10)] == [True, False] * 5
    reasons = dict(
        zip(
            quarantine(settings, "customers")["customer_id"],
            quarantine(settings, "customers")["_reason"],
            strict=True,
        )
    )
    assert reasons == {
        "bad": "consent_email: not a boolean (true/false, 1/0, yes/no, y/n, t/f)",
        "none": "consent_email: missing",
    }
    assert report.tables["customers"].quarantined == 2


def run_customers(data: Path, settings: Settings, rows: list[list[object]]) -> IngestReport:
    write_csv(data / "customers.csv", CUSTOMER_HEADER, rows)
    return run(data, settings)


def test_event_aliases_any_case_and_unknown_names_quarantined(data: Path, settings: Settings) -> None:
    write_customers(data)
    names = [
        "processed",
        "Accepted",
        "OPENED",
        "clicked",
        "Bounced",
        "dropped",
        "SpamReport",
        "spam",
        "unsubscribed",
    ]
    names += ["Delivered", " open "]
    rows: list[list[object]] = [
        [f"e{i}", "c1", "m1", name, f"2026-11-20T08:{i:02d}:00Z", None] for i, name in enumerate(names)
    ]
    rows.append(["e99", "c1", "m1", "forwarded", "2026-11-20T09:00:00Z", None])
    write_email_events(data, rows)
    report = run(data, settings)
    events = stored(settings, "email_events")
    expected = ["sent", "sent", "open", "click", "bounce", "bounce", "complaint", "complaint", "unsubscribe"]
    assert events["event"].tolist() == [*expected, "delivered", "open"]
    bad = quarantine(settings, "email_events")
    assert bad["event"].tolist() == ["forwarded"]
    reason = "event: not one of sent, delivered, open, click, bounce, unsubscribe, complaint (or an alias of one)"
    assert bad["_reason"].tolist() == [reason]
    assert report.tables["email_events"].top_reasons[0].reason == reason


def test_missing_event_id_is_a_deterministic_hash(data: Path, settings: Settings, tmp_path: Path) -> None:
    write_customers(data)
    rows: list[list[object]] = [
        [None, "c1", "m1", "sent", "2026-11-20T08:00:00Z", None],
        ["", "c1", "m1", "open", "2026-11-20T09:00:00+01:00", "true"],
        [None, "c1", "m1", "open", "2026-11-20T08:00:00Z", "true"],  # the same open, re-delivered
        ["given", "c1", "m1", "click", "2026-11-20T08:05:00Z", None],
    ]
    write_email_events(data, rows)
    report = run(data, settings)
    ids = stored(settings, "email_events")["event_id"].tolist()
    assert ids[2] == "given"
    assert all(i.startswith("h-") and len(i) == 42 for i in ids[:2])
    assert report.tables["email_events"].duplicates == 1

    # the same events, written differently (another offset, another case), get the same ids in another home
    rows = [
        [None, "c1", "m1", "PROCESSED", "2026-11-20T09:00:00+01:00", None],
        [None, "c1", "m1", "opened", "2026-11-20T08:00:00Z", "yes"],
    ]
    write_email_events(data, rows)
    other = Settings(home=tmp_path / "other")
    run(data, other)
    assert sorted(stored(other, "email_events")["event_id"]) == sorted(ids[:2])

    # the hash is the documented one: SHA-1 of the contract columns in contract order
    micros = str(pd.Timestamp("2026-11-20T08:00Z").value // 1000)
    text = "\x1f".join(["c1", "m1", "", "sent", micros, "", "", "", "", ""])
    assert ids[0] == "h-" + hashlib.sha1(text.encode()).hexdigest()


def test_redelivered_events_are_dropped(data: Path, settings: Settings) -> None:
    write_customers(data)
    sent = ["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None]
    write_email_events(data, [sent, ["e2", "c1", "m1", "open", "2026-11-20T08:30:00Z", None], sent])
    report = run(data, settings)
    assert stored(settings, "email_events")["event_id"].tolist() == ["e1", "e2"]
    table = report.tables["email_events"]
    assert (table.rows_read, table.accepted, table.duplicates, table.added) == (3, 2, 1, 2)


def test_reingest_changes_nothing(data: Path, settings: Settings) -> None:
    write_csv(
        data / "customers.csv",
        [*CUSTOMER_HEADER, "country"],
        [
            ["c1", "1", "1", "", "FR"],
            ["c2", "1", "1", "Europe/Berlin", "DE"],
            ["bad@x.org", "1", "1", "", ""],
        ],
    )
    write_email_events(
        data,
        [
            [None, "c1", "m1", "sent", "2026-11-20T08:00:00Z", None],
            ["e2", "c1", "m1", "open", "2026-11-20T08:30:00Z", "false"],
            ["e3", "c1", "m1", "poke", "2026-11-20T08:30:00Z", None],
        ],
    )
    run(data, settings)
    files = sorted(p for p in (*settings.raw_dir.iterdir(), *settings.quarantine_dir.iterdir()))
    before = {p: p.read_bytes() for p in files}
    report = run(data, settings)
    assert sorted(p for p in (*settings.raw_dir.iterdir(), *settings.quarantine_dir.iterdir())) == files
    assert {p: p.read_bytes() for p in files} == before
    assert len(quarantine(settings, "email_events")) == 1
    for name in ("customers", "email_events"):
        table = report.tables[name]
        assert (table.accepted, table.added, table.updated) == (0, 0, 0)
    assert report.tables["email_events"].duplicates == 2


def test_a_second_export_adds_to_what_is_there(data: Path, settings: Settings, tmp_path: Path) -> None:
    write_customers(data, ("c1", "c2"))
    write_email_events(data, [["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None]])
    run(data, settings)

    later = tmp_path / "later"
    write_customers(later, ("c2", "c3"))
    write_email_events(
        later,
        [
            ["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None],
            ["e2", "c3", "m2", "sent", "2026-11-27T08:00:00Z", None],
        ],
    )
    report = run(later, settings)
    assert stored(settings, "customers")["customer_id"].tolist() == ["c1", "c2", "c3"]
    assert stored(settings, "email_events")["event_id"].tolist() == ["e1", "e2"]
    assert (report.tables["email_events"].added, report.tables["email_events"].duplicates) == (1, 1)
    assert (report.tables["customers"].added, report.tables["customers"].duplicates) == (1, 1)


def test_customers_latest_updated_at_wins_and_later_row_on_tie(data: Path, settings: Settings, tmp_path: Path) -> None:
    header = ["customer_id", "consent_email", "consent_profiling", "interests", "updated_at"]
    rows: list[list[object]] = [
        ["a", "1", "1", "old", "2026-11-02T00:00:00Z"],
        ["a", "1", "1", "older", "2026-11-01T00:00:00Z"],  # later in the file, but older
        ["b", "1", "1", "first", "2026-11-01T00:00:00Z"],
        ["b", "1", "1", "second", "2026-11-01T01:00:00+01:00"],  # the same instant: the later row wins
        ["c", "1", "1", "first", None],
        ["c", "1", "1", "second", None],
    ]
    write_csv(data / "customers.csv", header, rows)
    report = run(data, settings)
    interests = stored(settings, "customers").set_index("customer_id")["interests"].to_dict()
    assert interests == {"a": "old", "b": "second", "c": "second"}
    assert report.tables["customers"].duplicates == 3

    later = tmp_path / "later"
    rows = [
        ["a", "1", "1", "stale", "2026-10-01T00:00:00Z"],  # the stored row is newer
        ["b", "1", "1", "tie", "2026-11-01T00:00:00Z"],  # a tie with the stored row: this export is later
        ["c", "0", "1", "books | outdoor||", None],
    ]
    write_csv(later / "customers.csv", header, rows)
    report = run(later, settings)
    customers = stored(settings, "customers").set_index("customer_id")
    assert customers["interests"].to_dict() == {"a": "old", "b": "tie", "c": "books|outdoor"}
    assert not customers.loc["c", "consent_email"]
    table = report.tables["customers"]
    assert (table.duplicates, table.updated, table.added) == (1, 2, 0)


def test_events_of_unknown_customers_are_kept_and_counted(data: Path, settings: Settings) -> None:
    write_customers(data, ("c1",))
    write_email_events(
        data,
        [
            ["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None],
            ["e2", "ghost", "m2", "sent", "2026-11-20T08:00:00Z", None],
            ["e3", "ghost", "m2", "open", "2026-11-20T09:00:00Z", None],
        ],
    )
    report = run(data, settings)
    assert len(stored(settings, "email_events")) == 3
    table = report.tables["email_events"]
    assert (table.unknown_customer_events, table.unknown_customers) == (2, 1)

    write_customers(data, ("c1", "ghost"))  # the customer appears: its events count as known
    report = run(data, settings)
    assert report.tables["email_events"].unknown_customer_events == 0


def test_machine_open_share(data: Path, settings: Settings) -> None:
    write_customers(data)
    write_email_events(
        data,
        [
            ["e1", "c1", "m1", "open", "2026-11-20T08:00:00Z", "true"],
            ["e2", "c1", "m1", "open", "2026-11-20T09:00:00Z", "false"],
            ["e3", "c2", "m2", "open", "2026-11-20T09:00:00Z", None],
            ["e4", "c2", "m2", "open", "2026-11-20T09:05:00Z", "Y"],
            ["e5", "c2", "m2", "click", "2026-11-20T09:05:00Z", "Y"],
        ],
    )
    report = run(data, settings)
    assert (report.opens, report.machine_opens, report.machine_open_share) == (4, 2, 0.5)


# --- customers: time zones and consent ---------------------------------------------------------------------
def test_unknown_timezone_is_inferred_from_the_country(data: Path, settings: Settings) -> None:
    header = ["customer_id", "consent_email", "consent_profiling", "timezone", "country"]
    rows: list[list[object]] = [
        ["given", "1", "1", "America/Chicago", "US"],
        ["fr", "1", "1", None, "fr"],
        ["uk", "1", "1", None, "UK"],
        ["bad-name", "1", "1", "Mars/Olympus", "JP"],
        ["us", "1", "1", None, "US"],  # several zones: not from the country
        ["nothing", "1", "1", None, None],
        ["case", "1", "1", "europe/berlin", None],
    ]
    write_csv(data / "customers.csv", header, rows)
    report = run(data, settings)
    customers = stored(settings, "customers").set_index("customer_id")
    assert customers["timezone"].to_dict() == {
        "bad-name": "Asia/Tokyo",
        "case": "Europe/Berlin",
        "fr": "Europe/Paris",
        "given": "America/Chicago",
        "nothing": "UTC",
        "uk": "Europe/London",
        "us": "UTC",
    }
    assert customers["timezone_inferred"].to_dict() == {
        "bad-name": True,
        "case": False,
        "fr": True,
        "given": False,
        "nothing": True,
        "uk": True,
        "us": True,
    }
    assert customers.loc["uk", "country"] == "GB"
    zones = report.timezones
    assert (zones.given, zones.country, zones.activity, zones.unknown, zones.unknown_names) == (2, 3, 0, 2, 1)
    assert any("'Mars/Olympus'" in warning for warning in report.warnings)


def test_country_zones_only_where_one_zone_keeps_the_clock() -> None:
    zones = country_zones()
    assert zones["DE"] == "Europe/Berlin"  # Busingen keeps Berlin's clock
    assert zones["JP"] == "Asia/Tokyo"
    for country in ("US", "ES", "CN", "AU", "BR", "RU"):
        assert country not in zones
    assert (zone_for_offset(3), zone_for_offset(-5), zone_for_offset(0)) == (
        "Etc/GMT-3",
        "Etc/GMT+5",
        "Etc/GMT",
    )


def test_unknown_timezone_is_inferred_from_activity_hours(data: Path, settings: Settings) -> None:
    rng = np.random.default_rng(7)
    known = [f"k{i}" for i in range(30)]
    rows: list[list[object]] = [[cid, "1", "1", "Europe/Berlin"] for cid in known]  # UTC+1 in November
    rows += [["east", "1", "1", None], ["private", "1", "0", None], ["quiet", "1", "1", None]]
    write_csv(data / "customers.csv", CUSTOMER_HEADER, rows)
    day = pd.Timestamp("2026-11-02T00:00Z")

    def sessions(customer: str, local_hours: np.ndarray, utc_offset: int) -> pd.DataFrame:
        days = rng.integers(0, 20, len(local_hours))
        times = day + pd.to_timedelta(days, unit="D") + pd.to_timedelta(local_hours - utc_offset, unit="h")
        return pd.DataFrame({"customer_id": customer, "event": "session_start", "occurred_at": times})

    evening = rng.choice([19, 20, 21], size=12).astype(int)
    frames = [sessions(cid, rng.choice([8, 19, 20, 21], size=12).astype(int), 1) for cid in known]
    frames += [
        sessions("east", evening, 4),
        sessions("private", evening, 4),
        sessions("quiet", evening[:3], 4),
    ]
    pd.concat(frames, ignore_index=True).to_parquet(data / "site_events.parquet")
    report = run(data, settings)
    customers = stored(settings, "customers").set_index("customer_id")
    assert customers.loc["east", "timezone"] == "Etc/GMT-4"
    assert customers.loc["private", "timezone"] == "UTC"  # no consent to profiling: activity not used
    assert customers.loc["quiet", "timezone"] == "UTC"  # too little activity
    assert customers.loc[["east", "private", "quiet"], "timezone_inferred"].all()
    assert (report.timezones.given, report.timezones.activity, report.timezones.unknown) == (30, 1, 2)


def test_missing_consent_profiling_column_needs_the_option(data: Path, settings: Settings) -> None:
    write_csv(data / "customers.csv", ["customer_id", "consent_email"], [["c1", "true"], ["c2", "false"]])
    with pytest.raises(IngestError) as error:
        run(data, settings)
    assert "customers.csv, column consent_profiling: the column is absent" in str(error.value)
    assert "--profiling-consent granted or --profiling-consent denied" in str(error.value)

    run(data, settings, profiling_consent="denied")
    assert stored(settings, "customers")["consent_profiling"].tolist() == [False, False]
    run(data, settings, profiling_consent="granted")
    assert stored(settings, "customers")["consent_profiling"].tolist() == [True, True]


def test_missing_required_column_names_file_and_column(data: Path, settings: Settings) -> None:
    write_csv(data / "customers.csv", ["customer_id", "consent_profiling"], [["c1", "true"]])
    with pytest.raises(IngestError, match=r"customers\.csv, column consent_email: missing\. The customers table"):
        run(data, settings)


def test_malformed_csv_rows_are_quarantined(data: Path, settings: Settings) -> None:
    path = write_customers(data, ("c1",))
    path.write_text(path.read_text() + "c2,true\nc3,true,true,UTC\n")
    report = run(data, settings)
    assert stored(settings, "customers")["customer_id"].tolist() == ["c1", "c3"]
    bad = quarantine(settings, "customers")
    assert bad["_text"].tolist() == ["c2,true"]
    assert bad["_reason"].tolist() == ["row: not 4 fields like the header"]
    assert report.tables["customers"].rows_read == 3


# --- money, campaigns, offers ------------------------------------------------------------------------------
def test_mixed_currencies_are_an_error(data: Path, settings: Settings) -> None:
    write_customers(data)
    header = ["customer_id", "event", "occurred_at", "value", "currency"]
    rows: list[list[object]] = [
        ["c1", "purchase", "2026-11-20T08:00:00Z", "10", "EUR"],
        ["c1", "purchase", "2026-11-20T09:00:00Z", "12", "usd"],
    ]
    write_csv(data / "site_events.csv", header, rows)
    with pytest.raises(IngestError, match=r"mixes currencies \(EUR in site_events.csv; USD in site_events.csv\)"):
        run(data, settings)


def test_one_currency_is_reported(data: Path, settings: Settings) -> None:
    write_customers(data)
    header = ["customer_id", "event", "occurred_at", "value", "currency"]
    write_csv(data / "site_events.csv", header, [["c1", "purchase", "2026-11-20T08:00:00Z", "10", " eur"]])
    assert run(data, settings).currency == "EUR"


def test_campaign_kinds_are_validated(data: Path, settings: Settings) -> None:
    write_customers(data)
    header = ["campaign_id", "kind", "topic"]
    rows: list[list[object]] = [
        ["k1", "Promotional", "outdoor"],
        ["k2", "blast", None],
        ["k1", "newsletter", "books"],
    ]
    write_csv(data / "campaigns.csv", header, rows)
    report = run(data, settings)
    campaigns = stored(settings, "campaigns")
    assert campaigns[["campaign_id", "kind", "topic"]].values.tolist() == [["k1", "newsletter", "books"]]
    assert quarantine(settings, "campaigns")["_reason"].tolist() == [
        "kind: not one of promotional, newsletter, triggered, transactional"
    ]
    assert report.tables["campaigns"].duplicates == 1


def test_offers_bounds_fraction_warning_margin_and_inventory(data: Path, settings: Settings) -> None:
    write_customers(data)
    header = ["offer_id", "kind", "discount_pct", "margin", "inventory"]
    rows: list[list[object]] = [
        ["o1", "discount", "0.2", None, "0"],
        ["o2", "content", "0", None, "5"],
        ["o3", "control", None, "3.5", None],
        ["o4", "discount", "150", None, None],
        ["o5", "coupon", "0.1", None, None],
        ["o6", "discount", "0.1", None, "2.5"],
    ]
    write_csv(data / "offers.csv", header, rows)
    events_header = ["customer_id", "offer_id", "event", "occurred_at", "value", "propensity"]
    events: list[list[object]] = [
        ["c1", "o1", "exposed", "2026-11-20T08:00:00Z", None, "0.5"],
        ["c1", "o1", "converted", "2026-11-21T08:00:00Z", "30", None],
        ["c2", "o1", "converted", "2026-11-21T09:00:00Z", "50", None],
        ["c2", "o2", "exposed", "2026-11-21T09:00:00Z", None, "1"],
        ["c2", "o2", "exposed", "2026-11-21T10:00:00Z", None, "0"],
        ["c2", "o2", "exposed", "2026-11-21T11:00:00Z", None, "1.5"],
    ]
    write_csv(data / "offer_events.csv", events_header, events)
    report = run(data, settings)
    offers = stored(settings, "offers").set_index("offer_id")
    assert offers["margin"].to_dict() == {"o1": 40.0, "o2": 1.0, "o3": 3.5}
    assert offers.loc["o1", "inventory"] == 0.0  # kept: eligibility is decided later
    reasons = quarantine(settings, "offers").set_index("offer_id")["_reason"].to_dict()
    assert reasons == {
        "o4": "discount_pct: outside [0, 100]",
        "o5": "kind: not one of discount, content, control",
        "o6": "inventory: not a whole number",
    }
    assert any("column discount_pct: every value is at most 1" in warning for warning in report.warnings)
    assert len(stored(settings, "offer_events")) == 4
    assert quarantine(settings, "offer_events")["_reason"].tolist() == ["propensity: outside (0, 1]"] * 2


# --- the report and the raw store ------------------------------------------------------------------------
def test_report_is_stored_and_printable(data: Path, settings: Settings) -> None:
    write_customers(data)
    report = run(data, settings)
    latest = settings.reports_dir / "ingest" / "latest.json"
    assert report.report_file is not None and Path(report.report_file).parent == latest.parent
    assert json.loads(latest.read_text())["tables"]["customers"]["accepted"] == 3
    assert IngestReport.model_validate_json(Path(report.report_file).read_text()) == report
    text = report.to_text()
    assert "customers" in text and "customer time zones" in text and "given 3" in text


def test_load_table_of_a_table_never_ingested(settings: Settings) -> None:
    assert load_table(settings, "offers") is None
    with pytest.raises(ValueError, match="unknown table"):
        load_table(settings, "clicks")


def test_progress_bars_go_to_stderr(data: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_customers(data)
    write_email_events(data, [["e1", "c1", "m1", "sent", "2026-11-20T08:00:00Z", None]])
    ingest(data, settings, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "customers" in captured.err and "email_events" in captured.err
