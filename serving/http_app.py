"""The HTTP layer around the BentoML service: auth, body limits and readable errors for `/v1/*`.

`ApiGuard` is an ASGI middleware that BentoML puts in front of every route of the service, the
`@bentoml.api` routes and the mounted GET app alike. On every path but the health routes and `/metrics`
(`OPEN_PATHS`) it requires `Authorization: Bearer <token>` when a token is configured (401 otherwise):
the `/v1` routes, and BentoML's own pages too (`/docs.json`, `/schema.json`, `/`, `/static_content`), which
describe the API to whoever may call it. For paths under `/v1` it also
- reads the body (at most `MAX_BODY_BYTES`, 413 beyond) and hands it on as JSON whatever the declared
  Content-Type, so that `curl -d` works and no other deserializer is reachable;
- turns every error answer into one shape, `ErrorAnswer`, whose details name the offending field
  (BentoML answers pydantic validation errors with its own 400 body; those are rewritten here).

What the engine cannot answer for a reason the client can act on is a `serving.errors.ServingError`; the
service answers it with `error_response` (its status, e.g. 404 for an unknown customer, and its message).

Health (`/healthz`, `/livez`, `/readyz`) and `/metrics` stay open: load balancers and Prometheus call them
without credentials, and they tell nothing about customers.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bentoml._internal.server.http import traffic
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import ServingError
from serving.schemas import ErrorAnswer, FieldError

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_DETAILS = 50
JSON = b"application/json"


INTERNAL_ERROR = ErrorAnswer(
    error="internal error", message="an unexpected error occurred; the server log has the details"
)
"""What a 500 says: the details are in the server's log, not in the answer."""


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def field_name(loc: Sequence[str | int]) -> str:
    """`("recipients", 3, "customer_id")` -> `recipients[3].customer_id`; the whole body is `body`."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


def _readable(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    message = str(error.get("msg", "invalid value"))
    if kind == "model_type" and not error.get("loc"):
        return "the body must be a JSON object with the request's fields"
    if kind == "extra_forbidden":
        return "unknown field (see /docs.json for the fields this route takes)"
    return message.removeprefix("Value error, ")


def validation_answer(errors: Sequence[Mapping[str, Any]]) -> tuple[int, ErrorAnswer]:
    """Status and answer for pydantic errors: 400 for a body that is not JSON, 422 for invalid fields."""
    details = [FieldError(field=field_name(e.get("loc", ())), message=_readable(e)) for e in errors]
    if any(e.get("type") == "json_invalid" for e in errors):
        status, error = 400, "malformed JSON"
    else:
        status, error = 422, "invalid request"
    shown = details[:MAX_DETAILS]
    message = "; ".join(f"{d.field}: {d.message}" for d in shown[:5])
    if len(details) > 5:
        message += f"; and {len(details) - 5} more"
    return status, ErrorAnswer(error=error, message=message, details=shown)


def error_answer(error: ServingError) -> ErrorAnswer:
    """The answer to a request the engine cannot answer: its error, its sentence, and the field it concerns."""
    details = [FieldError(field=error.field, message=error.message)] if error.field else []
    return ErrorAnswer(error=error.error, message=error.message, details=details)


def error_response(error: ServingError) -> JSONResponse:
    """`error_answer` with the error's status, as a route returns it."""
    return JSONResponse(error_answer(error).model_dump(), status_code=error.status)


def _answer_from_body(status: int, body: bytes) -> tuple[int, ErrorAnswer]:
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and {"error", "message", "details"} <= parsed.keys():
        return status, ErrorAnswer.model_validate(parsed)
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list) and status == 400:
        return validation_answer([e for e in parsed["detail"] if isinstance(e, dict)])
    if status >= 500:
        return status, INTERNAL_ERROR
    if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
        parsed = parsed[0]
    if isinstance(parsed, dict) and "error" in parsed:
        text = str(parsed["error"])
    elif isinstance(parsed, dict) and "detail" in parsed:
        text = str(parsed["detail"])
    else:
        text = body.decode("utf-8", "replace").strip() or "request failed"
    return status, ErrorAnswer(error=text.lower(), message=text)


