"""End to end: the real `bentoml serve` over HTTP on the small world's champions, each test on both online
stores: Feast's SQLite store (read into the engine's snapshot) and Redis (read per batch, shared by replicas)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from sendwise.raw import load_table
from sendwise.settings import Settings
from tests.conftest import SHARED, home_with_own_decision_log
from tests.served import bentoml_serve

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]
TOKEN = "e2e-test-token"
START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def service(request: pytest.FixtureRequest, pipeline_home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """`bentoml serve` on a copy of the pipeline's home: one service per online store for the module (it takes
    a minute to start), its decision log apart from every other test's."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_service")
        return
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("e2e") / "home")
    with bentoml_serve(settings, TOKEN) as url:
        yield url


def serve_on_redis(settings: Settings) -> AbstractContextManager[str]:
    """`bentoml serve` on a home whose online store is Redis, told so as a replica is: by its environment."""
    return bentoml_serve(settings, TOKEN, SENDWISE_ONLINE_STORE="redis", SENDWISE_REDIS_URL=settings.redis_url)


@pytest.fixture(scope="module")
def redis_service(redis_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bentoml serve` on a copy of the Redis home (the session Redis's db 5), its decision log its own."""
    with serve_on_redis(home_with_own_decision_log(redis_home, tmp_path_factory.mktemp("e2e-redis") / "home")) as url:
        yield url


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def test_decide_over_http_answers_values(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    consented = customers.loc[customers["consent_email"], "customer_id"].head(200).tolist()
    refused = customers.loc[~customers["consent_email"], "customer_id"].head(5).tolist()
    ids = [*consented[:100], *refused, "someone-new", *consented[100:]]
    body = {
        "recipients": [{"customer_id": i} for i in ids[:-1]]
        + [{"customer_id": ids[-1], "timezone": "Asia/Tokyo", "interests": ["books"]}],
        "campaign": {"kind": "promotional", "topic": "outdoor"},
        "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_hours": 24,
    }
    answer = httpx.post(f"{service}/v1/decide", json=body, headers=_auth(), timeout=120)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert [d["customer_id"] for d in data["decisions"]] == ids
    assert all(data["model_versions"][m] for m in ("open_propensity", "send_time", "next_best_offer"))
    for d in data["decisions"]:
        if d["customer_id"] in refused:
            assert not d["send"] and d["send_at"] is None and d["offers"] == []
            continue
        if not d["send"]:
            continue
        curve = np.array(d["hourly_open_probability"])
        assert len(curve) == 24 and (curve >= 0).all() and (curve <= 1).all()
        k = (datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")) - START) / timedelta(hours=1)
        assert k == int(k) and 0 <= k < 24
        assert d["open_probability"] == pytest.approx(curve[int(k)]) == pytest.approx(curve.max())
        assert d["offers"] and d["modules"]
    new = data["decisions"][100 + len(refused)]
    assert new["cold_start"] is True and new["send"] is True


def test_single_recipients_sent_at_once_get_what_one_batch_gets(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    """Triggered emails arrive one recipient at a time from many clients; the service decides those that arrive
    together in one call (`serving.coalesce`). Each client must get its own recipient's decision, the one a
    batch of them all gets (exploration off, so the hour is the curve's best)."""
    import asyncio

    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    ids = customers.loc[customers["consent_email"], "customer_id"].iloc[200:248].tolist()
    common = {
        "campaign": {"kind": "promotional", "topic": "outdoor"},
        "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "explore_share": 0.0,
        "k_offers": 5,
    }
    batch = httpx.post(
        f"{service}/v1/decide", json={"recipients": [{"customer_id": i} for i in ids], **common}, headers=_auth()
    )
    assert batch.status_code == 200, batch.text
    expected = {d["customer_id"]: d for d in batch.json()["decisions"]}

    async def clients() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service, headers=_auth(), timeout=60) as http:

            async def client(mine: list[str]) -> list[httpx.Response]:
                return [
                    await http.post("/v1/decide", json={"recipients": [{"customer_id": i}], **common}) for i in mine
                ]

            answers = await asyncio.gather(*(client(ids[k::8]) for k in range(8)))
        return [answer for k in range(len(ids)) for answer in [answers[k % 8][k // 8]]]

    answers = asyncio.run(clients())

    assert [a.status_code for a in answers] == [200] * len(ids)
    singles = [a.json()["decisions"] for a in answers]
    assert [len(d) for d in singles] == [1] * len(ids)
    assert [d[0]["customer_id"] for d in singles] == ids
    assert len({d[0]["decision_id"] for d in singles}) == len(ids)
    for (single,) in singles:
        alone, in_batch = single, expected[single["customer_id"]]
        assert alone["hourly_open_probability"] == pytest.approx(in_batch["hourly_open_probability"], abs=1e-12)
        assert (alone["send"], alone["send_at"], alone["modules"]) == (
            in_batch["send"],
            in_batch["send_at"],
            in_batch["modules"],
        )
        assert alone["offers"] == in_batch["offers"]


def test_render_over_http(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[3]
    answer = httpx.post(
        f"{service}/v1/render",
        json={
            "customer_id": known,
            "template": "newsletter",
            "campaign": {"kind": "newsletter", "topic": "books"},
        },
        headers=_auth(),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    email = answer.json()
    assert email["send"] and email["subject"] and "unsubscribe" in email["text"].lower()
    assert email["decision_id"].startswith("d-")
    assert "newsletter_digest" in [m["name"] for m in email["modules"]]
    assert all(m["reason"] for m in email["modules"])


def test_decide_then_render_by_decision_id_over_http(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    from urllib.parse import parse_qs, urlsplit

    from tests.test_render import Page

    customers = load_table(pipeline_home.settings, "customers")
    offers = load_table(pipeline_home.settings, "offers")
    assert customers is not None and offers is not None
    urls = {str(o): str(u) for o, u in zip(offers["offer_id"], offers["url"], strict=True) if isinstance(u, str)}
    ids = customers.loc[customers["consent_email"], "customer_id"].head(30).tolist()
    decided = httpx.post(
        f"{service}/v1/decide",
        json={
            "recipients": [{"customer_id": c} for c in ids],
            "campaign": {"kind": "promotional", "campaign_id": "winter-sale", "subject": "{{ brand }}: for you"},
            "k_offers": 5,
        },
        headers=_auth(),
        timeout=60,
    ).json()["decisions"]
    decision = next(d for d in decided if d["send"] and "hero_offer" in d["modules"])
    answer = httpx.post(
        f"{service}/v1/render", json={"decision_id": decision["decision_id"]}, headers=_auth(), timeout=60
    )
    assert answer.status_code == 200, answer.text
    email = answer.json()
    assert (email["decision_id"], email["send_at"], email["customer_id"]) == (
        decision["decision_id"],
        decision["send_at"],
        decision["customer_id"],
    )
    assert [m["name"] for m in email["modules"]] == decision["modules"]
    assert email["subject"] == "sendwise demo shop: for you"
    headers = email["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith("<https://shop.example/unsubscribe?")
    assert ", <mailto:unsubscribe@shop.example?" in headers["List-Unsubscribe"]
    hrefs = [a["href"] for a in Page(email["html"]).tags("a")]
    shown = [o["offer_id"] for o in decision["offers"] if any(h.startswith(urls[o["offer_id"]] + "?") for h in hrefs)]
    assert shown, "the hero offer's link leads to its url"
    for offer_id in shown:
        for href in (h for h in hrefs if h.startswith(urls[offer_id] + "?")):
            query = parse_qs(urlsplit(href).query)
            assert query["sw"] == [decision["decision_id"]] and query["utm_campaign"] == ["winter-sale"]
        assert f"{urls[offer_id]}?sw={decision['decision_id']}&utm_source=sendwise" in email["text"]

    unknown = httpx.post(f"{service}/v1/render", json={"decision_id": "d-" + "f" * 32}, headers=_auth(), timeout=60)
    assert unknown.status_code == 404
    assert unknown.json()["message"].startswith(f"no decision d-{'f' * 32} in this home's decision log")
    assert unknown.json()["details"][0]["field"] == "decision_id"


def test_constraints_over_http(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    chosen = customers[customers["consent_email"]].head(300)
    zone_of = dict(zip(chosen["customer_id"], chosen["timezone"], strict=True))
    body = {
        "recipients": [{"customer_id": c} for c in zone_of],
        "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "constraints": {
            "quiet_hours": {"start": 21, "end": 8},
            "max_share_per_hour": 0.1,
            "frequency_cap": {"emails": 50, "days": 7},
            "no_repeat_offer_days": 14,
        },
    }
    answer = httpx.post(f"{service}/v1/decide", json=body, headers=_auth(), timeout=120)
    assert answer.status_code == 200, answer.text
    decisions = answer.json()["decisions"]
    assert [d["customer_id"] for d in decisions] == list(zone_of)
    sent = [d for d in decisions if d["send"]]
    assert len(sent) >= 250
    at = [datetime.fromisoformat(d["send_at"].replace("Z", "+00:00")) for d in sent]
    per_hour = np.unique([a.isoformat() for a in at], return_counts=True)[1]
    assert per_hour.max() <= int(np.ceil(0.1 * len(sent)))
    for d, when in zip(sent, at, strict=True):
        assert 8 <= when.astimezone(ZoneInfo(zone_of[d["customer_id"]])).hour < 21
        assert len(d["hourly_open_probability"]) == 24 and d["holdout"] is False
        k = int((when - START) / timedelta(hours=1))
        assert d["open_probability"] == pytest.approx(d["hourly_open_probability"][k])


def test_explain_over_http_adds_up_to_what_decide_served(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    """`/v1/decide` with `explain` gives each sent decision the drivers of its open probability; `/v1/explain`
    of the same hour gives the same drivers, and its base value plus SHAP values is the served log-odds."""
    customers = load_table(pipeline_home.settings, "customers")
    assert customers is not None
    ids = customers.loc[customers["consent_email"], "customer_id"].iloc[300:310].tolist()
    # a window in which no zone changes its clocks: the curve holds a customer's UTC offset for the whole window
    body = {"recipients": [{"customer_id": i} for i in ids], "window_start": "2026-12-01T07:00:00Z"}
    decided = httpx.post(f"{service}/v1/decide", json={**body, "explain": True}, headers=_auth(), timeout=60)
    assert decided.status_code == 200, decided.text
    decision = next(d for d in decided.json()["decisions"] if d["send"])
    explained = httpx.post(
        f"{service}/v1/explain",
        json={"customer_id": decision["customer_id"], "model": "send_time", "send_at": decision["send_at"], "top": 30},
        headers=_auth(),
        timeout=60,
    )
    missing = httpx.post(
        f"{service}/v1/explain", json={"customer_id": decision["customer_id"], "model": "send_time"}, headers=_auth()
    )

    assert explained.status_code == 200, explained.text
    answer = explained.json()
    assert answer["drivers"][:3] == decision["drivers"] and len(decision["drivers"]) == 3
    total = answer["base_value"] + sum(d["shap_value"] for d in answer["drivers"]) + answer["others_shap_value"]
    p = decision["open_probability"]
    assert total == pytest.approx(np.log(p / (1 - p)), abs=1e-6)
    assert all("instead of" in d["sentence"] and "log-odds" not in d["sentence"] for d in decision["drivers"])
    assert missing.status_code == 422 and missing.json()["details"][0]["field"] == "send_at"


def test_api_conformance_checker_passes(service: str, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    checker = SHARED / "tools" / "api_conformance.py"
    if not checker.exists():
        pytest.skip(f"{checker} is not beside the checkout")
    run = subprocess.run(
        [sys.executable, str(checker), str(pipeline_home.world), "--url", service, "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 failed" in run.stdout


def test_two_replicas_on_one_redis_give_the_same_answers(
    redis_service: str, redis_home: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second `bentoml serve` on another home copy and the same Redis: no snapshot of its own, the same
    features, so the same decisions for the same requests (exploration off)."""
    customers = load_table(redis_home, "customers")
    assert customers is not None
    ids = customers["customer_id"].sample(n=150, random_state=5).tolist()
    body: dict[str, Any] = {
        "recipients": [{"customer_id": i} for i in ids] + [{"customer_id": "new-1", "timezone": "Europe/Oslo"}],
        "campaign": {"kind": "promotional", "topic": "outdoor"},
        "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "explore_share": 0.0,
        "k_offers": 5,
    }
    single = {**body, "recipients": body["recipients"][:1]}
    other_home = home_with_own_decision_log(redis_home, tmp_path_factory.mktemp("replica") / "home")
    with serve_on_redis(other_home) as other:
        answers = [
            [httpx.post(f"{url}/v1/decide", json=b, headers=_auth(), timeout=120) for b in (body, single)]
            for url in (redis_service, other)
        ]
    for answer in (a for pair in answers for a in pair):
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "ok"
    first, second = ([_without_ids(a.json()["decisions"]) for a in pair] for pair in answers)
    assert first == second
    decided = first[0]
    assert [d["customer_id"] for d in decided] == [*ids, "new-1"]
    assert sum(d["send"] for d in decided) > 100 and sum(not d["cold_start"] for d in decided) == len(ids)


def _without_ids(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k != "decision_id"} for d in decisions]
