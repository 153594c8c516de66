"""`POST /v1/events` and `sendwise push` on the real `bentoml serve`: rows appended before the 202, a bad row
refused by its index and field (the file's row, for push), nothing appended from a refused batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sendwise.cli import app
from sendwise.ingest.appended import pending_parts, read_parts
from sendwise.push import PushError, push_file
from sendwise.raw import load_table
from sendwise.settings import Settings
from tests.conftest import PipelineHome, home_with_own_decision_log
from tests.served import bentoml_serve

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
TOKEN = "events-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("events") / "home")
    with bentoml_serve(settings, TOKEN) as url:
        yield url, settings


@pytest.fixture(scope="module")
def customer_ids(served: tuple[str, Settings]) -> list[str]:
    customers = load_table(served[1], "customers")
    assert customers is not None
    return customers["customer_id"].astype(str).tolist()


def appended_rows(settings: Settings, table: str) -> pd.DataFrame:
    parts = pending_parts(settings).get(table, [])
    return read_parts(parts) if parts else pd.DataFrame({"event_id": [], "customer_id": []})


def test_events_are_appended_before_the_answer(served: tuple[str, Settings], customer_ids: list[str]) -> None:
    url, settings = served
    before = len(appended_rows(settings, "site_events"))
    rows = [
        {
            "table": "site_events",
            "event_id": f"http-{i}",
            "customer_id": customer_ids[i],
            "event": "page_view",
            "occurred_at": "2026-12-01T10:00:00Z",
        }
        for i in range(3)
    ]
    answer = httpx.post(f"{url}/v1/events", json={"events": rows}, headers=AUTH, timeout=60)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["received"], body["appended"], body["forgotten"]) == (3, {"site_events": 3}, 0)
    site = appended_rows(settings, "site_events")
    assert len(site) == before + 3
    assert {"http-0", "http-1", "http-2"} <= set(site["event_id"])


def test_a_bad_row_is_refused_by_index_and_field(served: tuple[str, Settings], customer_ids: list[str]) -> None:
    url, settings = served
    before = {name: len(parts) for name, parts in pending_parts(settings).items()}
    good = {
        "table": "email_events",
        "customer_id": customer_ids[0],
        "message_id": "m-x",
        "event": "open",
        "occurred_at": "2026-12-01T10:00:00Z",
    }
    bad = {**good, "occurred_at": "2026-12-01 noon"}
    answer = httpx.post(f"{url}/v1/events", json={"events": [good, good, bad]}, headers=AUTH, timeout=60)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["details"] == [{"field": "events[2].occurred_at", "message": "not an ISO 8601 timestamp with a zone"}]
    assert {name: len(parts) for name, parts in pending_parts(settings).items()} == before

    too_many = httpx.post(f"{url}/v1/events", json={"events": [good] * 10_001}, headers=AUTH, timeout=60)
    assert too_many.status_code == 422 and too_many.json()["details"][0]["field"] == "events"
    assert httpx.post(f"{url}/v1/events", json={"events": [good]}, timeout=60).status_code == 401


def test_the_document_describes_the_route(served: tuple[str, Settings]) -> None:
    document = httpx.get(f"{served[0]}/docs.json", headers=AUTH, timeout=60).json()
    operation = document["paths"]["/v1/events"]["post"]
    assert sorted(operation["responses"]) == ["202", "400", "401", "413", "422", "500", "503", "504"]


def write_events(path: Path, customer_ids: list[str], n: int, bad_row: int | None = None) -> Path:
    rows = [
        {
            "event_id": f"push-{path.stem}-{i}",
            "customer_id": customer_ids[i % 50],
            "event": "product_view",
            "occurred_at": "2026-12-01T11:00:00Z" if i + 1 != bad_row else "soon",
            "category": "books",
        }
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_push_sends_a_file_in_chunks(served: tuple[str, Settings], customer_ids: list[str], tmp_path: Path) -> None:
    url, settings = served
    path = write_events(tmp_path / "a" / "site_events.csv", customer_ids, 25)
    result = push_file(path, url, TOKEN, chunk_size=10)
    assert (result.table, result.rows, result.appended, result.forgotten) == ("site_events", 25, 25, 0)
    assert {f"push-site_events-{i}" for i in range(25)} <= set(appended_rows(settings, "site_events")["event_id"])


def test_push_names_the_files_row_a_service_refused(
    served: tuple[str, Settings], customer_ids: list[str], tmp_path: Path
) -> None:
    url, _ = served
    path = write_events(tmp_path / "b" / "site_events.csv", customer_ids, 25, bad_row=17)
    with pytest.raises(PushError) as caught:
        push_file(path, url, TOKEN, chunk_size=10)
    message = str(caught.value)
    assert "row 17, column occurred_at: not an ISO 8601 timestamp with a zone" in message
    assert "the 10 rows before were appended" in message


def test_push_command(served: tuple[str, Settings], customer_ids: list[str], tmp_path: Path) -> None:
    url, settings = served
    path = write_events(tmp_path / "c" / "site_events.csv", customer_ids, 12)
    env = {"SENDWISE_HOME": str(settings.home), "SENDWISE_API_TOKEN": TOKEN}
    result = CliRunner().invoke(app, ["push", str(path), "--url", url], env=env)
    assert result.exit_code == 0, result.output
    assert "site_events: 12 rows sent, 12 appended" in result.output

    wrong = CliRunner().invoke(app, ["push", str(path), "--url", url], env={**env, "SENDWISE_API_TOKEN": "nope"})
    assert wrong.exit_code == 2 and "(401" in wrong.output and "nothing was appended" in wrong.output
    unnamed = CliRunner().invoke(app, ["push", str(path.rename(path.with_name("events.csv"))), "--url", url], env=env)
    said = " ".join(unnamed.output.split())  # the terminal's width wraps it
    assert unnamed.exit_code == 2 and "TABLE one of customers, email_events, site_events, offer_events" in said


def test_a_stop_pushed_through_one_replica_stops_the_next_decision_on_another(
    pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two `bentoml serve` processes on one home share its online store (SQLite here; Redis past one machine):
    an unsubscribe appended and pushed through one is seen by the very next decision of the other. The time
    from sending the event to the changed decision is measured and written to artifacts/ (no wall-clock bar
    in a test: the bar, 1 s, is checked by reading it)."""
    import json
    import time

    from tests.browser import artifacts_dir
    from tests.test_realtime import sendable_customers

    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("replicas") / "home")
    ids = sendable_customers(settings, 5)
    decide = {"campaign": {"kind": "newsletter"}, "explore_share": 0.0}
    seconds = []
    with (
        bentoml_serve(settings, TOKEN) as first,
        bentoml_serve(settings, TOKEN) as second,
        httpx.Client(headers=AUTH, timeout=60) as client,
    ):
        for customer in ids:
            body = {"recipients": [{"customer_id": customer}], **decide}
            assert client.post(f"{second}/v1/decide", json=body).json()["decisions"][0]["send"] is True
            event = {
                "table": "email_events",
                "customer_id": customer,
                "message_id": f"m-{customer}",
                "event": "unsubscribe",
                "occurred_at": "2026-12-01T10:00:00Z",
            }
            started = time.perf_counter()
            pushed = client.post(f"{first}/v1/events", json={"events": [event]})
            after = client.post(f"{second}/v1/decide", json=body).json()["decisions"][0]
            seconds.append(time.perf_counter() - started)
            assert pushed.status_code == 202 and pushed.json()["pushed"] == 1, pushed.text
            assert after["send"] is False and after["send_at"] is None, after
    measured = {"event_to_changed_decision_seconds": [round(s, 4) for s in seconds], "max": round(max(seconds), 4)}
    print(f"event -> changed decision on another replica: {measured}")
    artifacts_dir().mkdir(parents=True, exist_ok=True)
    (artifacts_dir() / "events_latency.json").write_text(json.dumps(measured, indent=2) + "\n")


