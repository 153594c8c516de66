"""Privacy: erasure that lasts (`POST /v1/forget`, `sendwise forget`, tombstones), consent that holds (no email
without `consent_email`, population predictions and no training rows without `consent_profiling`), and no
customer ids in logs or MLflow artifacts.

Every test works on a copy of the session's pipeline home (or only reads it), so other tests are not affected.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sendwise.settings import Settings
from tests.conftest import PipelineHome
from tests.test_service_app import fresh_metrics, served  # noqa: F401 - a fixture, used by name

START = datetime(2026, 12, 1, 7, tzinfo=UTC)
TOKEN = "privacy-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def copied_home(source: Settings, home: Path) -> Settings:
    shutil.copytree(source.home, home)
    return source.model_copy(update={"home": home})


# --- scanning a home for an id -----------------------------------------------------------------------------


def _parquet_holds(path: Path, needle: str) -> bool:
    table = pq.read_table(path)
    if needle in " ".join(table.column_names):
        return True
    return any(needle in repr(v) for column in table.columns for v in column.to_pylist())


def _sqlite_holds(path: Path, needle: str) -> bool:
    """Every row of every table, after VACUUM (no deleted page left to hold a copy)."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("VACUUM")
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in tables:
            for row in connection.execute(f'SELECT * FROM "{name}"'):
                for value in row:
                    if isinstance(value, bytes) and needle.encode() in value:
                        return True
                    if isinstance(value, str) and needle in value:
                        return True
    finally:
        connection.close()
    return needle.encode() in path.read_bytes()


