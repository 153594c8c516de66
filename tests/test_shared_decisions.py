"""Replicas on one Redis answer any request the same: a frequency cap or a no-repeat rule decided by one is
enforced by the other, either renders the other's decision by its id, the ESP's sends loaded into Redis count
once, and erasure leaves no key naming the customer. Two engines in one process on the small world's champions,
then two real `bentoml serve` processes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import ExitStack, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig

from features.labels import message_sends
from features.store import materialize, open_store
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.decision_log import log_files, read_entries
from serving.engine import Engine
from serving.errors import UnknownDecision
from serving.forget import forget_customers
from serving.history_store import decision_key, load_raw_history
from serving.schemas import DecideRequest, Recipient, RenderRequest
from tests.conftest import PipelineHome, home_with_own_decision_log
from tests.served import bentoml_serve
from tests.test_shared_history import every_key

DB = 8
TOKEN = "replicas-token"
UNKNOWN = "d-" + "0" * 32


@pytest.fixture(scope="module")
def sends(pipeline_home: PipelineHome) -> pd.DataFrame:
    events = load_table(pipeline_home.settings, "email_events")
    assert events is not None
    return message_sends(events)


@pytest.fixture(scope="module")
def data_end(sends: pd.DataFrame) -> datetime:
    return pd.Timestamp(sends["send_at"].max()).ceil("h").to_pydatetime()


@pytest.fixture(scope="module")
def sendable(pipeline_home: PipelineHome, customers: pd.DataFrame) -> list[str]:
    """Customers who may be sent email: consent, and no unsubscribe, complaint or hard bounce."""
    events = load_table(pipeline_home.settings, "email_events")
    assert events is not None
    stopped = events["event"].isin(["unsubscribe", "complaint"])
    stopped |= (events["event"] == "bounce") & (events["bounce_type"] == "hard")
    consented = set(customers.loc[customers["consent_email"], "customer_id"])
    return sorted(consented - set(events.loc[stopped, "customer_id"]))


def _redis_home(source: Settings, home: Path, url: str) -> Settings:
    """A copy of `source`'s home on Redis db `url` (emptied), with the raw store's history loaded into it."""
    redis.Redis.from_url(url).flushdb()
    settings = home_with_own_decision_log(source, home).model_copy(update={"online_store": "redis", "redis_url": url})
    load_raw_history(settings, progress=False)
    return settings


@pytest.fixture
def replicas(loaded_engine: Engine, pipeline_home: PipelineHome, tmp_path: Path, redis_url: str) -> list[Engine]:
    """Two engines of the small world's champions sharing one Redis and one home."""
    settings = _redis_home(pipeline_home.settings, tmp_path / "home", f"{redis_url}/{DB}")
    return [loaded_engine.on_home(settings), loaded_engine.on_home(settings)]


def _decide(engine: Engine, ids: list[str], start: datetime, **kwargs: object):  # type: ignore[no-untyped-def]
    request = DecideRequest(recipients=[Recipient(customer_id=i) for i in ids], window_start=start, **kwargs)
    return engine.decide(request).decisions


def test_a_cap_decided_by_one_replica_is_enforced_by_the_other(
    replicas: list[Engine], engine: Engine, sends: pd.DataFrame, data_end: datetime, sendable: list[str]
) -> None:
    a, b = replicas
    recent = sends[sends["send_at"] >= pd.Timestamp(data_end) - pd.Timedelta(days=7)]
    counts = recent.groupby("customer_id").size()
    counts = counts[counts.index.isin(sendable)].sort_values(ascending=False)
    busy, busy_count = str(counts.index[0]), int(counts.iloc[0])
    assert busy_count >= 3
    cap = {"frequency_cap": {"emails": busy_count, "days": 7}}
    (blocked,) = _decide(b, [busy], data_end, constraints=cap)
    assert blocked.reasons == [  # the ESP's sends, from Redis, counted once
        f"frequency cap reached: {busy_count} emails in the 7 days before the window ({busy_count} sent per "
        f"the ESP's events, 0 decided by sendwise since they end), cap {busy_count} in 7 days"
    ]
    checked = [c for c in sendable if c in counts.index][:200]  # every count as the one-machine history has it
    window = {"constraints": {"frequency_cap": {"emails": 2, "days": 7}}}
    assert [d.reasons for d in _decide(b, checked, data_end, **window)] == [
        d.reasons for d in _decide(engine, checked, data_end, **window)
    ]

    candidate = min(set(sendable) - set(recent["customer_id"]))
    first_window = data_end + timedelta(days=1)
    (first,) = _decide(a, [candidate], first_window, window_hours=6)
    assert first.send
    later = first_window + timedelta(days=2)
    (capped,) = _decide(b, [candidate], later, constraints={"frequency_cap": {"emails": 1, "days": 7}})
    assert not capped.send
    assert capped.reasons == [
        "frequency cap reached: 1 emails in the 7 days before the window (0 sent per the ESP's events, 1 decided "
        "by sendwise since they end), cap 1 in 7 days"
    ]
    (before,) = _decide(b, [candidate], first_window, constraints={"frequency_cap": {"emails": 1, "days": 7}})
    assert before.send  # the look-back ends where the window starts


