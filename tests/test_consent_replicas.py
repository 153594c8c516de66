"""Customers rows pushed through one replica of the real `bentoml serve` are honoured by the very next decision
of another, on SQLite and on Redis; on Redis each batch reads the pushed consent in the same HMGET as its
features, with the values Feast's own `online_read` gives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from sendwise.cli import app
from sendwise.settings import Settings
from serving.engine import Engine
from serving.reasons import NO_CONSENT, NO_PROFILING
from serving.redis_features import RedisFeatures
from serving.schemas import EventsRequest, Recipient
from tests.browser import artifacts_dir
from tests.conftest import PipelineHome, home_with_own_decision_log, materialized_in_redis
from tests.served import bentoml_serve
from tests.test_consent_decisions import consent_row, customers_by_consent, decide, ids_of

pytestmark = pytest.mark.integration
DB = 12  # a db of the session's Redis of this module's own
TOKEN = "consent-token"


@pytest.fixture(scope="module")
def redis_settings(
    pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Settings]:
    url = f"{redis_url}/{DB}"
    redis.Redis.from_url(url).flushdb()
    yield materialized_in_redis(pipeline_home.settings, tmp_path_factory.mktemp("redis-consent") / "home", url)
    redis.Redis.from_url(url).flushdb()


def test_redis_reads_pushed_consent_with_the_features(redis_settings: Settings) -> None:
    engine = Engine.load(redis_settings, log_decisions=False)
    assert isinstance(engine.online, RedisFeatures)
    profiled, _, _ = customers_by_consent(redis_settings)
    withdrawing, unprofiling, staying = profiled[:3]
    newcomer = "redis-newcomer"
    assert [d["send"] for d in decide(engine, ids_of(withdrawing, unprofiling, staying))] == [True] * 3
    answer = engine.events(
        EventsRequest(
            events=[
                consent_row(withdrawing, False),
                consent_row(unprofiling, True, profiling=False),
                consent_row(newcomer, False, profiling=False),
            ]
        )
    )
    assert answer.pushed == 3 and answer.status == "ok"

    ids = [withdrawing, unprofiling, staying, newcomer, withdrawing]
    through_feast = engine.realtime.email_state(ids)  # Feast's online_read on the same Redis
    read = engine.online.for_recipients([Recipient(customer_id=c) for c in ids])
    assert read.consent.tolist() == [False, True, True, False, False]
    assert read.profiled.tolist() == [True, False, True, False, True]  # the newcomer: unknown, so not profiled
    assert read.withdrawn is not None and read.withdrawn.tolist() == [False, True, False, False, False]
    nan = -1.0  # NaN compared as a number
    assert pd.Series(through_feast.consent_email).fillna(nan).tolist() == [0.0, 1.0, nan, 0.0, 0.0]
    assert pd.Series(through_feast.consent_profiling).fillna(nan).tolist() == [1.0, 0.0, nan, 0.0, 1.0]

    decisions = decide(engine, [*ids_of(withdrawing, unprofiling, staying), {"customer_id": newcomer}])
    assert [d["send"] for d in decisions] == [False, True, True, False]
    assert decisions[0]["reasons"][0] == NO_CONSENT and decisions[3]["reasons"][0] == NO_CONSENT
    assert NO_PROFILING in decisions[1]["reasons"] and NO_PROFILING not in decisions[2]["reasons"]
    # and again: a profiling withdrawal never reads (nor keeps) offer scores made from the customer's own features
    again = decide(engine, ids_of(unprofiling))[0]
    assert [o["conversion_probability"] for o in again["offers"]] == pytest.approx(
        [o["conversion_probability"] for o in decisions[1]["offers"]]
    )


@pytest.mark.e2e
def test_a_customers_row_pushed_through_one_sqlite_replica_stops_the_next_decision_on_another(
    pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """`sendwise push customers.csv` to one replica; the next decision of another replica on the same home."""
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("consent-http") / "home")
    profiled, refused, _ = customers_by_consent(settings)
    withdrawing, unprofiling = profiled[:2]
    path = tmp_path / "customers.csv"
    pd.DataFrame(
        {
            "customer_id": [withdrawing, unprofiling],
            "consent_email": ["false", "true"],
            "consent_profiling": ["true", "false"],
            "updated_at": ["2026-12-01T10:00:00Z"] * 2,
        }
    ).to_csv(path, index=False)
    body = {
        "recipients": [{"customer_id": c} for c in (withdrawing, unprofiling, refused[0])],
        "campaign": {"kind": "promotional"},
        "explore_share": 0.0,
    }
    with ExitStack() as stack:
        first, second = (stack.enter_context(bentoml_serve(settings, TOKEN)) for _ in range(2))
        client = stack.enter_context(httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120))
        before = client.post(f"{second}/v1/decide", json=body).json()["decisions"]
        assert [d["send"] for d in before] == [True, True, False], before
        env = {"SENDWISE_HOME": str(settings.home), "SENDWISE_API_TOKEN": TOKEN}
        result = CliRunner().invoke(app, ["push", str(path), "--url", first], env=env)
        assert result.exit_code == 0, result.output
        assert "customers: 2 rows sent, 2 appended" in result.output
        after = client.post(f"{second}/v1/decide", json=body).json()["decisions"]
        # the time from sending a withdrawal to one replica to the other's changed decision (recorded, no bar)
        third = {**body, "recipients": [{"customer_id": profiled[2]}]}
        assert client.post(f"{second}/v1/decide", json=third).json()["decisions"][0]["send"] is True
        started = time.perf_counter()
        pushed = client.post(f"{first}/v1/events", json={"events": [consent_row(profiled[2], False)]})
        changed = client.post(f"{second}/v1/decide", json=third).json()["decisions"][0]
        seconds = time.perf_counter() - started
        assert pushed.status_code == 202 and changed["send"] is False, changed
    print(f"consent withdrawal -> changed decision on another replica: {seconds:.3f} s")
    artifacts_dir().mkdir(parents=True, exist_ok=True)
    measured = {"withdrawal_to_changed_decision_seconds": round(seconds, 4)}
    (artifacts_dir() / "consent_latency.json").write_text(json.dumps(measured, indent=2) + "\n")
    assert [d["send"] for d in after] == [False, True, False], after
    assert after[0]["reasons"] == after[2]["reasons"] and after[0]["reasons"][0] == NO_CONSENT
    assert after[0]["offers"] == [] and after[0]["send_at"] is None
    assert NO_PROFILING in after[1]["reasons"] and NO_PROFILING not in before[1]["reasons"]


@pytest.mark.e2e
def test_a_withdrawal_posted_to_one_redis_replica_stops_the_next_decision_on_another(
    redis_settings: Settings,
) -> None:
    profiled, _, _ = customers_by_consent(redis_settings)
    customer = profiled[5]
    environment = {"SENDWISE_ONLINE_STORE": "redis", "SENDWISE_REDIS_URL": redis_settings.redis_url}
    body = {"recipients": [{"customer_id": customer}], "campaign": {"kind": "newsletter"}, "explore_share": 0.0}
    with ExitStack() as stack:
        first, second = (stack.enter_context(bentoml_serve(redis_settings, TOKEN, **environment)) for _ in range(2))
        client = stack.enter_context(httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120))
        (before,) = client.post(f"{second}/v1/decide", json=body).json()["decisions"]
        assert before["send"] is True, before
        pushed = client.post(f"{first}/v1/events", json={"events": [consent_row(customer, False)]})
        assert pushed.status_code == 202 and pushed.json()["appended"] == {"customers": 1}, pushed.text
        assert pushed.json()["pushed"] == 1
        (after,) = client.post(f"{second}/v1/decide", json=body).json()["decisions"]
        assert after["send"] is False and after["send_at"] is None and after["offers"] == [], after
        assert after["reasons"][0] == NO_CONSENT
