"""The OpenAPI document of the HTTP API (`GET /docs.json`), built from the request and answer models.

BentoML writes a document of its own, but from copies of the models whose nullable fields it flattens (a
`send_at` that may be null is published as a string), with `400`/`404`/`500` answers in shapes sendwise never
sends, and none of 401, 413, 422, 503 or 504. This one is what the service does, so that clients and tools
that generate requests from it (schemathesis, client generators) can rely on it:

- OpenAPI 3.1, whose schemas are JSON Schema 2020-12: what pydantic writes, `null` choices included;
- every request and answer schema is pydantic's own (`serving.schemas`), the rules the validators check
  spelled out where JSON Schema can say them (the two ways to ask `/v1/render`, the fields each model of
  `/v1/explain` needs, whole UTC hours as a pattern, zone names and attribute names);
- every status a route answers, errors in the shape of `ErrorAnswer`;
- bearer auth on every route but health and metrics;
- the templates `/v1/render` takes are the ones this service has (built-in and `SENDWISE_TEMPLATES_DIR`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.schemas import (
    DecideRequest,
    DecideResponse,
    ErrorAnswer,
    EventsRequest,
    EventsResponse,
    ExplainRequest,
    ExplainResponse,
    ModelsResponse,
    RenderRequest,
    RenderResponse,
)

DOCUMENT_PATH = "/docs.json"
OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"

ERRORS: dict[int, str] = {
    400: "the body is not JSON",
    401: "no bearer token, or not the one this service accepts (when SENDWISE_API_TOKEN is set)",
    404: "a customer, offer or decision this service does not have",
    413: "the body is larger than the limit (20 MB)",
    422: "a field is invalid; `details` names it",
    500: "an unexpected error, for this request only; the server log has the details",
    503: "a model without a champion yet, the service still starting, or a dependency it needs for this answer down",
    504: "the request took longer than the service's timeout",
}
COMMON_ERRORS = (401, 500, 503, 504)
BODY_ERRORS = (400, 413, 422)


@dataclass(frozen=True)
class Operation:
    """One `/v1` route as the document describes it."""

    method: str
    path: str
    summary: str
    answer: type[BaseModel]
    request: type[BaseModel] | None = None
    errors: tuple[int, ...] = field(default=COMMON_ERRORS)
    success: int = 200


OPERATIONS = (
    Operation(
        "post",
        "/v1/decide",
        "One decision per recipient, in request order: whether and when to send, offers, reasons",
        DecideResponse,
        DecideRequest,
        (*BODY_ERRORS, *COMMON_ERRORS),
    ),
    Operation(
        "post",
        "/v1/render",
        "One recipient's email, or a logged decision's: modules with their reasons, subject, HTML, text, headers",
        RenderResponse,
        RenderRequest,
        (*BODY_ERRORS, 404, *COMMON_ERRORS),
    ),
    Operation(
        "post",
        "/v1/explain",
        "The top drivers of one known customer's prediction by one model, in plain words, with SHAP values",
        ExplainResponse,
        ExplainRequest,
        (*BODY_ERRORS, 404, *COMMON_ERRORS),
    ),
    Operation(
        "post",
        "/v1/events",
        "Rows of the data contract's event tables, appended durably and pushed to the online store (202)",
        EventsResponse,
        EventsRequest,
        (*BODY_ERRORS, *COMMON_ERRORS),
        success=202,
    ),
    Operation("get", "/v1/models", "The model versions being served, and whether answers are degraded", ModelsResponse),
)

HEALTH = {
    "/healthz": "the process is up (no token)",
    "/livez": "the process is up (no token)",
    "/readyz": "the service can answer (no token); it stays ready while a dependency is degraded",
    "/metrics": "Prometheus metrics, with `sendwise_degraded` and `sendwise_model_info` (no token)",
}


def openapi_document(templates: Sequence[str], version: str = "0") -> dict[str, Any]:
    """The document, `templates` being the layouts `/v1/render` takes."""
    models: list[tuple[type[BaseModel], Any]] = [(ErrorAnswer, "serialization")]
    for operation in OPERATIONS:
        models.append((operation.answer, "serialization"))
        if operation.request is not None:
            models.append((operation.request, "validation"))
    keyed, definitions = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = definitions.get("$defs", {})
    _publish_templates(schemas[RenderRequest.__name__], templates)
    paths: dict[str, Any] = {path: {"get": _health(summary)} for path, summary in HEALTH.items()}
    for operation in OPERATIONS:
        paths[operation.path] = {operation.method: _operation(operation, keyed)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "sendwise",
            "version": version,
            "description": "Open propensity, best send hour and next best offer for each email recipient.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(operation: Operation, keyed: Mapping[tuple[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    answer = keyed[(operation.answer, "serialization")]
    error = keyed[(ErrorAnswer, "serialization")]
    responses: dict[str, Any] = {str(operation.success): {"description": "the answer", "content": _json(answer)}}
    for status in sorted(operation.errors):
        responses[str(status)] = {"description": ERRORS[status], "content": _json(error)}
    described: dict[str, Any] = {
        "summary": operation.summary,
        "operationId": operation.path.removeprefix("/v1/"),
        "responses": responses,
        "security": [{"bearer": []}],
    }
    if operation.request is not None:
        request = keyed[(operation.request, "validation")]
        described["requestBody"] = {"required": True, "content": _json(request)}
    return described


def _health(summary: str) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": {"description": "ok"}}, "security": []}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _publish_templates(render_request: dict[str, Any], templates: Sequence[str]) -> None:
    """The `template` of each way to ask `/v1/render`: one of `templates`, or null for the decision's."""
    for way in render_request["anyOf"]:
        template = way["properties"]["template"]
        way["properties"]["template"] = {
            "anyOf": [{"type": "string", "enum": list(templates)}, {"type": "null"}],
            "default": None,
            "description": template.get("description", ""),
        }


class DocumentRoute:
    """ASGI middleware answering `GET /docs.json` with `document()` (in place of BentoML's own document).
    It sits behind `serving.http_app.ApiGuard`, so the document needs the token like the routes it describes."""

    def __init__(self, app: ASGIApp, *, document: Callable[[], dict[str, Any]]) -> None:
        self.app = app
        self.document = document

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DOCUMENT_PATH or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await JSONResponse(self.document())(scope, receive, send)
