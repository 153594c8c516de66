"""Two replicas pushing events of one customer at the same moment: each push reads the customer's latest values,
combines them with its events and writes them back, so without one lock among the replicas the second write
would carry what its replica read before the first landed, and the first event's change would be lost.

Each replica here is a `RealtimeFeatures` of its own over a Feast store object of its own (as two service
processes have), on one SQLite file or one Redis; its pushes start together at a barrier."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from features.store import open_store
from sendwise.ingest.appended import CheckedEvents, check_events
from sendwise.settings import Settings
from serving.realtime import ACTIVITY_VIEW, PushLock, RealtimeFeatures
from tests.conftest import PipelineHome, home_with_own_decision_log

pytestmark = pytest.mark.integration
DB = 13  # a db of the session's Redis of this module's own
ROUNDS = 12
PURCHASED = "2026-12-01T10:00:00Z"
VIEWED = "2026-12-01T11:00:00Z"


@pytest.fixture(params=["sqlite", "redis"])
def replicas(
    request: pytest.FixtureRequest, pipeline_home: PipelineHome, tmp_path: Path, redis_url: str
) -> Iterator[tuple[Settings, list[RealtimeFeatures]]]:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    clients: list[redis.Redis | None] = [None, None]
    if request.param == "redis":
        url = f"{redis_url}/{DB}"
        redis.Redis.from_url(url).flushdb()
        settings = settings.model_copy(update={"online_store": "redis", "redis_url": url})
        clients = [redis.Redis.from_url(url), redis.Redis.from_url(url)]
    yield settings, [RealtimeFeatures(open_store(settings), client) for client in clients]
    if request.param == "redis":
        redis.Redis.from_url(f"{redis_url}/{DB}").flushdb()


def _site_event(customer: str, event: str, category: str, at: str) -> dict[str, object]:
    return {"table": "site_events", "customer_id": customer, "event": event, "category": category, "occurred_at": at}


def _push_at(
    replica: RealtimeFeatures, checked: CheckedEvents, barrier: threading.Barrier, failures: list[BaseException]
) -> None:
    barrier.wait()
    try:
        replica.push(checked)
    except BaseException as error:  # noqa: BLE001 - reported by the test's assertion
        failures.append(error)


def test_pushes_of_one_customer_on_two_replicas_at_once_both_land(
    replicas: tuple[Settings, list[RealtimeFeatures]],
) -> None:
    settings, (one, other) = replicas
    assert isinstance(one.lock, PushLock) and (one.lock.path is not None or one.lock.client is not None)
    customers = [f"race-{k:03d}" for k in range(ROUNDS)]
    for customer in customers:
        purchase = check_events([_site_event(customer, "purchase", "garden", PURCHASED) | {"value": 30.0}], settings)
        view = check_events([_site_event(customer, "product_view", "books", VIEWED)], settings)
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=_push_at, args=(replica, checked, barrier, failures))
            for replica, checked in ((one, purchase), (other, view))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
    read = one.read(ACTIVITY_VIEW, customers, ("last_purchase_category", "last_viewed_category", "last_session_ts"))
    read = read.set_index("customer_id").loc[customers]
    # Both events in every customer's values: the purchase's category, and the later view's.
    assert read["last_purchase_category"].tolist() == ["garden"] * ROUNDS
    assert read["last_viewed_category"].tolist() == ["books"] * ROUNDS
    assert read["last_session_ts"].tolist() == [pd.Timestamp(VIEWED).timestamp()] * ROUNDS


def test_an_older_event_pushed_after_a_later_one_still_lands(
    replicas: tuple[Settings, list[RealtimeFeatures]],
) -> None:
    """A purchase reported after a later visit: the customer's state keeps the visit's time, which the stored row
    has already; Feast's Redis store skips a write that is not newer, so the row goes a microsecond after it."""
    settings, (one, other) = replicas
    customer = "late-purchase"
    other.push(check_events([_site_event(customer, "product_view", "books", VIEWED)], settings))
    one.push(check_events([_site_event(customer, "purchase", "garden", PURCHASED) | {"value": 30.0}], settings))
    read = other.read(ACTIVITY_VIEW, [customer], ("last_purchase_category", "last_viewed_category", "last_purchase_ts"))
    assert read["last_purchase_category"].tolist() == ["garden"]
    assert read["last_viewed_category"].tolist() == ["books"]
    assert read["last_purchase_ts"].tolist() == [pd.Timestamp(PURCHASED).timestamp()]
    # the row's time: the visit's, or on Redis a microsecond after it (SQLite's store gives it back without it)
    assert pd.Timestamp(VIEWED) <= read["event_timestamp"][0] <= pd.Timestamp(VIEWED) + pd.Timedelta(microseconds=1)
