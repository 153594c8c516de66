"""Online features from Redis (`SENDWISE_ONLINE_STORE=redis`): Feast materializes into the URL's db, each batch
reads its customers from there, and the answers are those of the SQLite mode's snapshot; a Redis that goes away
degrades the answers (never fails them) until it is back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import yaml

from features.store import feature_store_yaml, redis_connection_string
from features.transform import open_design
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.errors import PastDecisionsUnavailable
from serving.schemas import Campaign, DecideRequest, Recipient, RenderRequest
from tests.conftest import REDIS_DB, materialized_in_redis

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 5, 3, tzinfo=UTC)


def test_the_url_gives_feast_its_db_password_and_tls() -> None:
    assert redis_connection_string("redis://:s3cret@cache.internal:6380/5") == (
        "cache.internal:6380,db=5,password=s3cret,socket_connect_timeout=2,socket_timeout=10"
    )
    assert redis_connection_string("rediss://app:pw@cache:6379") == (
        "cache:6379,db=0,username=app,password=pw,ssl=true,socket_connect_timeout=2,socket_timeout=10"
    )
    settings = Settings(home=Path("/tmp/nowhere"), online_store="redis", redis_url="redis://10.0.0.7:6379/3")
    online = yaml.safe_load(feature_store_yaml(settings))["online_store"]
    assert online == {"type": "redis", "connection_string": redis_connection_string("redis://10.0.0.7:6379/3")}
    assert online["connection_string"].startswith("10.0.0.7:6379,db=3,")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://cache:6379/0", "expected redis://host:port/db"),
        ("redis://cache:6379/cache", "the db number after the port must be a whole number, not 'cache'"),
        ("redis://cache:port/1", "the port is not a number"),
        ("redis://:a,b@cache:6379/1", "cannot carry a ',' in the user name or password"),
    ],
)
def test_a_bad_redis_url_is_refused_naming_the_setting(url: str, expected: str) -> None:
    with pytest.raises(ValueError, match="SENDWISE_REDIS_URL") as error:
        redis_connection_string(url)
    assert expected in str(error.value)


def test_materialize_writes_into_the_db_of_the_url(redis_home: Settings, redis_url: str) -> None:
    customers = load_table(redis_home, "customers")
    offers = load_table(redis_home, "offers")
    assert customers is not None and offers is not None
    keys = redis.Redis.from_url(f"{redis_url}/{REDIS_DB}").scan_iter(count=10_000)
    feast_keys = [k for k in keys if not k.startswith(b"sendwise:")]  # not the past decisions' keys beside them
    assert len(feast_keys) == customers["customer_id"].nunique() + offers["offer_id"].nunique()  # a hash per entity
    assert redis.Redis.from_url(f"{redis_url}/0").dbsize() == 0


@pytest.fixture(scope="module")
def redis_engine(redis_home: Settings):  # type: ignore[no-untyped-def]
    from serving.engine import Engine
    from serving.redis_features import RedisFeatures

    engine = Engine.load(redis_home)
    assert isinstance(engine.online, RedisFeatures) and engine.online.state is None  # no snapshot held
    return engine


def _ids(settings: Settings, n: int) -> list[str]:
    customers = load_table(settings, "customers")
    assert customers is not None
    return customers["customer_id"].sample(n=n, random_state=11).tolist()


@pytest.mark.parametrize("chunk", [1_000, 37])  # read in one round trip, or in chunks that end mid-way
def test_redis_rows_are_the_snapshots_rows(  # type: ignore[no-untyped-def]
    engine, redis_engine, pipeline_home, chunk, monkeypatch
) -> None:
    monkeypatch.setattr("serving.redis_features.READ_CHUNK", chunk)
    ids = [*_ids(pipeline_home.settings, 400), "nobody-1", "nobody-2"]
    recipients = [Recipient(customer_id=c) for c in ids]
    ours, theirs = redis_engine.online.for_recipients(recipients), engine.online.for_recipients(recipients)
    assert not ours.degraded and ours.known.sum() >= 380 and not ours.known[-2:].any()
    for name in ("known", "profiled", "consent", "eligible", "any_views"):
        assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
    a, b = ours.matrix, theirs.matrix
    assert np.array_equal(a.scalars, b.scalars, equal_nan=True)
    for name in a.profiles:
        assert np.array_equal(a.profiles[name], b.profiles[name]), name
    assert a.timezone.tolist() == b.timezone.tolist() and a.interests == b.interests
    assert a.attributes.keys() == b.attributes.keys() and a.attributes
    for name in a.attributes:
        assert pd.Series(a.attributes[name]).equals(pd.Series(b.attributes[name])), name
    views = {c: dict(zip(n, v, strict=True)) for c, n, v in zip(ids, a.category_names, a.category_views, strict=True)}
    assert views == {
        c: dict(zip(n, v, strict=True)) for c, n, v in zip(ids, b.category_names, b.category_views, strict=True)
    }
    assert sum(bool(v) for v in views.values()) > 100  # product views were compared
    rows = np.arange(len(ids))
    n = len(ids)
    stamps, kinds, topics = (
        pd.Series([pd.Timestamp(START)] * n),
        np.full(n, "promotional"),
        np.full(n, "outdoor", dtype=object),
    )
    pd.testing.assert_frame_equal(
        open_design(a, rows, stamps, kinds, topics), open_design(b, rows, stamps, kinds, topics)
    )


@pytest.mark.parametrize("chunk", [1_000, 37])
def test_decisions_from_redis_equal_those_from_the_snapshot(  # type: ignore[no-untyped-def]
    engine, redis_engine, pipeline_home, chunk, monkeypatch
) -> None:
    monkeypatch.setattr("serving.redis_features.READ_CHUNK", chunk)
    ids = [*_ids(pipeline_home.settings, 300), "nobody-1"]
    request = DecideRequest(
        recipients=[Recipient(customer_id=c) for c in ids[:-1]]
        + [Recipient(customer_id=ids[-1], timezone="Asia/Tokyo", interests=["books"])],
        campaign=Campaign(kind="promotional", topic="outdoor"),
        window_start=START,
        explore_share=0.0,
        k_offers=5,
    )
    ours, theirs = redis_engine.decide_payload(request), engine.decide_payload(request)
    assert ours["status"] == theirs["status"] == "ok"
    assert _without_ids(ours["decisions"]) == _without_ids(theirs["decisions"])
    assert sum(d["send"] for d in ours["decisions"]) > 200 and any(d["offers"] for d in ours["decisions"])


def _without_ids(decisions: object) -> list[dict[str, object]]:
    assert isinstance(decisions, list)
    return [{k: v for k, v in d.items() if k != "decision_id"} for d in decisions]


def test_redis_gone_degrades_answers_and_its_return_recovers_them(pipeline_home, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from serving.engine import Engine
    from serving.http_app import status_metrics
    from tests.redis_server import redis_server
    from tests.served import free_port

    port = free_port()
    ids = _ids(pipeline_home.settings, 60)
    request = DecideRequest(recipients=[Recipient(customer_id=c) for c in ids], window_start=START, explore_share=0.0)
    with redis_server(port) as url:
        settings = materialized_in_redis(pipeline_home.settings, tmp_path / "home", f"{url}/2")
        for key, value in settings.library_environment().items():
            monkeypatch.setenv(key, value)
        engine = Engine.load(settings)
        healthy = engine.decide(request)
        assert healthy.status == "ok" and not any(d.cold_start for d in healthy.decisions)

    gone = engine.decide(request)  # the server is stopped
    assert gone.status == "degraded"
    features_reason, past_reason = gone.reasons
    assert features_reason.startswith(
        f"online features unavailable: the Redis online store at 127.0.0.1:{port}/2 cannot be read"
    )
    assert past_reason.startswith(f"past decisions unavailable: the Redis at 127.0.0.1:{port}/2 cannot be reached")
    assert all(d.cold_start for d in gone.decisions)  # population priors: nothing is known of anyone
    assert engine.status()["status"] == "degraded" and engine.status()["reasons"] == gone.reasons
    with pytest.raises(PastDecisionsUnavailable, match=rf"past decisions \(127\.0\.0\.1:{port}/2\) cannot be reached"):
        engine.render(RenderRequest(decision_id=healthy.decisions[0].decision_id))
    assert PastDecisionsUnavailable.status == 503
    assert "sendwise_degraded 1" in status_metrics(engine.status(), engine.model_versions()).splitlines()

    with redis_server(port) as url:  # back, empty: materialized again
        materialized_in_redis(pipeline_home.settings, tmp_path / "again", f"{url}/2")
        back = engine.decide(request)
    assert back.status == "ok" and back.reasons == [] and engine.status()["status"] == "ok"
    assert [d.model_dump(exclude={"decision_id"}) for d in back.decisions] == [
        d.model_dump(exclude={"decision_id"}) for d in healthy.decisions
    ]


def test_a_replica_starts_while_redis_is_down_and_recovers_when_it_is_back(  # type: ignore[no-untyped-def]
    engine, pipeline_home, tmp_path, monkeypatch
) -> None:
    from serving.engine import Engine
    from tests.redis_server import redis_server
    from tests.served import free_port

    port = free_port()
    ids = _ids(pipeline_home.settings, 120)
    request = DecideRequest(
        recipients=[Recipient(customer_id=c) for c in ids],
        campaign=Campaign(kind="promotional", topic="outdoor"),
        window_start=START,
        explore_share=0.0,
        k_offers=5,
    )
    with redis_server(port) as url:
        settings = materialized_in_redis(pipeline_home.settings, tmp_path / "home", f"{url}/2")
    for key, value in settings.library_environment().items():
        monkeypatch.setenv(key, value)

    replica = Engine.load(settings)  # the server is stopped: the replica starts all the same
    status = replica.status()
    assert status["status"] == "degraded" and status["models"] == engine.status()["models"]
    features_reason, offers_reason = status["reasons"]
    assert features_reason.startswith(
        f"online features unavailable: the Redis online store at 127.0.0.1:{port}/2 cannot be read (ConnectionError"
    )
    assert offers_reason.startswith(
        f"offers unavailable: their features could not be read from the Redis online store at 127.0.0.1:{port}/2"
    )
    started_with = replica.population
    down = replica.decide(request)
    assert down.status == "degraded" and features_reason in down.reasons
    assert all(d.cold_start for d in down.decisions) and not any(d.offers for d in down.decisions)

    with redis_server(port) as url:  # back (empty: materialized again)
        materialized_in_redis(pipeline_home.settings, tmp_path / "again", f"{url}/2")
        recovered_at = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        back = replica.decide_payload(request)
        assert replica.status()["status"] == "ok" and replica.status()["reasons"] == []
    assert back["status"] == "ok" and back["reasons"] == []
    # measured again, on the customers' features (it was on none at start), for the day from the hour it
    # recovered in: the healthy engine's measure for that hour, or the next where the hour turned meanwhile
    measured = replica.population
    healthy = [engine._measure_population(recovered_at + timedelta(hours=h)) for h in (0, 1)]
    assert started_with.high_value_threshold == 1.0 and measured.high_value_threshold != 1.0
    assert any(
        measured.open_probability == pytest.approx(h.open_probability, rel=1e-12)
        and measured.high_value_threshold == pytest.approx(h.high_value_threshold, rel=1e-12)
        for h in healthy
    ), (measured, healthy)
    # the same decisions, their probabilities to 12 digits (the last bits of a sum of trees may differ)
    assert _rounded(_without_ids(back["decisions"])) == _rounded(
        _without_ids(engine.decide_payload(request)["decisions"])
    )
    assert sum(bool(d["offers"]) for d in back["decisions"]) > 50


def test_a_few_customers_read_value_by_value_are_the_snapshots_rows(engine, redis_engine, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    ids = [*_ids(pipeline_home.settings, 40), "nobody-1"]
    for group in [ids[:1], ids[1:2], ids[2:9], ids[9:]]:  # a single recipient, a few merged requests
        recipients = [Recipient(customer_id=c) for c in group]
        ours, theirs = redis_engine.online.for_recipients(recipients), engine.online.for_recipients(recipients)
        assert not ours.degraded
        for name in ("known", "profiled", "consent", "eligible", "any_views"):
            assert np.array_equal(getattr(ours, name), getattr(theirs, name)), name
        n = len(group)
        rows, stamps = np.arange(n), pd.Series([pd.Timestamp(START)] * n)
        kinds, topics = np.full(n, "promotional"), np.full(n, "outdoor", dtype=object)
        pd.testing.assert_frame_equal(
            open_design(ours.matrix, rows, stamps, kinds, topics),
            open_design(theirs.matrix, rows, stamps, kinds, topics),
        )
        assert ours.matrix.category_names == theirs.matrix.category_names
    assert ours.known[:-1].all() and not ours.known[-1]


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value
