"""The HTTP layer in process: BentoML's ASGI app of `Sendwise` over a fake engine, no server, no models.

The real engine and the real `bentoml serve` are tested elsewhere; here the routes, the body shapes, auth,
the error answers and the isolation of failures are checked against a small fake.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import serving.service as service_module
from sendwise.settings import Settings
from serving.http_app import QuietClientErrors, RequestTimeout, field_name, validation_answer
from serving.schemas import (
    DecideRequest,
    DecideResponse,
    Decision,
    Driver,
    ExplainRequest,
    ExplainResponse,
    OfferScore,
    RenderedModule,
    RenderRequest,
    RenderResponse,
)

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WINDOW_START = datetime(2026, 11, 26, 7, tzinfo=UTC)
VERSIONS: dict[str, str | None] = {"open_propensity": "4", "send_time": "4", "next_best_offer": None}


class FakeEngine:
    """Answers like the engine would, from the request alone; can fail or block on demand."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.fail_for: set[str] = set()
        self.degraded = False
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def decide(self, request: DecideRequest) -> DecideResponse:
        self.requests.append(request)
        self.entered.set()
        assert self.release.wait(timeout=30)
        if self.fail_for & {r.customer_id for r in request.recipients}:
            raise RuntimeError("the fake engine failed on purpose")
        start = request.resolved_window_start()
        decisions = []
        for i, recipient in enumerate(request.recipients):
            curve = [round(0.01 * (i + 1) + 0.001 * h, 6) for h in range(request.window_hours)]
            best = max(range(len(curve)), key=curve.__getitem__)
            decisions.append(
                Decision(
                    customer_id=recipient.customer_id,
                    decision_id=f"d-{i}-{recipient.customer_id}",
                    send=True,
                    send_at=start + timedelta(hours=best),
                    open_probability=curve[best],
                    hourly_open_probability=curve,
                    offers=[
                        OfferScore(offer_id="of-7", kind="discount", conversion_probability=0.05, expected_value=1.9)
                    ],
                    modules=["hero_offer"],
                    cold_start=recipient.timezone is not None,
                    reasons=[f"fake reason {i}"],
                )
            )
        return DecideResponse(model_versions=VERSIONS, status=self._status()["status"], decisions=decisions)

    def decide_chunks(self, request: DecideRequest) -> list[bytes | memoryview]:
        """The answer in three pieces cut anywhere, as the service must send them: one after the other."""
        body = self.decide(request).model_dump_json().encode()
        third = len(body) // 3
        return [body[:third], memoryview(body)[third : 2 * third], body[2 * third :]]

    def decide_payload(self, request: DecideRequest) -> dict[str, Any]:
        return self.decide(request).model_dump(mode="json")

    def render(self, request: RenderRequest) -> RenderResponse:
        self.requests.append(request)
        return RenderResponse(
            customer_id=request.customer_id or "c-1",
            decision_id=request.decision_id or "d-" + "0" * 32,
            template=request.template or "promotional",
            send=True,
            subject="Hello",
            html="<p>Hello</p><a href='https://x.test/unsubscribe'>unsubscribe</a>",
            text="Hello\nunsubscribe: https://x.test/unsubscribe",
            modules=[RenderedModule(name="hero_offer", reason="a discount is worth the most")],
        )

    def explain(self, request: ExplainRequest) -> ExplainResponse:
        self.requests.append(request)
        return ExplainResponse(
            customer_id=request.customer_id,
            model=request.model,
            model_version=VERSIONS[request.model],
            send_at=request.send_at,
            prediction=0.3,
            base_value=-1.2,
            base_probability=0.23,
            drivers=[Driver(feature="opens_30d", value=4.0, shap_value=0.1, sentence="opened 4 emails")][: request.top],
        )

    def model_versions(self) -> dict[str, str | None]:
        return dict(VERSIONS)

    def _status(self) -> dict[str, Any]:
        if self.degraded:
            return {"status": "degraded", "reasons": ["online store unreachable"]}
        return {"status": "ok", "reasons": []}

    def status(self) -> dict[str, Any]:
        return self._status()