def test_an_offer_one_replica_sent_is_not_repeated_by_the_other(
    replicas: list[Engine], engine: Engine, pipeline_home: PipelineHome, data_end: datetime, sendable: list[str]
) -> None:
    a, b = replicas
    events = load_table(pipeline_home.settings, "offer_events")
    assert events is not None
    exposed = events[(events["event"] == "exposed") & (events["occurred_at"] >= data_end - timedelta(days=14))]
    ids = [c for c in sendable if c in set(exposed["customer_id"])][:60]
    rule = {"k_offers": 50, "constraints": {"no_repeat_offer_days": 14}}
    shared = _decide(b, ids, data_end, **rule)
    one_machine = _decide(engine, ids, data_end, **rule)  # the raw exposures, from Redis, as the raw store has them
    assert [[o.offer_id for o in d.offers] for d in shared] == [[o.offer_id for o in d.offers] for d in one_machine]
    assert sum(any(r.startswith("left out, shown") for r in d.reasons) for d in shared) >= 20

    fresh = data_end + timedelta(days=3)
    decided = next(d for d in _decide(a, ids[:20], fresh, window_hours=6) if d.send and d.offers[0].kind != "control")
    hero = decided.offers[0].offer_id
    (later,) = _decide(b, [decided.customer_id], fresh + timedelta(days=1), **rule)
    assert hero not in {o.offer_id for o in later.offers}
    assert any(r.startswith("left out, shown") and hero in r for r in later.reasons)


def test_either_replica_renders_the_others_decision(
    replicas: list[Engine], data_end: datetime, sendable: list[str]
) -> None:
    a, b = replicas
    decisions = _decide(a, sendable[:3], data_end + timedelta(days=1))
    sent = next(d for d in decisions if d.send)
    there = b.render(RenderRequest(decision_id=sent.decision_id))
    here = a.render(RenderRequest(decision_id=sent.decision_id))
    assert there.send and there.customer_id == sent.customer_id and there.send_at == sent.send_at
    assert there.html == here.html and there.subject == here.subject
    assert f"sw={sent.decision_id}" in there.html
    assert [m.name for m in there.modules] == sent.modules

    with pytest.raises(UnknownDecision, match=f"no decision {UNKNOWN} in this home's decision log"):
        b.render(RenderRequest(decision_id=UNKNOWN))
    client = redis.Redis.from_url(a.settings.redis_url)
    key = decision_key(sent.decision_id)
    entry = client.get(key)
    assert entry is not None
    made = datetime.now(UTC) - timedelta(days=a.settings.render_days, hours=1)
    old = entry.replace(entry.split(b'"decided_at":"')[1].split(b'"')[0], made.isoformat().encode())
    client.set(key, old, keepttl=True)
    with pytest.raises(
        UnknownDecision, match=f"decision {sent.decision_id} expired: it was made {made:%Y-%m-%d %H:%M}"
    ):
        b.render(RenderRequest(decision_id=sent.decision_id))
    client.delete(key)  # what its TTL does a day later
    with pytest.raises(UnknownDecision, match="no decision"):
        b.render(RenderRequest(decision_id=sent.decision_id))


def _feast_redis(settings: Settings) -> redis.Redis:
    """The client Feast writes the home's online store with (its own connection settings)."""
    store = open_store(settings)
    config = store.config.online_store
    assert isinstance(config, RedisOnlineStoreConfig)
    return RedisOnlineStore()._get_client(config)


def _materialize(settings: Settings, as_of: datetime) -> redis.Redis:
    """Feast's online store of `settings`' home materialized into its Redis; Feast's client."""
    store = open_store(settings)
    client = _feast_redis(settings)
    with redirect_stdout(io.StringIO()):
        materialize(store, as_of)
    return client