def test_a_visit_and_a_purchase_pushed_through_one_replica_change_the_next_decision_on_another(
    pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Latest values are model inputs: a site session pushed through one replica moves the customer's send hour
    toward it on the other, and a purchase in the category of the offer they were given moves that offer's score.
    The time from sending each event to the changed decision is written to artifacts/ (the bar, 1 s, is checked by
    reading it, as for stops)."""
    import json
    import time
    from datetime import timedelta

    from tests.browser import artifacts_dir
    from tests.test_latest_inputs import VISITED, _profiled_sendable

    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("latest") / "home")
    # the events happen at a fixed moment, one hour before the window (test_latest_inputs says why)
    now = VISITED
    start = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    decide = {"campaign": {"kind": "promotional"}, "explore_share": 0.0, "window_start": start}
    ids = _profiled_sendable(settings, 200)
    seconds: dict[str, list[float]] = {"visit": [], "purchase": []}
    with (
        bentoml_serve(settings, TOKEN) as first,
        bentoml_serve(settings, TOKEN) as second,
        httpx.Client(headers=AUTH, timeout=60) as client,
    ):
        before = client.post(f"{second}/v1/decide", json={"recipients": [{"customer_id": c} for c in ids], **decide})
        decisions = [d for d in before.json()["decisions"] if d["send"] and d["offers"] and d["send_at"] != start]
        catalog = load_table(settings, "offers")
        assert catalog is not None
        category = dict(zip(catalog["offer_id"], catalog["category"], strict=True))
        chosen = [d for d in decisions if isinstance(category.get(d["offers"][0]["offer_id"]), str)][:8]
        assert len(chosen) == 8
        sooner, moved = 0, 0
        for d in chosen:
            body = {"recipients": [{"customer_id": d["customer_id"]}], **decide}
            visit = {"table": "site_events", "customer_id": d["customer_id"], "event": "session_start"}
            started = time.perf_counter()
            pushed = client.post(f"{first}/v1/events", json={"events": [{**visit, "occurred_at": now.isoformat()}]})
            after = client.post(f"{second}/v1/decide", json=body).json()["decisions"][0]
            seconds["visit"].append(time.perf_counter() - started)
            assert pushed.status_code == 202 and pushed.json()["pushed"] == 1, pushed.text
            assert after["hourly_open_probability"][0] > 1.3 * d["hourly_open_probability"][0]
            sooner += after["send_at"] < d["send_at"]

            offer = d["offers"][0]
            purchase = {**visit, "event": "purchase", "category": category[offer["offer_id"]], "value": 40.0}
            started = time.perf_counter()
            pushed = client.post(f"{first}/v1/events", json={"events": [{**purchase, "occurred_at": now.isoformat()}]})
            again = client.post(f"{second}/v1/decide", json=body).json()["decisions"][0]
            seconds["purchase"].append(time.perf_counter() - started)
            assert pushed.status_code == 202, pushed.text
            scores = {o["offer_id"]: o["conversion_probability"] for o in again["offers"]}
            before_visit = {o["offer_id"]: o["conversion_probability"] for o in after["offers"]}
            now_score = scores.get(offer["offer_id"])
            was = before_visit.get(offer["offer_id"], offer["conversion_probability"])
            changed = again["offers"][0]["offer_id"] != after["offers"][0]["offer_id"]
            moved += changed or (now_score is not None and abs(np.log(now_score / was)) > 0.1)
        assert sooner >= 6 and moved >= 6, (sooner, moved)
    measured = {f"{k}_to_changed_decision_seconds": [round(s, 4) for s in v] for k, v in seconds.items()}
    measured["max"] = round(max(max(v) for v in seconds.values()), 4)
    print(f"event -> changed decision on another replica: {measured}")
    artifacts_dir().mkdir(parents=True, exist_ok=True)
    (artifacts_dir() / "latest_values_latency.json").write_text(json.dumps(measured, indent=2) + "\n")