def _guard_environment(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """`settings.activate()` writes os.environ; set its keys through monkeypatch so they are restored."""
    for key, value in Settings(home=home).library_environment().items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def token() -> str | None:
    return TOKEN


@pytest.fixture
def fresh_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """BentoML registers its HTTP metrics in prometheus' global registry when an app serves its first request,
    so a second app in one process fails with "Duplicated timeseries". Give each app its own registry."""
    import prometheus_client
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.server.metrics.prometheus import PrometheusClient

    monkeypatch.setattr(prometheus_client, "REGISTRY", prometheus_client.CollectorRegistry(auto_describe=True))
    with BentoMLContainer.metrics_client.patch(PrometheusClient(multiproc=False)):
        yield


@asynccontextmanager
async def served(
    engine: Any,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None = None,
    client_address: str = "127.0.0.1",
) -> AsyncIterator[httpx.AsyncClient]:
    """BentoML's ASGI app of the service over `engine`, in process, its home `home`, called from
    `client_address`; open to this machine without a `token`."""
    _guard_environment(monkeypatch, home)
    monkeypatch.setenv("SENDWISE_CHAMPION_POLL_SECONDS", "0")  # the engine given is the one served: no watcher
    if token is None:
        monkeypatch.delenv("SENDWISE_API_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SENDWISE_API_TOKEN", token)
    monkeypatch.setattr(service_module, "load_engine", lambda settings: engine)
    app: Any = cast(Any, service_module.Sendwise).to_asgi()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_address, 50_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sendwise.test") as http:
            yield http


@pytest.fixture
async def client(
    engine: FakeEngine,
    token: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_metrics: None,
) -> AsyncIterator[httpx.AsyncClient]:
    async with served(engine, tmp_path / "home", monkeypatch, token) as http:
        yield http


def _decide_body(*ids: str, **extra: Any) -> dict[str, Any]:
    return {"recipients": [{"customer_id": i} for i in ids], **extra}


# --- the answers ------------------------------------------------------------------------------------------


async def test_decide_takes_the_request_as_the_whole_body_and_answers_in_order(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = {
        "recipients": [
            {"customer_id": "c-1"},
            {
                "customer_id": "new-9",
                "timezone": "Asia/Tokyo",
                "interests": ["books"],
                "attributes": {"attr_loyalty_tier": "basic"},
            },
            {"customer_id": "c-3"},
        ],
        "campaign": {"kind": "promotional", "topic": "outdoor"},
        "window_start": "2026-11-26T07:00:00Z",
        "window_hours": 48,
        "offer_ids": None,
        "k_offers": 3,
        "explore_share": 0.0,
    }
    response = await client.post("/v1/decide", json=body, headers=AUTH)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    (seen,) = engine.requests
    assert isinstance(seen, DecideRequest)
    assert seen.window_hours == 48 and seen.window_start == WINDOW_START
    assert seen.campaign.topic == "outdoor"
    assert seen.recipients[1].attributes == {"attr_loyalty_tier": "basic"}
    expected = json.loads(engine.decide(seen).model_dump_json())
    answer = response.json()
    assert answer == expected
    assert [d["customer_id"] for d in answer["decisions"]] == ["c-1", "new-9", "c-3"]
    assert answer["model_versions"] == VERSIONS
    first = answer["decisions"][0]
    assert len(first["hourly_open_probability"]) == 48
    assert first["send_at"] == "2026-11-28T06:00:00Z"
    assert first["open_probability"] == first["hourly_open_probability"][47]
    assert [d["cold_start"] for d in answer["decisions"]] == [False, True, False]


async def test_render_and_explain_answer_the_engine(client: httpx.AsyncClient) -> None:
    render = await client.post("/v1/render", json={"customer_id": "c-1", "template": "promotional"}, headers=AUTH)
    explain = await client.post(
        "/v1/explain",
        json={"customer_id": "c-1", "model": "send_time", "send_at": "2026-11-26T19:00:00Z", "top": 3},
        headers=AUTH,
    )

    assert render.status_code == 200, render.text
    assert "unsubscribe" in render.json()["html"].lower()
    assert render.json()["modules"] == [{"name": "hero_offer", "reason": "a discount is worth the most"}]
    assert explain.status_code == 200, explain.text
    assert explain.json()["model"] == "send_time" and explain.json()["model_version"] == "4"
    assert explain.json()["drivers"][0]["sentence"] == "opened 4 emails"
    assert explain.json()["send_at"] == "2026-11-26T19:00:00Z"


async def test_models_lists_the_versions_served_and_the_status(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    ok = await client.get("/v1/models", headers=AUTH)
    engine.degraded = True
    degraded = await client.get("/v1/models", headers=AUTH)

    assert ok.status_code == 200, ok.text
    assert ok.json() == {"model_versions": VERSIONS, "status": "ok", "reasons": []}
    assert degraded.json()["status"] == "degraded"
    assert degraded.json()["reasons"] == ["online store unreachable"]


async def test_a_degraded_dependency_keeps_the_service_ready_and_shows_in_answers_and_metrics(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.degraded = True

    ready = await client.get("/readyz")
    decide = await client.post("/v1/decide", json=_decide_body("c-1"), headers=AUTH)
    metrics = await client.get("/metrics")

    assert ready.status_code == 200
    assert decide.json()["status"] == "degraded"
    assert metrics.status_code == 200
    assert "sendwise_degraded 1" in metrics.text.splitlines()
    assert 'sendwise_model_info{model="open_propensity",version="4"} 1' in metrics.text


async def test_health_and_metrics_are_served_without_a_token(client: httpx.AsyncClient) -> None:
    for path in ["/healthz", "/livez", "/readyz", "/metrics"]:
        assert (await client.get(path)).status_code == 200, path
        assert (await client.get(path, headers={"Authorization": "Bearer not-the-token"})).status_code == 200, path


async def test_the_openapi_document_lists_the_routes(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs.json", headers=AUTH)

    assert docs.status_code == 200
    paths = docs.json()["paths"]
    assert {"/v1/decide", "/v1/render", "/v1/explain", "/v1/models"} <= paths.keys()
    schemas = docs.json()["components"]["schemas"]
    body_ref = paths["/v1/decide"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[body_ref.rsplit("/", 1)[1]]["required"] == ["recipients"]
    assert docs.json()["openapi"] == "3.1.0"
    assert list(paths["/v1/decide"]["post"]["responses"]) == ["200", "400", "401", "413", "422", "500", "503", "504"]
    assert list(paths["/v1/models"]["get"]["responses"]) == ["200", "401", "500", "503", "504"]
    assert "404" in paths["/v1/render"]["post"]["responses"] and "404" in paths["/v1/explain"]["post"]["responses"]
    assert all(paths[p]["get"]["security"] == [] for p in ["/healthz", "/livez", "/readyz", "/metrics"])
    assert paths["/v1/models"]["get"]["security"] == [{"bearer": []}]
    render_ways = schemas["RenderRequest"]["anyOf"]
    assert [way["required"] for way in render_ways] == [["decision_id"], ["customer_id"]]
    assert render_ways[0]["properties"]["template"]["anyOf"][0]["enum"] == ["promotional", "newsletter"]


async def test_health_answers_while_a_big_batch_is_being_decided(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    import anyio

    engine.release.clear()
    engine.entered.clear()
    results: dict[str, httpx.Response] = {}

    async def decide() -> None:
        ids = [f"c-{i}" for i in range(2000)]
        results["decide"] = await client.post("/v1/decide", json=_decide_body(*ids), headers=AUTH)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(decide)
        with anyio.fail_after(20):
            while not engine.entered.is_set():
                await anyio.sleep(0.01)
        health = await client.get("/healthz")
        models = await client.get("/v1/models", headers=AUTH)
        assert "decide" not in results
        engine.release.set()

    assert health.status_code == 200
    assert models.status_code == 200
    assert results["decide"].status_code == 200
    assert len(results["decide"].json()["decisions"]) == 2000


# --- auth ---------------------------------------------------------------------------------------------------


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/decide", _decide_body("c-1")),
    ("POST", "/v1/render", {"customer_id": "c-1"}),
    ("POST", "/v1/explain", {"customer_id": "c-1"}),
    ("GET", "/v1/models", None),
    ("GET", "/docs.json", None),
    ("GET", "/schema.json", None),
    ("GET", "/", None),
]
"""Every route but health and metrics: the API, and BentoML's pages describing it (DESIGN.md: only health and
metrics are open)."""


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
    ],
    ids=["no token", "wrong token", "token with more", "no scheme", "basic scheme"],
)
async def test_every_route_but_health_needs_the_bearer_token(
    client: httpx.AsyncClient, engine: FakeEngine, headers: dict[str, str]
) -> None:
    for method, path, body in ROUTES:
        response = await client.request(method, path, json=body, headers=headers)

        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == "unauthorized"
        assert response.json()["details"][0]["field"] == "Authorization"
        assert "Authorization" in response.json()["message"] or "token" in response.json()["message"]
    assert engine.requests == []


async def test_every_route_answers_with_the_token(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    for method, path, body in ROUTES:
        response = await client.request(method, path, json=body, headers=AUTH)

        assert response.status_code == 200, (path, response.text)
    assert len(engine.requests) == 3


async def test_the_token_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/decide", json=_decide_body("c-1"), headers={"Authorization": f"bearer {TOKEN}"})

    assert response.status_code == 200


@pytest.mark.parametrize("token", [None])
async def test_without_a_configured_token_the_api_is_open_to_this_machine(client: httpx.AsyncClient) -> None:
    for method, path, body in ROUTES:
        assert (await client.request(method, path, json=body)).status_code == 200, path


@pytest.mark.parametrize("address", ["203.0.113.9", "192.168.1.20", "2001:db8::7"])
async def test_without_a_configured_token_other_machines_are_refused_by_name(
    engine: FakeEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_metrics: None, address: str
) -> None:
    """A service started without a token some other way than `sendwise serve` (a container's `bentoml serve`
    listens on every address) answers no one but its own machine; health and metrics stay open."""
    async with served(engine, tmp_path / "home", monkeypatch, None, client_address=address) as http:
        for method, path, body in ROUTES:
            answer = await http.request(method, path, json=body)
            assert answer.status_code == 403, path
            assert answer.json()["error"] == "forbidden"
            assert "started without SENDWISE_API_TOKEN" in answer.json()["message"]
        assert (await http.get("/readyz")).status_code == 200
    assert engine.requests == []  # nothing reached the engine


# --- bad input ---------------------------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("malformed JSON", {"content": b'{"recipients": ['}, 400, "body", "JSON"),
    ("empty body", {"content": b""}, 422, "recipients", "required"),
    ("body not an object", {"json": ["c-1"]}, 422, "body", "JSON object"),
    ("no recipients", {"json": {"recipients": []}}, 422, "recipients", "at least 1"),
    (
        "10,001 recipients",
        {"json": {"recipients": [{"customer_id": f"x{i}"} for i in range(10_001)]}},
        422,
        "recipients",
        "at most 10000",
    ),
    ("window_hours 169", {"json": _decide_body("c-1", window_hours=169)}, 422, "window_hours", "168"),
    (
        "window_start not a time",
        {"json": _decide_body("c-1", window_start="soon")},
        422,
        "window_start",
        "datetime",
    ),
    (
        "window_start not a whole hour",
        {"json": _decide_body("c-1", window_start="2026-11-26T07:30:00Z")},
        422,
        "window_start",
        "whole hour",
    ),
    ("recipients not a list", {"json": {"recipients": "everyone"}}, 422, "recipients", "array"),
    (
        "customer_id of 129 characters",
        {"json": _decide_body("x" * 129)},
        422,
        "recipients[0].customer_id",
        "128 characters",
    ),
    (
        "unknown time zone",
        {"json": {"recipients": [{"customer_id": "c-1"}, {"customer_id": "c-2", "timezone": "Mars/Olympus"}]}},
        422,
        "recipients[1].timezone",
        "Mars/Olympus",
    ),
    ("unknown field", {"json": _decide_body("c-1", windw_hours=24)}, 422, "windw_hours", "unknown field"),
    (
        "quiet hours of no length",
        {"json": _decide_body("c-1", constraints={"quiet_hours": {"start": 7, "end": 7}})},
        422,
        "constraints.quiet_hours.end",
        "ambiguous",
    ),
    (
        "per-hour share above 1",
        {"json": _decide_body("c-1", constraints={"max_share_per_hour": 1.5})},
        422,
        "constraints.max_share_per_hour",
        "less than or equal to 1",
    ),
    (
        "frequency cap of 0 emails",
        {"json": _decide_body("c-1", constraints={"frequency_cap": {"emails": 0, "days": 7}})},
        422,
        "constraints.frequency_cap.emails",
        "greater than or equal to 1",
    ),
    (
        "unknown constraint",
        {"json": _decide_body("c-1", constraints={"max_per_day": 3})},
        422,
        "constraints.max_per_day",
        "unknown field",
    ),
    # limits on every length a client sends
    (
        "window_hours 0",
        {"json": _decide_body("c-1", window_hours=0)},
        422,
        "window_hours",
        "greater than or equal to 1",
    ),
    (
        "window_start before 2000",
        {"json": _decide_body("c-1", window_start="1999-12-31T23:00:00Z")},
        422,
        "window_start",
        "years 2000 to 2099",
    ),
    ("customer_id of blanks", {"json": _decide_body("   ")}, 422, "recipients[0].customer_id", "at least 1 character"),
    (
        "time zone of 65 characters",
        {"json": {"recipients": [{"customer_id": "c-1", "timezone": "Europe/" + "x" * 58}]}},
        422,
        "recipients[0].timezone",
        "at most 64 characters",
    ),
    (
        "51 interests",
        {"json": {"recipients": [{"customer_id": "c-1", "interests": ["books"] * 51}]}},
        422,
        "recipients[0].interests",
        "at most 50 items",
    ),
    (
        "interest of 65 characters",
        {"json": {"recipients": [{"customer_id": "c-1", "interests": ["x" * 65]}]}},
        422,
        "recipients[0].interests[0]",
        "at most 64 characters",
    ),
    (
        "101 attributes",
        {"json": {"recipients": [{"customer_id": "c-1", "attributes": {f"attr_{i}": i for i in range(101)}}]}},
        422,
        "recipients[0].attributes",
        "at most 100 items",
    ),
    (
        "attribute name of 65 characters",
        {"json": {"recipients": [{"customer_id": "c-1", "attributes": {"attr_" + "x" * 60: 1}}]}},
        422,
        "recipients[0].attributes",
        "attribute names are at most 64 characters",
    ),
    (
        "attribute value of 257 characters",
        {"json": {"recipients": [{"customer_id": "c-1", "attributes": {"attr_note": "x" * 257}}]}},
        422,
        "recipients[0].attributes",
        "attribute values are at most 256 characters: ['attr_note']",
    ),
    (
        "topic of 129 characters",
        {"json": _decide_body("c-1", campaign={"topic": "x" * 129})},
        422,
        "campaign.topic",
        "at most 128 characters",
    ),
    (
        "campaign_id of 129 characters",
        {"json": _decide_body("c-1", campaign={"campaign_id": "x" * 129})},
        422,
        "campaign.campaign_id",
        "at most 128 characters",
    ),
    (
        "subject of 501 characters",
        {"json": _decide_body("c-1", campaign={"subject": "x" * 501})},
        422,
        "campaign.subject",
        "at most 500 characters",
    ),
    (
        "1,001 offer ids",
        {"json": _decide_body("c-1", offer_ids=[f"of-{i}" for i in range(1001)])},
        422,
        "offer_ids",
        "at most 1000 items",
    ),
    (
        "offer id of 129 characters",
        {"json": _decide_body("c-1", offer_ids=["x" * 129])},
        422,
        "offer_ids[0]",
        "at most 128 characters",
    ),
]


async def test_constraints_reach_the_engine_as_given(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    constraints = {
        "quiet_hours": {"start": 22, "end": 7},
        "max_share_per_hour": 0.2,
        "frequency_cap": {"emails": 3, "days": 7},
        "no_repeat_offer_days": 14,
    }
    response = await client.post("/v1/decide", json=_decide_body("c-1", "c-2", constraints=constraints), headers=AUTH)

    assert response.status_code == 200, response.text
    assert [d["customer_id"] for d in response.json()["decisions"]] == ["c-1", "c-2"]
    assert all(d["holdout"] is False for d in response.json()["decisions"])
    (request,) = engine.requests
    assert request.constraints.model_dump() == constraints


@pytest.mark.parametrize(
    ("kwargs", "status", "field", "words"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
async def test_bad_input_gets_a_4xx_naming_the_field(
    client: httpx.AsyncClient, engine: FakeEngine, kwargs: dict[str, Any], status: int, field: str, words: str
) -> None:
    response = await client.post("/v1/decide", headers={**AUTH, "Content-Type": "application/json"}, **kwargs)

    assert response.status_code == status, response.text
    answer = response.json()
    assert [d["field"] for d in answer["details"]] == [field]
    assert words in answer["details"][0]["message"]
    assert answer["message"].startswith(f"{field}: ")
    assert "IODescriptor" not in response.text
    assert engine.requests == []
    assert (await client.get("/healthz")).status_code == 200


async def test_bad_render_and_explain_requests_name_the_field(client: httpx.AsyncClient) -> None:
    render = await client.post("/v1/render", json={"template": "promotional"}, headers=AUTH)
    explain = await client.post("/v1/explain", json={"customer_id": "c-1", "model": "churn"}, headers=AUTH)

    assert render.status_code == 422
    assert "give decision_id (render a logged decision) or customer_id" in render.json()["message"]
    assert explain.status_code == 422
    assert explain.json()["details"][0]["field"] == "model"


@pytest.mark.parametrize(
    ("path", "sent", "field", "words"),
    [
        ("/v1/render", {"customer_id": "c-1", "template": "x" * 65}, "template", "at most 64 characters"),
        ("/v1/render", {"customer_id": "x" * 129}, "customer_id", "at most 128 characters"),
        ("/v1/render", {"decision_id": "d-" + "0" * 33}, "decision_id", "should match pattern"),
        (
            "/v1/render",
            {"customer_id": "c-1", "recipient": {"customer_id": "c-1", "interests": ["x"] * 51}},
            "recipient.interests",
            "at most 50 items",
        ),
        ("/v1/explain", {"customer_id": "x" * 129}, "customer_id", "at most 128 characters"),
        (
            "/v1/explain",
            {"customer_id": "c-1", "model": "next_best_offer", "offer_id": "x" * 129},
            "offer_id",
            "at most 128 characters",
        ),
        ("/v1/explain", {"customer_id": "c-1", "top": 31}, "top", "less than or equal to 30"),
    ],
)
async def test_render_and_explain_limit_what_a_client_sends(
    client: httpx.AsyncClient, engine: FakeEngine, path: str, sent: dict[str, Any], field: str, words: str
) -> None:
    response = await client.post(path, json=sent, headers=AUTH)

    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["details"]] == [field]
    assert words in response.json()["details"][0]["message"]
    assert engine.requests == []


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": "send_time"}, "send_at", "give send_at, a whole UTC hour"),
        ({"model": "send_time", "send_at": "2026-11-26T19:15:00Z"}, "send_at", "must be a whole hour"),
        ({"send_at": "1970-01-01T00:00:00Z"}, "send_at", "an hour of the years 2000 to 2099"),
        ({"model": "next_best_offer"}, "offer_id", "give offer_id"),
    ],
)
async def test_an_explain_without_its_hour_or_offer_is_a_422_naming_it(
    client: httpx.AsyncClient, engine: FakeEngine, body: dict[str, str], field: str, words: str
) -> None:
    response = await client.post("/v1/explain", json={"customer_id": "c-1", **body}, headers=AUTH)

    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == field and words in response.json()["message"]
    assert engine.requests == []


async def test_decide_with_explain_over_a_thousand_recipients_is_a_422_naming_explain(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    body = _decide_body(*(f"c-{i}" for i in range(1001)), explain=True)

    response = await client.post("/v1/decide", json=body, headers=AUTH)
    explained = await client.post("/v1/decide", json={**body, "recipients": body["recipients"][:1000]}, headers=AUTH)

    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "explain"
    assert "at most 1,000 recipients and this request has 1,001" in response.json()["message"]
    assert explained.status_code == 200 and len(engine.requests) == 1 and engine.requests[0].explain


async def test_a_body_over_the_limit_is_refused_with_413(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    big = b'{"recipients": [' + b'{"customer_id": "c-1"},' * 1_000_000 + b'{"customer_id": "c-2"}]}'

    response = await client.post("/v1/decide", content=big, headers=AUTH)

    assert len(big) > 20 * 1024 * 1024
    assert response.status_code == 413
    assert response.json()["details"][0]["field"] == "body"
    assert "larger than 20 MB" in response.json()["message"]
    assert engine.requests == []


async def test_any_content_type_is_read_as_json(client: httpx.AsyncClient) -> None:
    body = json.dumps(_decide_body("c-1")).encode()

    form = await client.post(
        "/v1/decide", content=body, headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    )
    multipart = await client.post(
        "/v1/decide", content=body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"}
    )

    assert form.status_code == 200, form.text
    assert multipart.status_code == 200, multipart.text


# --- failures stay with their request ---------------------------------------------------------------------


async def test_an_engine_failure_is_a_500_for_that_request_only(
    client: httpx.AsyncClient, engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.fail_for = {"boom"}

    with caplog.at_level(logging.ERROR):
        failed = await client.post("/v1/decide", json=_decide_body("c-1", "boom"), headers=AUTH)
    after = await client.post("/v1/decide", json=_decide_body("c-1", "c-2"), headers=AUTH)

    assert failed.status_code == 500
    assert failed.json()["error"] == "internal error"
    assert "the fake engine failed on purpose" not in failed.text
    assert any(r.exc_info and "failed on purpose" in str(r.exc_info[1]) for r in caplog.records)
    assert after.status_code == 200
    assert [d["customer_id"] for d in after.json()["decisions"]] == ["c-1", "c-2"]
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_a_models_failure_is_a_500_in_the_error_shape(
    client: httpx.AsyncClient, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("status check failed")

    monkeypatch.setattr(engine, "status", broken)

    response = await client.get("/v1/models", headers=AUTH)

    assert response.status_code == 500
    assert response.json()["error"] == "internal error"
    assert (await client.get("/metrics")).status_code == 200


# --- the pieces --------------------------------------------------------------------------------------------


def test_field_names_read_like_paths() -> None:
    assert field_name(("recipients", 3, "customer_id")) == "recipients[3].customer_id"
    assert field_name(("campaign", "kind")) == "campaign.kind"
    assert field_name(()) == "body"


def test_many_errors_are_summarized() -> None:
    errors = [
        {"type": "string_too_long", "loc": ("recipients", i, "customer_id"), "msg": "too long"} for i in range(80)
    ]

    status, answer = validation_answer(errors)

    assert status == 422
    assert len(answer.details) == 50
    assert answer.message.endswith("and 75 more")


def test_validation_tracebacks_become_one_info_line() -> None:
    from pydantic import BaseModel, ValidationError

    class Model(BaseModel):
        n: int

    try:
        Model.model_validate({"n": "x"})
    except ValidationError as error:
        exc_info = (type(error), error, error.__traceback__)
    record = logging.LogRecord(
        "bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/v1/decide", "POST"), exc_info
    )

    assert QuietClientErrors().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "Invalid request on /v1/decide [POST], answered with a 4xx"


# --- the request timeout ------------------------------------------------------------------------------------


class _RequestState:
    """What a request's context holds (as its tracing span does), watched through a weak reference."""


_request_state: contextvars.ContextVar[_RequestState] = contextvars.ContextVar("request_state")


def _slow_app(delay_s: float) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"done"})

    return app


async def _call(app: Any, states: list[weakref.ref[_RequestState]]) -> tuple[int, bytes]:
    """One request through `app`, in a context of its own that holds a fresh `_RequestState`, as BentoML's
    tracing middleware, outside the timeout, puts the request's span in the context."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def traced() -> None:
        state = _RequestState()
        states.append(weakref.ref(state))
        _request_state.set(state)
        await app({"type": "http", "path": "/v1/decide", "method": "POST", "headers": []}, receive, send)

    await asyncio.get_running_loop().create_task(traced(), context=contextvars.copy_context())
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_bentoml_builds_its_timeout_middleware_from_request_timeout() -> None:
    from bentoml._internal.server.http import traffic

    app: Any = cast(Any, service_module.Sendwise).to_asgi()

    assert traffic.TimeoutMiddleware is RequestTimeout
    timeouts = [m for m in app.user_middleware if m.cls is RequestTimeout]
    assert [m.kwargs["timeout"] for m in timeouts] == [service_module.REQUEST_TIMEOUT_SECONDS]


async def test_an_answered_request_leaves_nothing_behind_until_the_timeout() -> None:
    """BentoML's own middleware kept a timer per request for the whole timeout, and with it the request's
    context: at a thousand requests a second, millions of objects for the cycle collector to walk."""
    states: list[weakref.ref[_RequestState]] = []
    guarded = RequestTimeout(_slow_app(0.0), timeout=300.0)

    answers = [await _call(guarded, states) for _ in range(200)]
    await asyncio.sleep(0)  # the loop's callbacks for the last request
    gc.collect()

    assert answers == [(200, b"done")] * 200
    assert len(states) == 200
    assert [ref for ref in states if ref() is not None] == []


async def test_a_request_past_the_timeout_is_a_504_in_the_error_shape() -> None:
    guarded = RequestTimeout(_slow_app(5.0), timeout=0.05)

    status, body = await _call(guarded, [])

    assert status == 504
    answer = json.loads(body)
    assert answer["error"] == "timeout"
    assert answer["message"] == "the request took longer than 0.05 s; send smaller batches"


def test_decide_is_neither_traced_nor_access_logged_by_default() -> None:
    """At a thousand triggered emails a second, BentoML's span and access-log line per request took a third of
    the service's CPU; `SENDWISE_TRACE_DECIDE` turns them back on (the decision log records every decision)."""
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    app: Any = cast(Any, service_module.Sendwise).to_asgi()
    options = {m.cls: m.kwargs for m in app.user_middleware}

    assert options[OpenTelemetryMiddleware]["excluded_urls"].url_disabled("http://sendwise.test/v1/decide")
    assert not options[OpenTelemetryMiddleware]["excluded_urls"].url_disabled("http://sendwise.test/v1/render")
    assert "/v1/decide" in options[AccessLogMiddleware]["skip_paths"]
    assert "/v1/render" not in options[AccessLogMiddleware]["skip_paths"]
    assert service_module.request_logging(trace_decide=True) == {}
