"""Exports taken after the fact: --as-of, label windows closed relative to it, offers' own windows, and the one
sentence that says why a model cannot be trained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.build import build_feature_tables
from sendwise.asof import AsOfError, parse_as_of, resolve_as_of
from sendwise.ingest import IngestError, ingest
from sendwise.raw import load_table, write_table
from sendwise.settings import Settings
from training import skips
from training.datasets import closed_exposures, offer_training_set, open_training_set

SEND = pd.Timestamp("2026-03-02T10:00:00Z")
DAY = pd.Timedelta(days=1)


def _iso(times: pd.Series | pd.DatetimeIndex) -> list[str]:
    return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in pd.to_datetime(times, utc=True)]


def one_shot_export(
    data: Path,
    customers: int = 600,
    windows: tuple[float | None, ...] = (14.0, 14.0, 14.0),
    conversions: bool = True,
    last_day: float = 12.0,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """An experiment logged at one instant: three arms (two offers and a control) exposed at SEND with
    propensity 1/3, conversions over the `last_day` days after it, a customer attribute that moves them."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i:04d}" for i in range(customers)]
    score = rng.random(customers).round(3)
    offers = pd.DataFrame(
        {
            "offer_id": ["offer-a", "offer-b", "none"],
            "kind": ["discount", "discount", "control"],
            "margin": [10.0, 10.0, 10.0],
            "conversion_window_days": ["" if w is None else w for w in windows],
        }
    )
    arm = rng.integers(0, 3, customers)
    exposed = pd.DataFrame(
        {
            "event_id": [f"x-{c}" for c in ids],
            "customer_id": ids,
            "offer_id": offers["offer_id"].to_numpy()[arm],
            "event": "exposed",
            "occurred_at": _iso(pd.DatetimeIndex([SEND] * customers)),
            "propensity": 1 / 3,
        }
    )
    probability = 0.05 + 0.3 * score * (arm == 0) + 0.1 * (arm == 1)
    bought = rng.random(customers) < probability if conversions else np.zeros(customers, dtype=bool)
    minutes = rng.integers(60, int(last_day * 24 * 60), customers)
    converted = pd.DataFrame(
        {
            "event_id": [f"v-{c}" for c in np.array(ids)[bought]],
            "customer_id": np.array(ids)[bought],
            "offer_id": exposed["offer_id"].to_numpy()[bought],
            "event": "converted",
            "occurred_at": _iso(SEND + pd.to_timedelta(minutes[bought], unit="min")),
            "propensity": "",
        }
    )
    tables = {
        "customers": pd.DataFrame(
            {"customer_id": ids, "consent_email": "true", "consent_profiling": "true", "attr_score": score}
        ),
        "offers": offers,
        "offer_events": pd.concat([exposed, converted] if bought.any() else [exposed], ignore_index=True),
    }
    data.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(data / f"{name}.csv", index=False)
    return tables


def latest_event(tables: dict[str, pd.DataFrame]) -> pd.Timestamp:
    return pd.to_datetime(tables["offer_events"]["occurred_at"], utc=True).max()


def _plain(output: str) -> str:
    """The output with the tables' borders and line wraps taken out."""
    return re.sub(r"[\s│┃]+", " ", output)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


# --- --as-of ------------------------------------------------------------------------------------------------
def test_as_of_is_read_with_its_zone_and_refused_without_one() -> None:
    assert parse_as_of("2008-04-14T17:00:00+02:00") == pd.Timestamp("2008-04-14T15:00:00Z")
    assert parse_as_of("2008-04-14T15:00:00Z").tzname() == "UTC"
    with pytest.raises(AsOfError, match=r"--as-of '2008-04-14T15:00' has no time zone; give it with Z or an offset"):
        parse_as_of("2008-04-14T15:00")
    with pytest.raises(AsOfError, match="not an ISO 8601 time"):
        parse_as_of("next tuesday")


def test_the_command_refuses_an_as_of_without_a_zone(tmp_path: Path) -> None:
    from sendwise.cli import app

    one_shot_export(tmp_path / "data", customers=50)
    env = {"SENDWISE_HOME": str(tmp_path / "home")}
    for command in (["ingest", str(tmp_path / "data")], ["train"], ["pipeline", "--data", str(tmp_path / "data")]):
        result = CliRunner().invoke(app, [*command, "--as-of", "2026-04-01T00:00"], env=env)
        assert result.exit_code == 2, (command, result.output)
        assert "'2026-04-01T00:00' has no time zone" in " ".join(result.output.split())
    assert not (tmp_path / "home" / "raw").exists()


