"""What the engine cannot answer reaches the client as a 4xx or 5xx that says why, over the ASGI app in process:
an unknown customer to explain is a 404 naming the id (the real engine, and a fake), a model without a
champion a 503, an unknown template a 422 naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import NoChampion, UnknownCustomer
from serving.modules import check_template
from serving.schemas import ExplainRequest, ExplainResponse, RenderRequest, RenderResponse
from tests.test_service_app import FakeEngine, fresh_metrics, served  # noqa: F401 - a fixture, used by name

pytestmark = pytest.mark.anyio


class FewCustomers(FakeEngine):
    """The fake engine, knowing only `c-1` and without an offer champion, as the real one answers them."""

    def explain(self, request: ExplainRequest) -> ExplainResponse:
        if request.model == "next_best_offer":
            raise NoChampion(request.model)
        if request.customer_id != "c-1":
            raise UnknownCustomer(request.customer_id)
        return super().explain(request)

    def render(self, request: RenderRequest) -> RenderResponse:
        check_template(request.template)
        return super().render(request)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.usefixtures("fresh_metrics")
async def test_the_engines_errors_are_answered_with_their_status_and_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with served(FewCustomers(), tmp_path / "home", monkeypatch) as client:
        known = await client.post("/v1/explain", json={"customer_id": "c-1"})
        unknown = await client.post("/v1/explain", json={"customer_id": "c-404"})
        untrained = await client.post(
            "/v1/explain", json={"customer_id": "c-1", "model": "next_best_offer", "offer_id": "of-1"}
        )
        template = await client.post("/v1/render", json={"customer_id": "c-1", "template": "poster"})
        healthy = await client.get("/healthz")

    assert known.status_code == 200, known.text
    assert unknown.status_code == 404
    answer = unknown.json()
    assert answer["error"] == "unknown customer" and "'c-404'" in answer["message"]
    assert answer["details"] == [{"field": "customer_id", "message": answer["message"]}]
    assert untrained.status_code == 503
    assert untrained.json()["error"] == "model not trained" and "next_best_offer" in untrained.json()["message"]
    assert template.status_code == 422
    assert template.json()["details"][0]["field"] == "template" and "'poster'" in template.json()["message"]
    assert healthy.status_code == 200


@pytest.mark.integration
@pytest.mark.usefixtures("fresh_metrics")
async def test_explaining_a_customer_the_real_engine_does_not_know_is_a_404_naming_the_id(  # type: ignore[no-untyped-def]
    engine, customers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = str(customers["customer_id"].iloc[0])
    with pytest.raises(UnknownCustomer) as raised:
        engine.explain(ExplainRequest(customer_id="nobody-1"))
    assert raised.value.customer_id == "nobody-1"

    async with served(engine, tmp_path / "home", monkeypatch) as client:
        unknown = await client.post(
            "/v1/explain", json={"customer_id": "nobody-1", "model": "send_time", "send_at": "2026-12-01T07:00:00Z"}
        )
        explained = await client.post("/v1/explain", json={"customer_id": known, "top": 3})

    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown customer" and "'nobody-1'" in unknown.json()["message"]
    assert explained.status_code == 200, explained.text
    assert explained.json()["customer_id"] == known and len(explained.json()["drivers"]) == 3