async def send_answer(
    send: Send, status: int, answer: ErrorAnswer, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = answer.model_dump_json().encode()
    raw_headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


NO_TOKEN_FROM_ELSEWHERE = ErrorAnswer(
    error="forbidden",
    message=(
        "this service was started without SENDWISE_API_TOKEN, so it answers only requests from its own machine: "
        "set SENDWISE_API_TOKEN where it runs and send `Authorization: Bearer <token>`"
    ),
)


def from_this_machine(scope: Scope) -> bool:
    """True where the request came over loopback (or a Unix socket, which has no client address)."""
    client = scope.get("client")
    if not client:
        return True
    try:
        return ipaddress.ip_address(str(client[0]).split("%")[0]).is_loopback
    except ValueError:
        return str(client[0]).lower() == "localhost"


def token_matches(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


class _ErrorShaper:
    """Wraps `send`: success answers pass through, error answers are buffered and reshaped."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self._start = message
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status, answer = _answer_from_body(self._start["status"], b"".join(self._chunks))
        kept = [(k, v) for k, v in self._start.get("headers", ()) if k not in (b"content-type", b"content-length")]
        await send_answer(self._send, status, answer, kept)


class ApiGuard:
    """ASGI middleware: bearer auth on every route but health and metrics; for `/v1`, the body size limit, a
    JSON body and field-naming errors.

    `token` is called per request and returns the configured token; it is a callable because the settings are
    read when the service starts, not when this module is imported. Without one, only requests from this
    machine are answered (403 for any other client): `sendwise serve` refuses to listen beyond loopback without a
    token, and this keeps the same rule for a service started any other way (a container's `bentoml serve`).
    """

    def __init__(self, app: ASGIApp, *, token: Callable[[], str | None], max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            expected = self.token()
        except Exception:
            logger.exception("cannot read the API token; refusing %s", scope["path"])
            await send_answer(send, 503, ErrorAnswer(error="unavailable", message="the service is starting"))
            return
        if expected and not token_matches(bearer_token(scope), expected):
            await self._unauthorized(scope, send)
            return
        if not expected and not from_this_machine(scope):
            await send_answer(send, 403, NO_TOKEN_FROM_ELSEWHERE)
            return
        if not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(_as_json(scope), replay(whole, receive), _ErrorShaper(send))

    @staticmethod
    async def _unauthorized(scope: Scope, send: Send) -> None:
        presented = bearer_token(scope) is not None
        challenge = b'Bearer realm="sendwise"' + (b', error="invalid_token"' if presented else b"")
        message = (
            "the bearer token is not the one this service accepts"
            if presented
            else "this route needs the header `Authorization: Bearer <token>` (SENDWISE_API_TOKEN)"
        )
        answer = ErrorAnswer(
            error="unauthorized",
            message=message,
            details=[FieldError(field="Authorization", message=message)],
        )
        await send_answer(send, 401, answer, [(b"www-authenticate", challenge)])

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None after answering 413 when it is larger than the limit."""
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while not too_large:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            too_large = size > self.max_body_bytes
            if not message.get("more_body", False):
                break
        if too_large:
            limit_mb = self.max_body_bytes // (1024 * 1024)
            message_text = f"the request body is larger than {limit_mb} MB; send smaller batches"
            answer = ErrorAnswer(
                error="request too large",
                message=message_text,
                details=[FieldError(field="body", message=message_text)],
            )
            await send_answer(send, 413, answer, [(b"connection", b"close")])
            return None
        return b"".join(chunks)


def _as_json(scope: Scope) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", JSON)]}


def replay(first: Message, receive: Receive) -> Receive:
    """A `receive` that hands out `first` (a body already read), then whatever `receive` gives."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return replayed


class RequestTimeout(traffic.TimeoutMiddleware):
    """BentoML's per-request timeout (`traffic.timeout`), without its leak.

    BentoML 1.4's `TimeoutMiddleware` arms a `loop.call_later` timer per request and never cancels it. The
    timer lives for the whole timeout (300 s here) and holds the request's context: its OpenTelemetry span,
    about 20 objects in all. At 1,000 requests a second that is millions of live objects, and the cycle
    collector's full passes over them stalled every client for 40 ms at first, 200 ms after 8 seconds, growing
    with the load. This one arms the timer in an empty context and cancels it when the request is done.
    A request still running at the timeout is answered 504 in the shape of every other error.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, started, context=contextvars.Context())

        async def send_started(message: Message) -> None:
            if not started.done():
                started.set_result(None)
            await send(message)

        handling = asyncio.ensure_future(self.app(scope, receive, send_started))
        try:
            await started
        except TimeoutError:
            if handling.cancel():
                text = f"the request took longer than {self.timeout:g} s; send smaller batches"
                await send_answer(send, 504, ErrorAnswer(error="timeout", message=text))
        else:
            await handling
        finally:
            timer.cancel()


def fix_request_timeout() -> None:
    """Make BentoML build its timeout middleware from `RequestTimeout`. Call it before the service's app is
    built (`serving.service` does at import, in the server and in each worker): BentoML imports the class from
    this module when it assembles the middlewares."""
    # BentoML offers no hook for its timeout middleware; mypy sees a class assigned over a class.
    traffic.TimeoutMiddleware = RequestTimeout  # type: ignore[misc]


class QuietClientErrors(logging.Filter):
    """BentoML logs every request validation error as an ERROR with its traceback; these are the client's
    errors, answered with a 4xx that names the field, so log them as one INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "Invalid request on %s [%s], answered with a 4xx"
        return True


BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def quiet_client_errors() -> None:
    """Install `QuietClientErrors` on the logger BentoML reports request errors with (once)."""
    target = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, QuietClientErrors) for f in target.filters):
        target.addFilter(QuietClientErrors())


def status_metrics(status: Mapping[str, Any], versions: Mapping[str, str | None]) -> str:
    """Prometheus lines saying whether answers are degraded and which model versions are served."""
    degraded = 0 if status.get("status", "ok") == "ok" else 1
    lines = [
        "# HELP sendwise_degraded 1 when a dependency (e.g. the online store) is down: answers are degraded",
        "# TYPE sendwise_degraded gauge",
        f"sendwise_degraded {degraded}",
        "# HELP sendwise_model_info the registered model version served for each model",
        "# TYPE sendwise_model_info gauge",
    ]
    for model, version in sorted(versions.items()):
        labels = f'model="{_label(model)}",version="{_label(version or "none")}"'
        lines.append(f"sendwise_model_info{{{labels}}} 1")
    if "degraded_decisions" in status:
        lines += [
            "# HELP sendwise_degraded_decisions_total decisions answered from stale or prior features (degraded)",
            "# TYPE sendwise_degraded_decisions_total counter",
            f"sendwise_degraded_decisions_total {int(status['degraded_decisions'])}",
        ]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