def test_ingest_refuses_an_as_of_before_the_exports_events(tmp_path: Path, settings: Settings) -> None:
    tables = one_shot_export(tmp_path / "data", customers=200)
    last = latest_event(tables)
    early = SEND + 2 * DAY
    late = int((pd.to_datetime(tables["offer_events"]["occurred_at"], utc=True) > early).sum())
    with pytest.raises(IngestError) as error:
        ingest(tmp_path / "data", settings, as_of=early, progress=False)
    message = str(error.value)
    assert "--as-of 2026-03-04 10:00 UTC is before the latest event of this export" in message
    assert f"offer_events.csv, column occurred_at, has {late:,} events after it" in message
    assert f"the latest at {last:%Y-%m-%d %H:%M} UTC" in message
    assert not settings.raw_dir.exists()  # nothing was ingested


def test_ingest_records_the_as_of_and_the_feature_build_uses_it(tmp_path: Path, settings: Settings) -> None:
    tables = one_shot_export(tmp_path / "data", customers=200)
    taken = SEND + pd.Timedelta(weeks=6)
    report = ingest(tmp_path / "data", settings, as_of=taken, progress=False)
    assert report.as_of_given and pd.Timestamp(report.as_of) == taken
    assert "export taken (as-of) 2026-04-13 10:00 UTC (given with --as-of)" in _plain(report.to_text())
    record = settings.raw_dir / "as_of.json"
    entries = json.loads(record.read_text())
    assert [(e["as_of"], e["given"]) for e in entries] == [("2026-04-13T10:00:00+00:00", True)]
    assert pd.Timestamp(entries[0]["latest_event"]) == latest_event(tables)
    before = record.read_bytes()
    ingest(tmp_path / "data", settings, as_of=taken, progress=False)  # the same export again changes nothing
    assert record.read_bytes() == before

    built = build_feature_tables(settings, progress=False)
    assert (built.as_of, built.as_of_source) == (taken, "recorded")
    assert len(closed_exposures(built, settings.conversion_window_days)) == 200


def test_without_as_of_the_data_end_is_used(tmp_path: Path, settings: Settings) -> None:
    tables = one_shot_export(tmp_path / "data", customers=200)
    report = ingest(tmp_path / "data", settings, progress=False)
    data_end = latest_event(tables).floor("h") + pd.Timedelta(hours=1)
    assert not report.as_of_given and pd.Timestamp(report.as_of) == data_end
    built = build_feature_tables(settings, progress=False)
    assert (built.as_of, built.as_of_source) == (data_end, "data")
    assert len(closed_exposures(built, settings.conversion_window_days)) == 0  # 14-day windows, 12 days of data


def test_events_after_the_recorded_as_of_move_it_to_the_data_end(tmp_path: Path, settings: Settings) -> None:
    one_shot_export(tmp_path / "data", customers=200)
    taken = SEND + 20 * DAY
    ingest(tmp_path / "data", settings, as_of=taken, progress=False)
    assert resolve_as_of(settings).time == taken
    events = load_table(settings, "offer_events")
    assert events is not None
    pushed = events.iloc[:1].assign(event_id="pushed", occurred_at=taken + pd.Timedelta(minutes=90))
    write_table(settings, "offer_events", pd.concat([events, pushed], ignore_index=True))  # as POST /v1/events
    resolved = resolve_as_of(settings)
    assert (resolved.time, resolved.source) == (taken + pd.Timedelta(hours=2), "data")


def test_an_explicit_as_of_wins_and_may_not_precede_the_data(tmp_path: Path, settings: Settings) -> None:
    tables = one_shot_export(tmp_path / "data", customers=200)
    ingest(tmp_path / "data", settings, as_of=SEND + 30 * DAY, progress=False)
    resolved = resolve_as_of(settings, SEND + 16 * DAY)
    assert (resolved.time, resolved.source) == (SEND + 16 * DAY, "given")
    with pytest.raises(AsOfError) as error:
        resolve_as_of(settings, SEND + DAY)
    last = latest_event(tables)
    assert f"--as-of 2026-03-03 10:00 UTC is before the latest event of the raw store under {settings.raw_dir}" in str(
        error.value
    )
    assert f"({last:%Y-%m-%d %H:%M} UTC)" in str(error.value)


# --- offers' own conversion windows ---------------------------------------------------------------------------
def test_offers_conversion_window_is_a_positive_number(tmp_path: Path, settings: Settings) -> None:
    one_shot_export(tmp_path / "data", customers=30, windows=(3.5, 0.0, -1.0))
    report = ingest(tmp_path / "data", settings, progress=False)
    offers = load_table(settings, "offers")
    assert offers is not None
    assert offers.set_index("offer_id")["conversion_window_days"].to_dict() == {"offer-a": 3.5}
    assert report.tables["offers"].quarantined == 2
    reasons = {r.reason: r.rows for r in report.tables["offers"].top_reasons}
    assert reasons == {"conversion_window_days: outside (0, inf]": 2}


