"""The published OpenAPI document says what the request models accept: a request valid by the document is one the
service takes, and the rules the validators check are in the document where JSON Schema can say them."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from serving.openapi import openapi_document
from serving.schemas import DecideRequest, EventsRequest, ExplainRequest, RenderRequest

DOCUMENT = openapi_document(["promotional", "newsletter"])
DESIGN_DECIDE = {
    "recipients": [
        {"customer_id": "c-1"},
        {
            "customer_id": "new-9",
            "timezone": "Asia/Tokyo",
            "interests": ["books"],
            "attributes": {"attr_loyalty_tier": "basic"},
        },
    ],
    "campaign": {"kind": "promotional", "topic": "outdoor", "campaign_id": "spring-sale", "subject": "..."},
    "window_start": "2026-11-26T07:00:00Z",
    "window_hours": 24,
    "offer_ids": None,
    "k_offers": 3,
    "explore_share": 0.0,
    "constraints": {
        "quiet_hours": {"start": 22, "end": 7},
        "max_share_per_hour": 0.2,
        "frequency_cap": {"emails": 3, "days": 7},
        "no_repeat_offer_days": 14,
    },
}


def document_accepts(model: type[BaseModel], body: Any) -> bool:
    schema = {"$ref": f"#/components/schemas/{model.__name__}", "components": DOCUMENT["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def model_accepts(model: type[BaseModel], body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


SESSION = {
    "table": "site_events",
    "customer_id": "c-1",
    "event": "session_start",
    "occurred_at": "2026-11-20T08:15:00Z",
}

CASES: list[tuple[str, type[BaseModel], Any, bool]] = [
    ("DESIGN.md's decide", DecideRequest, DESIGN_DECIDE, True),
    (
        "quiet hours 7 to 7",
        DecideRequest,
        {**DESIGN_DECIDE, "constraints": {"quiet_hours": {"start": 7, "end": 7}}},
        False,
    ),
    ("unknown time zone", DecideRequest, {"recipients": [{"customer_id": "c", "timezone": "Mars/Olympus"}]}, False),
    (
        "attribute without attr_",
        DecideRequest,
        {"recipients": [{"customer_id": "c", "attributes": {"tier": 1}}]},
        False,
    ),
    (
        "window_start a whole hour",
        DecideRequest,
        {"recipients": [{"customer_id": "c"}], "window_start": "2030-02-28T23:00:00Z"},
        True,
    ),
    (
        "window_start at :30",
        DecideRequest,
        {"recipients": [{"customer_id": "c"}], "window_start": "2030-02-28T23:30:00Z"},
        False,
    ),
    (
        "window_start in 1999",
        DecideRequest,
        {"recipients": [{"customer_id": "c"}], "window_start": "1999-02-28T23:00:00Z"},
        False,
    ),
    ("a blank customer_id", DecideRequest, {"recipients": [{"customer_id": "  "}]}, False),
    (
        "explain with 1,001",
        DecideRequest,
        {"recipients": [{"customer_id": f"c{i}"} for i in range(1001)], "explain": True},
        False,
    ),
    (
        "explain with 1,000",
        DecideRequest,
        {"recipients": [{"customer_id": f"c{i}"} for i in range(1000)], "explain": True},
        True,
    ),
    ("render a decision", RenderRequest, {"decision_id": "d-" + "a" * 32, "template": "newsletter"}, True),
    ("render a customer", RenderRequest, {"customer_id": "c-1", "campaign": {"kind": "newsletter"}}, True),
    ("render neither", RenderRequest, {"template": "promotional"}, False),
    ("render a decision with a customer", RenderRequest, {"decision_id": "d-" + "a" * 32, "customer_id": "c-1"}, False),
    ("explain open_propensity", ExplainRequest, {"customer_id": "c-1"}, True),
    (
        "explain send_time at an hour",
        ExplainRequest,
        {"customer_id": "c-1", "model": "send_time", "send_at": "2026-11-26T19:00:00Z"},
        True,
    ),
    ("explain send_time without an hour", ExplainRequest, {"customer_id": "c-1", "model": "send_time"}, False),
    ("explain an offer", ExplainRequest, {"customer_id": "c-1", "model": "next_best_offer", "offer_id": "of-7"}, True),
    ("explain no offer", ExplainRequest, {"customer_id": "c-1", "model": "next_best_offer"}, False),
    ("explain an offer by the open model", ExplainRequest, {"customer_id": "c-1", "offer_id": "of-7"}, False),
    ("events: a session", EventsRequest, {"events": [SESSION]}, True),
    ("events: none", EventsRequest, {"events": []}, False),
    ("events: 10,001", EventsRequest, {"events": [SESSION] * 10_001}, False),
    ("events: a nested value", EventsRequest, {"events": [{**SESSION, "category": {"a": 1}}]}, False),
]


@pytest.mark.parametrize(("model", "body", "valid"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_document_and_the_models_agree(model: type[BaseModel], body: Any, valid: bool) -> None:
    assert model_accepts(model, body) is valid
    assert document_accepts(model, body) is valid


def test_the_document_is_openapi_3_1_with_bearer_auth_off_health() -> None:
    paths = DOCUMENT["paths"]

    assert DOCUMENT["openapi"] == "3.1.0"
    assert DOCUMENT["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert {p for p, ops in paths.items() for op in ops.values() if op["security"] == []} == {
        "/healthz",
        "/livez",
        "/readyz",
        "/metrics",
    }
    assert "413" in paths["/v1/decide"]["post"]["responses"] and "422" in paths["/v1/explain"]["post"]["responses"]


@pytest.mark.parametrize(
    ("row", "valid"),
    [
        (SESSION, True),
        ({**SESSION, "category": None, "value": 12.5}, True),
        ({**SESSION, "event": "teleport"}, False),
        ({**SESSION, "occurred_at": "2026-11-20T08:15:00"}, False),
        ({**SESSION, "colour": "red"}, False),
        ({**SESSION, "table": "customers"}, False),
        ({k: v for k, v in SESSION.items() if k != "customer_id"}, False),
        ({**SESSION, "customer_id": "someone@example.com"}, False),
        (
            {
                "table": "email_events",
                "customer_id": "c",
                "message_id": "m",
                "event": "bounce",
                "bounce_type": "hard",
                "occurred_at": "2026-11-20T08:15:00Z",
            },
            True,
        ),
        (
            {
                "table": "offer_events",
                "customer_id": "c",
                "offer_id": "o",
                "event": "exposed",
                "propensity": 0,
                "occurred_at": "2026-11-20T08:15:00Z",
            },
            False,
        ),
    ],
)
def test_the_document_says_which_event_rows_the_contract_takes(row: dict[str, Any], valid: bool) -> None:
    """What the document allows, the service appends (the contract's narrow form: it also reads aliases, any
    offset and booleans as text, which generators need not make)."""
    from sendwise.ingest.appended import EventsError, check_events
    from sendwise.settings import Settings

    assert document_accepts(EventsRequest, {"events": [row]}) is valid
    if valid:
        assert check_events([row], Settings(home="/nonexistent-home")).rows == 1
    else:
        with pytest.raises(EventsError):
            check_events([row], Settings(home="/nonexistent-home"))