def test_erasure_leaves_no_redis_key_naming_the_customer(
    replicas: list[Engine], data_end: datetime, sendable: list[str]
) -> None:
    a, b = replicas
    feast = _materialize(a.settings, data_end)
    gone, kept = sendable[0], sendable[1]
    _decide(a, [gone, kept], data_end + timedelta(days=1), window_hours=6)
    _decide(b, [gone, kept], data_end + timedelta(days=2), window_hours=6)
    ours = redis.Redis.from_url(a.settings.redis_url)
    clients = [ours, feast]
    needle = gone.encode()

    def naming(client: redis.Redis) -> list[str]:
        return [k for k, v in every_key(client).items() if gone in k or needle in v or needle in k.encode()]

    def feast_keys(client: redis.Redis) -> list[bytes]:
        return [k for k in client.scan_iter(count=1_000) if needle in k]

    assert feast_keys(feast) and naming(ours)  # Feast's row of the customer, and the history and decisions
    report = forget_customers(a.settings, [gone], a.log)
    assert report.online_rows == 1 and report.decisions == 2 and report.rows["redis/history"] >= 3
    assert not feast_keys(feast) and not [n for c in clients for n in naming(c)]
    assert all(ours.ttl(k) > 0 for k in ours.scan_iter(match="sendwise:*", count=1_000))  # Feast's keys have none
    assert any(kept.encode() in k for k in feast.scan_iter(count=1_000))  # the others stay
    assert [e["customer_id"] for p in log_files(a.settings.decisions_dir) for e, _ in read_entries(p)] == [kept, kept]


@pytest.fixture(scope="module")
def served(
    pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[Settings, list[str]]]:
    """Two `bentoml serve` processes on one home and one Redis (Feast's online store materialized into it)."""
    settings = _redis_home(
        pipeline_home.settings, tmp_path_factory.mktemp("replicas") / "home", f"{redis_url}/{DB + 1}"
    )
    events = load_table(settings, "email_events")
    assert events is not None
    _materialize(settings, pd.Timestamp(events["occurred_at"].max()).to_pydatetime())
    environment = {"SENDWISE_ONLINE_STORE": "redis", "SENDWISE_REDIS_URL": settings.redis_url}
    with ExitStack() as stack:
        urls = [stack.enter_context(bentoml_serve(settings, TOKEN, **environment)) for _ in range(2)]
        yield settings, urls


def _post(url: str, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)


@pytest.mark.e2e
def test_two_served_replicas_share_caps_no_repeat_and_render(
    served: tuple[Settings, list[str]], data_end: datetime, sendable: list[str]
) -> None:
    settings, (a, b) = served
    first_window = data_end + timedelta(days=1)
    ids = sendable[:20]
    recipients = [{"customer_id": c} for c in ids]
    decided = _post(a, "/v1/decide", {"recipients": recipients, "window_start": f"{first_window:%Y-%m-%dT%H:%M:%SZ}"})
    assert decided.status_code == 200, decided.text
    sent = next(d for d in decided.json()["decisions"] if d["send"] and d["offers"][0]["kind"] != "control")
    later = first_window + timedelta(days=2)
    body = {
        "recipients": [{"customer_id": sent["customer_id"]}],
        "window_start": f"{later:%Y-%m-%dT%H:%M:%SZ}",
        "k_offers": 50,
    }
    capped = _post(b, "/v1/decide", {**body, "constraints": {"frequency_cap": {"emails": 1, "days": 7}}})
    assert capped.status_code == 200, capped.text
    (answer,) = capped.json()["decisions"]
    assert not answer["send"] and answer["reasons"][0].startswith("frequency cap reached: ")
    assert "1 decided by sendwise since they end), cap 1 in 7 days" in answer["reasons"][0]
    fresh = _post(b, "/v1/decide", {**body, "constraints": {"no_repeat_offer_days": 14}})
    (again,) = fresh.json()["decisions"]
    hero = sent["offers"][0]["offer_id"]
    assert again["send"] and hero not in {o["offer_id"] for o in again["offers"]}

    rendered = _post(b, "/v1/render", {"decision_id": sent["decision_id"]})
    assert rendered.status_code == 200, rendered.text
    page = rendered.json()
    assert page["customer_id"] == sent["customer_id"] and page["send_at"] == sent["send_at"]
    assert f"sw={sent['decision_id']}" in page["html"]
    unknown = _post(a, "/v1/render", {"decision_id": UNKNOWN})
    assert unknown.status_code == 404 and f"no decision {UNKNOWN}" in unknown.json()["message"]

    writers = {p.name.split(".")[1] for p in log_files(settings.decisions_dir)}
    assert len(writers) == 2  # each process appends to parts of its own
    logged = [e["decision_id"] for p in log_files(settings.decisions_dir) for e, _ in read_entries(p)]
    assert sorted(logged) == sorted(
        [d["decision_id"] for d in decided.json()["decisions"]] + [answer["decision_id"], again["decision_id"]]
    )