def test_each_offer_labels_and_closes_exposures_by_its_own_window(tmp_path: Path, settings: Settings) -> None:
    one_shot_export(tmp_path / "data", customers=600, windows=(3.0, None, 10.0), last_day=5.5)
    ingest(tmp_path / "data", settings, as_of=SEND + 6 * DAY, progress=False)
    built = build_feature_tables(settings, progress=False)
    events = load_table(settings, "offer_events")
    assert events is not None
    conversions = events[events["event"] == "converted"].set_index("customer_id")["occurred_at"]
    exposures = built.exposures.set_index("customer_id")
    window = exposures["offer_id"].map({"offer-a": 3.0, "offer-b": 7.0, "none": 10.0})  # offer-b: the default 7
    assert (exposures["window_days"] == window).all()
    delay = (conversions.reindex(exposures.index) - SEND) / DAY
    inside = delay.notna() & (delay <= window) & (conversions.reindex(exposures.index) < built.as_of)
    assert (exposures["converted"] == inside).all()
    assert ((delay > 3.0) & (exposures["offer_id"] == "offer-a")).any()  # late conversions of offer-a don't count
    closed = closed_exposures(built, settings.conversion_window_days)
    assert set(closed["offer_id"]) == {"offer-a"}  # 3 days closed by day 6; 7 and 10 days are not
    assert len(closed) == int((exposures["offer_id"] == "offer-a").sum())


# --- why a model is not trained, in one sentence -------------------------------------------------------------
def _built(tmp_path: Path, settings: Settings, as_of: pd.Timestamp | None = None) -> object:
    ingest(tmp_path / "data", settings, as_of=as_of, progress=False)
    return build_feature_tables(settings, progress=False)


def test_skip_sentence_for_windows_not_closed_by_the_data_end(tmp_path: Path, settings: Settings) -> None:
    tables = one_shot_export(tmp_path / "data", customers=600)
    built = _built(tmp_path, settings)
    assert offer_training_set(None, built, settings.conversion_window_days) is None  # type: ignore[arg-type]
    end = latest_event(tables).floor("h") + pd.Timedelta(hours=1)
    assert skips.offer_model(built, settings) == (  # type: ignore[arg-type]
        f"none of 600 offer exposures has a closed 14-day conversion window by {end:%Y-%m-%d %H:%M} UTC, the "
        "data's end; pass --as-of with the time the export was taken (200 offer exposures are closed by "
        "2026-03-16 10:00 UTC)"
    )


def test_skip_sentence_for_an_as_of_given_too_early(tmp_path: Path, settings: Settings) -> None:
    one_shot_export(tmp_path / "data", customers=450, windows=(14.0, 14.0, 3.0), last_day=5.0)
    built = _built(tmp_path, settings, as_of=SEND + 6 * DAY)
    assert offer_training_set(None, built, settings.conversion_window_days) is None  # type: ignore[arg-type]
    closed = len(closed_exposures(built, settings.conversion_window_days))
    assert 0 < closed < 200
    assert skips.offer_model(built, settings) == (  # type: ignore[arg-type]
        f"only {closed} of 450 offer exposures have a closed conversion window (3 to 14 days, by offer) by "
        "2026-03-08 10:00 UTC, the as-of recorded at ingest (the minimum is 200); 200 offer exposures are closed "
        "by 2026-03-16 10:00 UTC: ingest an export taken after that (or pass that --as-of if the export was taken "
        "later)"
    )


@pytest.mark.parametrize(
    ("case", "sentence"),
    [
        (
            "no offers",
            "the data has no offers table: add offers (offer_id, kind; a control offer for a holdout arm) and "
            "offer_events to the export",
        ),
        (
            "no offer events",
            "the data has no offer_events: add each offer shown (event exposed) and each conversion (converted) "
            "to the export",
        ),
        (
            "no exposures",
            "offer_events has no exposed events among its {converted}: the model learns from exposures and the "
            "conversions that follow them, so add the exposures to the export",
        ),
        ("too few", "only 150 offer exposures in the data (the minimum is 200); add more offer history to the export"),
        (
            "no conversions",
            "none of the 600 offer exposures with a closed 14-day conversion window by 2026-04-13 10:00 UTC "
            "converted: the model needs converted offer_events (same customer and offer, inside the window)",
        ),
    ],
)
def test_skip_sentences_for_missing_offer_data(tmp_path: Path, settings: Settings, case: str, sentence: str) -> None:
    data = tmp_path / "data"
    tables = one_shot_export(data, customers=150 if case == "too few" else 600, conversions=case != "no conversions")
    if case == "no offers":
        (data / "offers.csv").unlink()
    if case == "no offer events":
        (data / "offer_events.csv").unlink()
    events = tables["offer_events"]
    if case == "no exposures":
        events[events["event"] == "converted"].to_csv(data / "offer_events.csv", index=False)
    built = _built(tmp_path, settings, as_of=SEND + pd.Timedelta(weeks=6))
    assert offer_training_set(None, built, settings.conversion_window_days) is None  # type: ignore[arg-type]
    converted = int((events["event"] == "converted").sum())
    assert skips.offer_model(built, settings) == sentence.format(converted=converted)  # type: ignore[arg-type]


