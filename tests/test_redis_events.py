"""Stops pushed through `POST /v1/events` when the online store is Redis: each batch reads its customers' email
state in the same pipelined HMGET as their features (`serving.redis_features`), with the answers Feast's own
`online_read` gives, and an unsubscribe sent to one replica stops the next decision on another."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
import redis

from sendwise.settings import Settings
from serving.engine import Engine
from serving.reasons import NOT_ELIGIBLE
from serving.redis_features import RedisFeatures
from serving.schemas import EventsRequest, Recipient
from tests.conftest import PipelineHome, materialized_in_redis
from tests.served import bentoml_serve
from tests.test_realtime import decide, sendable_customers, stop_event

pytestmark = pytest.mark.integration
DB = 10  # a db of the session's Redis of this module's own
TOKEN = "redis-events-token"


@pytest.fixture(scope="module")
def redis_settings(
    pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Settings]:
    url = f"{redis_url}/{DB}"
    redis.Redis.from_url(url).flushdb()
    yield materialized_in_redis(pipeline_home.settings, tmp_path_factory.mktemp("redis-events") / "home", url)
    redis.Redis.from_url(url).flushdb()


def test_a_pushed_stop_stops_the_next_decision_without_feasts_online_read(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.load(redis_settings, log_decisions=False)
    assert isinstance(engine.online, RedisFeatures)
    unsubscribing, complaining, bouncing, soft, _staying = ids = sendable_customers(redis_settings, 5)
    assert [d["send"] for d in decide(engine, ids)] == [True] * 5

    answer = engine.events(
        EventsRequest(
            events=[
                stop_event(unsubscribing, "unsubscribe"),
                stop_event(complaining, "spamreport"),
                stop_event(bouncing, "bounce", bounce_type="hard"),
                stop_event(soft, "bounce", bounce_type="soft"),
            ]
        )
    )
    assert answer.pushed == 3 and answer.status == "ok"

    through_feast = engine.realtime.stopped([*ids, "nobody-1"])  # Feast's online_read on the same Redis
    assert through_feast.tolist() == [True, True, True, False, False, False]
    recipients = [Recipient(customer_id=c) for c in [*ids, "nobody-1", unsubscribing]]
    read = engine.online.for_recipients(recipients)
    assert read.stopped is not None and read.stopped.tolist() == [True, True, True, False, False, False, True]

    def no_feast_read(ids: list[str]) -> np.ndarray:
        raise AssertionError("a Redis decision read the email state through Feast's online_read")

    monkeypatch.setattr(engine.realtime, "stopped", no_feast_read)
    decisions = decide(engine, ids)
    assert [d["send"] for d in decisions] == [False, False, False, True, True]
    assert all(NOT_ELIGIBLE in d["reasons"] and d["send_at"] is None for d in decisions[:3])


@pytest.mark.e2e
def test_an_unsubscribe_posted_to_one_redis_replica_stops_the_next_decision_on_another(
    redis_settings: Settings,
) -> None:
    (customer,) = sendable_customers(redis_settings, 6)[5:]
    environment = {"SENDWISE_ONLINE_STORE": "redis", "SENDWISE_REDIS_URL": redis_settings.redis_url}
    body = {"recipients": [{"customer_id": customer}], "campaign": {"kind": "newsletter"}, "explore_share": 0.0}
    event = stop_event(customer, "unsubscribe")
    with ExitStack() as stack:
        first, second = (stack.enter_context(bentoml_serve(redis_settings, TOKEN, **environment)) for _ in range(2))
        client = stack.enter_context(httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120))
        (before,) = client.post(f"{second}/v1/decide", json=body).json()["decisions"]
        assert before["send"] is True, before
        pushed = client.post(f"{first}/v1/events", json={"events": [event]})
        assert pushed.status_code == 202 and pushed.json()["pushed"] == 1, pushed.text
        decided = client.post(f"{second}/v1/decide", json=body)
        assert decided.status_code == 200 and decided.json()["status"] == "ok", decided.text
        (after,) = decided.json()["decisions"]
        assert after["send"] is False and after["send_at"] is None and after["offers"] == [], after
        assert NOT_ELIGIBLE in after["reasons"]
