"""Latest values: computed point in time from the raw events (`features.latest`), pushed to Feast's online store
as events arrive, and read at the next decision: an unsubscribe, complaint or hard bounce stops it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.latest import email_state, latest_activity
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.engine import Engine
from serving.reasons import NOT_ELIGIBLE
from serving.schemas import DecideRequest, EventsRequest, RenderRequest
from tests.conftest import PipelineHome, home_with_own_decision_log


def times(*texts: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(texts), utc=True)).astype("datetime64[us, UTC]")


def test_latest_activity_is_the_state_after_each_event() -> None:
    site = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "a"],
            "event": ["session_start", "product_view", "purchase", "page_view", "page_view"],
            "occurred_at": times(
                "2026-11-01T08:00Z", "2026-11-01T08:05Z", "2026-11-02T09:00Z", "2026-11-01T10:00Z", "2026-11-03T07:00Z"
            ),
            "category": [None, "books", "garden", None, None],
        }
    )
    table = latest_activity(site)
    a = table[table["customer_id"] == "a"].reset_index(drop=True)
    assert a["last_viewed_category"].tolist() == [None, "books", "garden", "garden"]
    assert a["last_purchase_category"].tolist() == [None, None, "garden", "garden"]
    purchase = pd.Timestamp("2026-11-02T09:00Z").timestamp()
    assert np.isnan(a["last_purchase_ts"][1]) and a["last_purchase_ts"][2:].tolist() == [purchase, purchase]
    assert a["last_session_ts"].tolist()[-1] == pd.Timestamp("2026-11-03T07:00Z").timestamp()
    assert table[table["customer_id"] == "b"]["last_viewed_category"].tolist() == [None]


def test_email_state_keeps_a_stop_once_set_and_ignores_soft_bounces() -> None:
    emails = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "c"],
            "event": ["unsubscribe", "complaint", "bounce", "bounce"],
            "bounce_type": [None, None, "soft", "hard"],
            "occurred_at": times("2026-11-01T08:00Z", "2026-11-02T08:00Z", "2026-11-01T08:00Z", "2026-11-01T09:00Z"),
        }
    )
    state = email_state(emails)
    assert state["customer_id"].tolist() == ["a", "a", "c"]
    assert state[["unsubscribed", "complained", "hard_bounced"]].to_numpy().tolist() == [
        [1, 0, 0],
        [1, 1, 0],
        [0, 0, 1],
    ]


# --- the engine over a home of its own (pushes change its online store) -----------------------------------
@pytest.fixture(scope="module")
def own_engine(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("realtime") / "home")
    yield Engine.load(settings)


def sendable_customers(settings: Settings, n: int) -> list[str]:
    customers = load_table(settings, "customers")
    assert customers is not None
    eligible = pd.read_parquet(settings.feature_tables_dir / "customer_features.parquet")
    eligible_ids = set(eligible.loc[eligible["email_eligible"] > 0, "customer_id"])
    ids = customers.loc[customers["consent_email"] & customers["customer_id"].isin(eligible_ids), "customer_id"]
    return ids.astype(str).head(n).tolist()


def decide(engine: Engine, ids: list[str]) -> list[dict[str, object]]:
    request = DecideRequest.model_validate(
        {"recipients": [{"customer_id": c} for c in ids], "campaign": {"kind": "newsletter"}, "explore_share": 0.0}
    )
    return engine.decide_payload(request)["decisions"]  # type: ignore[return-value]


def stop_event(customer: str, event: str, **extra: object) -> dict[str, object]:
    return {
        "table": "email_events",
        "customer_id": customer,
        "message_id": f"m-{event}-{customer}",
        "event": event,
        "occurred_at": "2026-12-01T10:00:00Z",
        **extra,
    }


def test_the_build_writes_the_latest_value_tables(own_engine: Engine) -> None:
    tables = own_engine.settings.feature_tables_dir
    activity = pd.read_parquet(tables / "latest_activity.parquet")
    state = pd.read_parquet(tables / "email_state.parquet")
    site = load_table(own_engine.settings, "site_events")
    assert site is not None and len(activity) > 0 and len(state) > 0
    assert activity["customer_id"].nunique() <= site["customer_id"].nunique()
    # what the online store holds after the pipeline's materialize is each customer's last row
    last = activity.sort_values("event_timestamp").drop_duplicates("customer_id", keep="last").head(20)
    read = own_engine.realtime.read("latest_activity_fv", last["customer_id"].tolist(), ("last_session_ts",))
    assert read["last_session_ts"].tolist() == pytest.approx(last["last_session_ts"].tolist())


def test_a_stop_event_stops_the_next_decision(own_engine: Engine) -> None:
    unsubscribing, complaining, bouncing, soft, staying = sendable_customers(own_engine.settings, 5)
    ids = [unsubscribing, complaining, bouncing, soft, staying]
    before = decide(own_engine, ids)
    assert [d["send"] for d in before] == [True] * 5

    answer = own_engine.events(
        EventsRequest(
            events=[
                stop_event(unsubscribing, "unsubscribed"),
                stop_event(complaining, "spamreport"),
                stop_event(bouncing, "bounce", bounce_type="hard"),
                stop_event(soft, "bounce", bounce_type="soft"),
                {
                    "table": "site_events",
                    "customer_id": staying,
                    "event": "product_view",
                    "category": "books",
                    "occurred_at": "2026-12-01T10:00:00Z",
                },
            ]
        )
    )
    assert answer.appended == {"email_events": 4, "site_events": 1} and answer.status == "ok"
    assert answer.pushed == 4  # three stops, one visit: the soft bounce changes no latest value

    decisions = decide(own_engine, ids)
    assert [d["send"] for d in decisions] == [False, False, False, True, True]
    assert all(NOT_ELIGIBLE in d["reasons"] for d in decisions[:3])
    # an email decided before the unsubscribe is not rendered after it; the soft bounce's still is
    stopped_email = own_engine.render(RenderRequest(decision_id=str(before[0]["decision_id"])))
    assert not stopped_email.send and stopped_email.html is None and NOT_ELIGIBLE in stopped_email.reasons
    assert own_engine.render(RenderRequest(decision_id=str(before[3]["decision_id"]))).send
    activity = own_engine.realtime.read("latest_activity_fv", [staying], ("last_viewed_category", "last_session_ts"))
    assert activity["last_viewed_category"].tolist() == ["books"]
    assert activity["last_session_ts"].tolist() == [pd.Timestamp("2026-12-01T10:00:00Z").timestamp()]


def test_an_older_event_does_not_overwrite_a_later_value(own_engine: Engine) -> None:
    (customer,) = sendable_customers(own_engine.settings, 6)[5:]
    visit = {"table": "site_events", "customer_id": customer, "event": "product_view", "occurred_at": ""}
    own_engine.events(EventsRequest(events=[{**visit, "category": "new", "occurred_at": "2026-12-02T10:00:00Z"}]))
    own_engine.events(EventsRequest(events=[{**visit, "category": "old", "occurred_at": "2026-11-30T10:00:00Z"}]))
    read = own_engine.realtime.read("latest_activity_fv", [customer], ("last_viewed_category",))
    assert read["last_viewed_category"].tolist() == ["new"]


def test_an_event_that_changes_no_latest_value_is_appended_all_the_same(own_engine: Engine) -> None:
    from sendwise.ingest.appended import pending_parts

    before = sum(len(p) for p in pending_parts(own_engine.settings).values())
    own_engine.events(EventsRequest(events=[stop_event("someone-new", "open")]))
    assert sum(len(p) for p in pending_parts(own_engine.settings).values()) == before + 1


def test_materialize_brings_what_was_appended_but_never_pushed_online(
    pipeline_home: PipelineHome, tmp_path: Path
) -> None:
    """A service stopped between the append and the push loses nothing: `sendwise materialize` merges the rows
    into the raw store, builds the latest values again and materializes them, without training."""
    from typer.testing import CliRunner

    from sendwise.cli import app
    from sendwise.ingest.appended import append_events, check_events, pending_parts

    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    (customer,) = sendable_customers(settings, 1)
    append_events(settings, check_events([stop_event(customer, "complaint")], settings))  # and no push
    engine = Engine.load(settings, log_decisions=False)
    versions = engine.model_versions()
    assert decide(engine, [customer])[0]["send"] is True

    env = {"SENDWISE_HOME": str(settings.home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = CliRunner().invoke(app, ["materialize"], env=env)
    assert result.exit_code == 0, result.output
    assert "appended events merged into the raw store: 1 email_events" in result.output
    assert "the models were not retrained" in result.output

    assert pending_parts(settings) == {}
    emails = load_table(settings, "email_events")
    assert emails is not None and f"m-complaint-{customer}" in set(emails["message_id"])
    state = pd.read_parquet(settings.feature_tables_dir / "email_state.parquet")
    assert state.loc[state["customer_id"] == customer, "complained"].tolist() == [1.0]
    assert engine.realtime.stopped([customer]).tolist() == [True]
    assert decide(engine, [customer])[0]["send"] is False
    assert Engine.load(settings, log_decisions=False).model_versions() == versions


def test_an_unsubscribe_stops_a_customer_sendwise_does_not_know_yet(own_engine: Engine) -> None:
    """A recipient the batch features do not have yet (they joined after the last export) is decided as a new
    customer; once an unsubscribe is pushed for them, the next decision does not send, with the reason."""
    newcomer = "newcomer-unsubscribing"
    request = DecideRequest.model_validate(
        {
            "recipients": [{"customer_id": newcomer, "timezone": "Europe/Paris"}],
            "campaign": {"kind": "newsletter"},
            "explore_share": 0.0,
        }
    )
    (before,) = own_engine.decide_payload(request)["decisions"]  # type: ignore[misc]
    assert before["send"] is True
    own_engine.events(EventsRequest(events=[stop_event(newcomer, "unsubscribe")]))
    (after,) = own_engine.decide_payload(request)["decisions"]  # type: ignore[misc]
    assert after["send"] is False and NOT_ELIGIBLE in after["reasons"]


def test_reads_are_kept_until_another_connection_commits(tmp_path: Path) -> None:
    """Deciding the same customers again reads nothing from a SQLite online store that has not changed; any
    commit to it (a push through Feast, another replica, `sendwise materialize`) makes the next read go to it."""
    import sqlite3

    from serving.realtime import UnchangedReads

    path = tmp_path / "online.db"
    writer = sqlite3.connect(path)
    writer.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    writer.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2)])
    writer.commit()
    asked: list[list[str]] = []

    def read(ids: list[str]) -> list[object]:
        asked.append(ids)
        values = dict(writer.execute("SELECT k, v FROM t").fetchall())
        return [values.get(c) for c in ids]

    cache = UnchangedReads(str(path))
    assert cache.values("view", ["a", "b", "a"], read) == [1, 2, 1]
    assert cache.values("view", ["b", "c"], read) == [2, None]
    assert asked == [["a", "b"], ["c"]]  # only what was not read yet
    writer.execute("UPDATE t SET v = 5 WHERE k = 'a'")
    writer.commit()
    assert cache.values("view", ["a", "b"], read) == [5, 2]
    assert asked[-1] == ["a", "b"]
    assert UnchangedReads(None).values("view", ["a"], read) == [5] and asked[-1] == ["a"]  # no file: always read