def _sends(data: Path, customers: int, opened: bool) -> None:
    ids = [f"c{i:04d}" for i in range(customers)]
    rows = [[f"s-{c}", c, f"m-{c}", "sent", SEND.strftime("%Y-%m-%dT%H:%M:%SZ")] for c in ids]
    if opened:
        rows += [[f"o-{c}", c, f"m-{c}", "open", "2026-03-02T12:30:00Z"] for c in ids[::2]]
    pd.DataFrame(rows, columns=["event_id", "customer_id", "message_id", "event", "occurred_at"]).to_csv(
        data / "email_events.csv", index=False
    )


@pytest.mark.parametrize(
    ("case", "sentence"),
    [
        ("no email events", "the data has no email_events: add the ESP's sends and opens (email_events) to the export"),
        (
            "not closed",
            "none of 300 sends has a closed 72-hour open window by 2026-03-02 13:00 UTC, the data's end; pass "
            "--as-of with the time the export was taken (200 sends are closed by 2026-03-05 10:00 UTC)",
        ),
        (
            "no opens",
            "none of the 300 sends with a closed 72-hour window by 2026-03-12 10:00 UTC was opened by a person "
            "(machine opens do not count): add the ESP's open and click events to the export",
        ),
    ],
)
def test_skip_sentences_for_the_open_model(tmp_path: Path, settings: Settings, case: str, sentence: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame(
        {"customer_id": [f"c{i:04d}" for i in range(300)], "consent_email": "true", "consent_profiling": "true"}
    ).to_csv(data / "customers.csv", index=False)
    if case != "no email events":
        _sends(data, 300, opened=case == "not closed")
    built = _built(tmp_path, settings, as_of=SEND + 10 * DAY if case == "no opens" else None)
    assert open_training_set(None, built, settings.label_window_hours) is None  # type: ignore[arg-type]
    assert skips.open_model(built, settings) == sentence  # type: ignore[arg-type]


# --- the commands -------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_pipeline_says_why_without_as_of_and_trains_with_it(tmp_path: Path) -> None:
    from sendwise.cli import app

    tables = one_shot_export(tmp_path / "data", customers=900)
    end = latest_event(tables).floor("h") + pd.Timedelta(hours=1)
    runner = CliRunner()
    without = runner.invoke(
        app, ["pipeline", "--data", str(tmp_path / "data")], env={"SENDWISE_HOME": str(tmp_path / "a")}
    )
    assert without.exit_code == 0, without.output
    text = _plain(without.output)
    assert (
        f"next_best_offer - - not trained: none of 900 offer exposures has a closed 14-day conversion window by "
        f"{end:%Y-%m-%d %H:%M} UTC, the data's end; pass --as-of with the time the export was taken" in text
    )
    assert "open_propensity - - not trained: the data has no email_events" in text

    home = tmp_path / "b"
    with_as_of = runner.invoke(
        app,
        ["pipeline", "--data", str(tmp_path / "data"), "--as-of", "2026-04-13T12:00:00+02:00"],
        env={"SENDWISE_HOME": str(home)},
    )
    assert with_as_of.exit_code == 0, with_as_of.output
    text = _plain(with_as_of.output)
    assert "models (as of 2026-04-13 10:00 UTC, the --as-of given)" in text
    assert "next_best_offer v1 " in text and "champion: first next_best_offer model" in text
    assert "export taken (as-of) 2026-04-13 10:00 UTC (given with --as-of)" in text

    # a later `train` uses the as-of the ingest recorded; an explicit one before the data is refused
    again = runner.invoke(app, ["train", "--model", "offer"], env={"SENDWISE_HOME": str(home)})
    assert again.exit_code == 0, again.output
    assert "models (as of 2026-04-13 10:00 UTC, the as-of recorded at ingest)" in _plain(again.output)
    early = runner.invoke(app, ["train", "--as-of", "2026-03-03T00:00:00Z"], env={"SENDWISE_HOME": str(home)})
    assert early.exit_code == 2
    assert "--as-of 2026-03-03 00:00 UTC is before the latest event of the raw store" in " ".join(early.output.split())