def places_holding(home: Path, needle: str) -> dict[str, list[str]]:
    """Every file of `home` that holds `needle`: Parquet decoded, SQLite dumped, JSON lines and HTML read, and
    any other file searched byte by byte; for a JSON-lines file, the lines that hold it."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        if not path.exists():  # a database's -wal or -shm file, checkpointed and removed when the scan closed it
            continue
        name = str(path.relative_to(home))
        data = path.read_bytes()
        if path.suffix == ".parquet":
            hit = _parquet_holds(path, needle)
        elif data[:16] == b"SQLite format 3\x00":
            hit = _sqlite_holds(path, needle)
        elif path.suffix == ".jsonl":
            lines = [line for line in data.decode("utf-8").splitlines() if needle in line]
            if lines:
                found[name] = lines
            continue
        elif path.suffix in (".html", ".json"):
            hit = needle in data.decode("utf-8")
        else:
            hit = needle.encode() in data
        if hit:
            found[name] = []
    return found


def _emailed_customer(settings: Settings) -> str:
    """A customer with email consent and profiling, with the most email events of the raw store."""
    from sendwise.raw import load_table

    customers = load_table(settings, "customers")
    events = load_table(settings, "email_events")
    assert customers is not None and events is not None
    allowed = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"]
    counts = events.loc[events["customer_id"].isin(allowed), "customer_id"].value_counts()
    return str(counts.index[0])


# --- erasure -----------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_metrics")
async def test_forget_leaves_nothing_and_a_reingested_export_brings_nothing_back(
    pipeline_home: PipelineHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sendwise.ingest import ingest
    from sendwise.raw import load_table
    from serving.engine import Engine
    from serving.schemas import DecideRequest, Recipient, RenderRequest

    settings = copied_home(pipeline_home.settings, tmp_path / "home")
    customer = _emailed_customer(settings)
    events = load_table(settings, "email_events")
    assert events is not None
    own_events = events[events["customer_id"] == customer]
    assert len(own_events) >= 5
    assert places_holding(settings.home, customer)  # the scan finds them before: it can fail

    engine = Engine.load(settings)
    decided = engine.decide(
        DecideRequest(recipients=[Recipient(customer_id=customer), Recipient(customer_id="someone-else")])
    )
    mine = decided.decisions[0]
    assert mine.send and not mine.cold_start
    email = engine.render(RenderRequest(decision_id=mine.decision_id))
    assert email.html is not None and email.customer_id == customer
    page = settings.reports_dir / "site" / "customer-notes.html"  # a report page that names them
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"<html><body><p>{customer} opened 4 emails</p></body></html>", encoding="utf-8")
    assert any(n.startswith("decisions/") for n in places_holding(settings.home, customer))

    caplog.set_level(logging.DEBUG)
    async with served(engine, settings.home, monkeypatch, TOKEN) as client:
        refused = await client.post("/v1/forget", json={"customer_ids": [customer]})
        empty = await client.post("/v1/forget", json={"customer_ids": []}, headers=AUTH)
        forgot = await client.post("/v1/forget", json={"customer_ids": [customer]}, headers=AUTH)
        assert refused.status_code == 401
        assert empty.status_code == 422 and empty.json()["details"][0]["field"] == "customer_ids"
        assert forgot.status_code == 200, forgot.text
        answer = forgot.json()
        assert customer not in forgot.text
        assert answer["customers"] == 1 and answer["new_tombstones"] == 1
        assert answer["rows"]["raw/email_events"] == len(own_events)
        assert answer["rows"]["raw/customers"] == 1
        assert answer["online_rows"] > 0 and answer["decisions"] == 1
        assert answer["reports"] == ["reports/site/customer-notes.html"]

        assert places_holding(settings.home, customer) == {}

        # The running service knows nothing of them: a stranger's (cold-start) answer, nothing to explain or
        # render, the same answer as for a never-seen id with the same (empty) context.
        window = START.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"recipients": [{"customer_id": customer}, {"customer_id": "never-seen"}], "window_start": window}
        after = await client.post("/v1/decide", json=body, headers=AUTH)
        explained = await client.post(
            "/v1/explain", json={"customer_id": customer, "model": "open_propensity"}, headers=AUTH
        )
        rendered = await client.post("/v1/render", json={"decision_id": mine.decision_id}, headers=AUTH)
    assert after.status_code == 200, after.text
    them, stranger = after.json()["decisions"]
    assert them["cold_start"] and stranger["cold_start"]
    assert them["hourly_open_probability"] == stranger["hourly_open_probability"]
    assert them["offers"] == stranger["offers"]
    assert explained.status_code == 404 and explained.json()["error"] == "unknown customer"
    assert rendered.status_code == 404
    assert customer not in caplog.text + " ".join(str(r.args) for r in caplog.records)
    new_decision = them["decision_id"]

    # The original export again, and a new event of theirs: the tombstone drops every row, and says how many.
    report = ingest(pipeline_home.world, settings, progress=False)
    assert report.tables["email_events"].forgotten == len(own_events)
    assert report.tables["customers"].forgotten == 1
    event_dir = tmp_path / "new-event"
    event_dir.mkdir()
    event = own_events.tail(1).assign(event_id="ev-after-forget", occurred_at=pd.Timestamp("2026-11-30", tz="UTC"))
    event.to_parquet(event_dir / "email_events.parquet", index=False)
    world_customers = pd.read_csv(pipeline_home.world / "customers.csv", dtype=str)
    world_customers[world_customers["customer_id"] == customer].to_csv(event_dir / "customers.csv", index=False)
    again = ingest(event_dir, settings, progress=False)
    assert again.tables["email_events"].forgotten == 1 and again.tables["email_events"].added == 0
    assert again.tables["customers"].forgotten == 1 and again.tables["customers"].added == 0
    assert customer not in json.dumps(report.model_dump(mode="json")) + again.model_dump_json()

    # Nothing of theirs anywhere; the one mention left is the decision asked for after the erasure (a request
    # the sending system made then, answered as for a stranger and logged like any other).
    left = places_holding(settings.home, customer)
    assert list(left) == [f"decisions/{datetime.now(UTC):%Y-%m-%d}.jsonl"]
    (line,) = next(iter(left.values()))
    assert json.loads(line)["decision_id"] == new_decision


def test_forget_from_the_command_line_names_no_one_and_checks_its_input(
    pipeline_home: PipelineHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sendwise.cli import app

    settings = copied_home(pipeline_home.settings, tmp_path / "home")
    customers = pq.read_table(settings.raw_dir / "customers.parquet", columns=["customer_id"])
    ids = customers["customer_id"].to_pylist()[:3]
    listed = tmp_path / "ids.txt"
    listed.write_text(f"{ids[1]}\n\n{ids[2]}\n", encoding="utf-8")
    env = {"SENDWISE_HOME": str(settings.home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key, value in settings.library_environment().items():
        monkeypatch.setenv(key, value)

    result = CliRunner().invoke(app, ["forget", ids[0], "--file", str(listed)], env=env)
    nothing = CliRunner().invoke(app, ["forget"], env=env)
    missing = CliRunner().invoke(app, ["forget", "--file", str(tmp_path / "nope.txt")], env=env)

    assert result.exit_code == 0, result.output
    assert "forgot 3 customers (3 new tombstones)" in " ".join(result.output.split())
    assert not any(i in result.output for i in ids)
    assert nothing.exit_code == 2 and "no customer id given" in nothing.output
    assert missing.exit_code == 2 and "nope.txt" in missing.output
    tombstones = (settings.home / "privacy" / "tombstones.txt").read_text().split()
    assert len(tombstones) == 3 and not any(i in " ".join(tombstones) for i in ids)
    for customer in ids:
        assert places_holding(settings.home, customer) == {}


# --- consent -----------------------------------------------------------------------------------------------


def _consent_customers(settings: Settings) -> tuple[pd.DataFrame, list[str], list[str]]:
    from sendwise.raw import load_table

    customers = load_table(settings, "customers")
    assert customers is not None
    no_email = customers.loc[~customers["consent_email"].astype(bool), "customer_id"].tolist()
    no_profiling = customers.loc[
        customers["consent_email"].astype(bool) & ~customers["consent_profiling"].fillna(False).astype(bool),
        "customer_id",
    ].tolist()
    assert len(no_email) >= 5 and len(no_profiling) >= 5  # the world has both: the checks below can fail
    return customers, no_email, no_profiling


EVENT_FEATURES = (
    "n_emails",
    "n_human_opens",
    "n_clicks",
    "n_sessions",
    "n_purchases",
    "purchase_value",
    "sends_7d",
    "days_since_human_open",
    "days_since_session",
    "days_since_email",
)
"""Features made from a customer's own events: none may reach a prediction without profiling consent."""


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_metrics")
async def test_consent_over_http(engine: Any, pipeline_home: PipelineHome, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without email consent: no send time, no offer, no render. Without profiling consent: predictions from
    what they declared (time zone, interests, attributes, sign-up date) and population rates, never from their
    events: every event feature of their explanation is missing and their open rate is the population prior."""
    from features.transform import PRIOR_OPEN_RATE

    _, no_email, no_profiling = _consent_customers(pipeline_home.settings)
    profiled = _emailed_customer(pipeline_home.settings)
    window = START.strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"recipients": [{"customer_id": c} for c in no_email[:5] + no_profiling[:5]], "window_start": window}
    async with served(engine, engine.settings.home, monkeypatch) as client:
        answer = await client.post("/v1/decide", json={**body, "k_offers": 20})
        render = await client.post("/v1/render", json={"customer_id": no_email[0]})
        explained = [
            await client.post("/v1/explain", json={"customer_id": c, "model": "open_propensity", "top": 30})
            for c in [*no_profiling[:5], profiled]
        ]
    assert answer.status_code == 200, answer.text
    decisions = answer.json()["decisions"]
    for d in decisions[:5]:
        assert d["send"] is False and d["send_at"] is None and d["offers"] == [] and d["modules"] == []
        assert any("no email consent" in r for r in d["reasons"])
    for d in decisions[5:]:
        assert not d["cold_start"] and any("profiling consent not given" in r for r in d["reasons"])
    assert render.status_code == 200, render.text
    rendered = render.json()
    assert rendered["send"] is False and rendered["html"] is None and rendered["text"] is None
    assert all(e.status_code == 200 for e in explained), [e.text for e in explained]
    values = [{x["feature"]: x["value"] for x in e.json()["drivers"]} for e in explained]
    for seen in values[:5]:
        assert {f: seen[f] for f in EVENT_FEATURES if f in seen} == dict.fromkeys(set(EVENT_FEATURES) & set(seen))
        assert seen["open_rate"] == pytest.approx(PRIOR_OPEN_RATE)
    assert any(values[5].get(f) is not None for f in EVENT_FEATURES)  # a profiled customer's do show


def test_no_profiling_consent_no_training_rows(pipeline_home: PipelineHome, tmp_path: Path) -> None:
    """The examples the models learn from (sends with their open labels, offer exposures) hold no row of a
    customer without profiling consent, though the raw store holds their events."""
    from features.build import build_feature_tables
    from features.store import apply_definitions, open_store
    from sendwise.raw import load_table
    from training.datasets import closed_exposures, open_training_set

    settings = copied_home(pipeline_home.settings, tmp_path / "home")
    _consent_customers(settings)  # the world has customers without profiling consent
    customers = load_table(settings, "customers")
    assert customers is not None
    denied = set(customers.loc[~customers["consent_profiling"].fillna(False).astype(bool), "customer_id"])
    events = load_table(settings, "email_events")
    assert events is not None and events["customer_id"].isin(denied).sum() >= 20

    tables = build_feature_tables(settings, progress=False)
    store = open_store(settings)
    apply_definitions(store, settings)
    assert len(tables.sends) > 1000 and not tables.sends["customer_id"].isin(denied).any()
    exposures = closed_exposures(tables, settings.conversion_window_days)
    assert len(exposures) > 200 and not exposures["customer_id"].isin(denied).any()
    training = open_training_set(store, tables, settings.label_window_hours)
    assert training is not None
    # one example per closed send, plus the second showing of a stable half: nothing beyond those sends
    closed = tables.sends[tables.sends["send_at"] <= tables.as_of - pd.Timedelta(hours=settings.label_window_hours)]
    assert len(training.design) <= 2 * len(closed)
    # their engagement rows (one, at the build's time) hold nothing made from their events
    engagement = pq.read_table(settings.feature_tables_dir / "engagement_features.parquet").to_pandas()
    theirs = engagement[engagement["customer_id"].isin(denied)]
    assert len(theirs) == theirs["customer_id"].nunique() > 0
    counts = ["n_emails", "n_human_opens", "n_clicks", "n_sessions", "n_purchases", "purchase_value", "sends_7d"]
    assert (theirs[counts] == 0).all().all()
    assert theirs[["days_since_human_open", "days_since_session", "days_since_email"]].isna().all().all()
    for column in ("open_hours_weekday", "click_hours_weekend", "session_hours_weekday", "category_views"):
        assert all(not np.any(v) for v in theirs[column])


# --- logs and MLflow ---------------------------------------------------------------------------------------


def _id_pattern(settings: Settings) -> re.Pattern[str]:
    customers = pq.read_table(settings.raw_dir / "customers.parquet", columns=["customer_id"])
    ids = sorted(customers["customer_id"].to_pylist(), key=len, reverse=True)
    return re.compile("|".join(re.escape(i) for i in ids))


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file())


def test_mlflow_artifacts_and_training_samples_hold_no_customer_id(pipeline_home: PipelineHome) -> None:
    """MLflow's artifacts and store, the training-set samples kept for the reports (features only) and what
    the pipeline printed name no customer."""
    settings = pipeline_home.settings
    pattern = _id_pattern(settings)
    assert len(pipeline_home.output) > 200 and not pattern.search(pipeline_home.output)
    artifacts = list(_files(settings.mlruns_dir / "artifacts"))
    assert len(artifacts) >= 5
    for path in artifacts:
        text = path.read_bytes().decode("utf-8", errors="replace")
        assert not pattern.search(text), f"{path} names a customer"
    connection = sqlite3.connect(f"file:{settings.mlruns_dir / 'mlflow.db'}?mode=ro", uri=True)
    try:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in tables:
            for row in connection.execute(f'SELECT * FROM "{name}"'):
                assert not pattern.search(repr(row)), f"mlflow.db table {name} names a customer"
    finally:
        connection.close()
    samples = list(settings.training_sets_dir.glob("*.parquet"))
    assert samples
    for path in samples:
        table = pq.read_table(path)
        assert "customer_id" not in table.column_names
        for column in table.columns:
            values = [v for v in column.to_pylist() if isinstance(v, str)]
            assert not any(pattern.fullmatch(v) for v in values), f"{path} holds customer ids"


@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_metrics")
async def test_service_logs_name_no_customer(
    engine: Any, pipeline_home: PipelineHome, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What the service logs while it decides, renders, explains and refuses names no customer: ids go only
    into the decision log, never into Python's logging (erasure's logging: the forget test)."""
    settings = engine.settings
    ids = pq.read_table(settings.raw_dir / "customers.parquet", columns=["customer_id"])["customer_id"].to_pylist()
    window = START.strftime("%Y-%m-%dT%H:%M:%SZ")
    caplog.set_level(logging.DEBUG)
    async with served(engine, settings.home, monkeypatch) as client:
        answers = [
            await client.post("/v1/decide", json={"recipients": [{"customer_id": c} for c in ids[:50]]}),
            await client.post("/v1/render", json={"customer_id": ids[0]}),
            await client.post("/v1/explain", json={"customer_id": ids[1], "model": "open_propensity"}),
            await client.post("/v1/explain", json={"customer_id": "nobody-known", "model": "open_propensity"}),
            await client.post("/v1/decide", json={"recipients": [{"customer_id": ids[2]}], "window_start": "soon"}),
            await client.post("/v1/decide", json={"recipients": [{"customer_id": ids[3]}], "window_start": window}),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 422, 200]
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert len(caplog.records) > 0
    found = [c for c in [*ids[:50], "nobody-known"] if c in logged]
    assert found == []
    assert np.isfinite(answers[0].json()["decisions"][0]["open_probability"])


def test_the_next_training_replaces_every_champion_trained_before_an_erasure(
    pipeline_home: PipelineHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models already trained keep what they learned: after an erasure, the next training's models replace the
    champions whatever their scores (a home of its own: training writes MLflow artifacts)."""
    from mlflow import MlflowClient

    from sendwise.cli import app
    from sendwise.registry import MODEL_NAMES
    from serving.forget import forget_customers
    from tests.conftest import run_pipeline

    settings, _ = run_pipeline(pipeline_home.world, tmp_path / "home")
    client = MlflowClient(settings.tracking_uri)
    before = {name: client.get_model_version_by_alias(name, "champion").version for name in MODEL_NAMES}
    forget_customers(settings, [_emailed_customer(settings)])
    env = {"SENDWISE_HOME": str(settings.home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key, value in settings.library_environment().items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["train"], env=env)
    assert result.exit_code == 0, result.output
    for name in MODEL_NAMES:
        now = client.get_model_version_by_alias(name, "champion")
        assert int(now.version) > int(before[name])
        assert f"champion v{before[name]} was trained before customers were erased" in now.tags["promotion"]
