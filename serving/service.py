"""The BentoML service: a thin shell over `serving.engine.Engine`.

Routes (all JSON; all but health and `/metrics` need `Authorization: Bearer <token>` when `SENDWISE_API_TOKEN`
is set):

- `POST /v1/decide`, `POST /v1/render`, `POST /v1/explain`, `POST /v1/forget`, `POST /v1/events` (answered
  202): the request model of
  `serving.schemas` is the whole body (a positional-only parameter makes it BentoML's root input, not a field of
  a wrapper);
- `GET /v1/models`: a small Starlette app mounted on the service (FastAPI would add 6 MB to each of its
  processes for one route), answered by `Sendwise.served_models`;
- `GET /healthz`, `/livez`, `/readyz`, `/metrics`: BentoML's own, open. `/readyz` stays ready when a
  dependency is degraded; the answers, `/v1/models` and the `sendwise_degraded` metric say so instead;
- `GET /docs.json`: the OpenAPI document of `serving.openapi` (behind the token, like every route but health
  and metrics).

`/v1/render` and `/v1/explain` are plain (sync) methods: BentoML runs them in its thread pool (`threads`).
`/v1/decide` is async: small requests that arrive together are merged and decided on the event loop (a few
milliseconds a call, `serving.coalesce`), larger ones in worker threads, so the event loop keeps answering
health checks while a big batch is being decided. A `serving.errors.ServingError` (an unknown customer, a
model without a champion, an unknown template) is answered with its own status and message; any other
exception in the engine becomes a 500 for that request only (BentoML logs it).
`serving.http_app.ApiGuard` shapes every `/v1` error answer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import bentoml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sendwise.champions import PendingChampions, import_lightgbm_without_sklearn
from sendwise.settings import Settings
from serving.coalesce import DecideCoalescer
from serving.errors import ServingError
from serving.http_app import (
    INTERNAL_ERROR,
    ApiGuard,
    error_answer,
    error_response,
    fix_request_timeout,
    quiet_client_errors,
    replay,
    send_answer,
    status_metrics,
)
from serving.openapi import DocumentRoute, openapi_document
from serving.schemas import (
    DecideRequest,
    DecideResponse,
    EventsRequest,
    EventsResponse,
    ExplainRequest,
    ExplainResponse,
    ForgetRequest,
    ForgetResponse,
    ModelsResponse,
    RenderRequest,
    RenderResponse,
)

if TYPE_CHECKING:
    from serving.engine import Engine

logger = logging.getLogger(__name__)

ENGINE_THREADS = 4
REQUEST_TIMEOUT_SECONDS = 300


def load_engine(settings: Settings) -> Engine:
    """The engine with the champions, imported here rather than at the top: LightGBM and Feast take seconds to
    import, and `bentoml serve` imports this module in its supervisor process too. MLflow is never imported
    here: a child process exports the champions while the rest loads (`sendwise.champions`)."""
    import_lightgbm_without_sklearn()
    pending = PendingChampions(settings.tracking_uri)
    from serving.engine import Engine

    return Engine.load(settings, champions=pending.result)


fix_request_timeout()

DECIDE_PATH = "/v1/decide"
QUIET_PATHS = ["/metrics", "/healthz", "/livez", "/readyz"]  # BentoML's own access-log exceptions


def request_logging(trace_decide: bool) -> dict[str, Any]:
    """BentoML's tracing and access-log settings: `/v1/decide` is neither traced nor access-logged unless
    `SENDWISE_TRACE_DECIDE` is set (read when the service is defined, so before its settings are)."""
    if trace_decide:
        return {}
    return {
        "tracing": {"excluded_urls": [DECIDE_PATH]},
        "logging": {"access": {"skip_paths": [*QUIET_PATHS, DECIDE_PATH]}},
    }


async def _models(_: Request) -> JSONResponse:
    """`GET /v1/models`: the model versions being served, and whether answers are degraded."""
    service = cast("Sendwise", bentoml.get_current_service())
    try:
        answer = await run_in_threadpool(service.served_models)
    except Exception:
        logger.exception("GET /v1/models failed")
        return JSONResponse(INTERNAL_ERROR.model_dump(), status_code=500)
    return JSONResponse(answer.model_dump(mode="json"))


info_app = Starlette(routes=[Route("/models", _models, methods=["GET"])])


@bentoml.service(
    threads=ENGINE_THREADS,
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
    **request_logging(Settings().trace_decide),
)
@bentoml.asgi_app(info_app, path="/v1", name="sendwise-info")
class Sendwise:
    """sendwise: open propensity, best send hour and next best offer for each email recipient."""

    def __init__(self) -> None:
        settings = Settings()
        settings.activate()
        self.settings = settings
        self.engine = load_engine(settings)
        self.engine.refresh_in_background = True  # small decides run on the event loop (serving.coalesce)
        self._limiter: anyio.CapacityLimiter | None = None
        self._coalescer: DecideCoalescer | None = None
        quiet_client_errors()
        if settings.champion_poll_seconds > 0:  # new champions swapped in without a restart
            from serving.champions import ChampionWatcher

            ChampionWatcher(settings, lambda: self.engine, self._serve_engine).start()

    def _serve_engine(self, engine: Engine) -> None:
        """Serve `engine` from the next request on (requests already running finish on the one they took)."""
        engine.refresh_in_background = True
        self.engine = engine

    @bentoml.api(route="/v1/decide", output_spec=DecideResponse)
    async def decide(self, request: DecideRequest, /) -> Response:
        """One decision per recipient, in request order: whether and when to send, offers, reasons.

        The engine builds the answer as plain data in the shape of `DecideResponse` and it is sent encoded as it
        is (orjson): validating 10,000 decisions into models only to serialize them again cost more than
        deciding them. Small requests that arrive together are decided together, on the event loop
        (`serving.coalesce`: a few milliseconds a call); larger ones in worker threads, at most
        `ENGINE_THREADS` at once, so the event loop keeps answering while a big batch is decided."""
        return Response(b"".join(await self.decide_body(request)), media_type="application/json")

    async def decide_body(self, request: DecideRequest) -> list[bytes | memoryview]:
        """The encoded answer of `/v1/decide` in pieces, to be sent in order (the route's, and `DecideLane`'s,
        which does not join them: `Engine.decide_chunks`)."""
        limiter, coalescer = self._decide_workers()
        if coalescer.takes(request):
            return [await coalescer.decide(request)]
        return await anyio.to_thread.run_sync(self.engine.decide_chunks, request, limiter=limiter)

    def _decide_workers(self) -> tuple[anyio.CapacityLimiter, DecideCoalescer]:
        """Made in the event loop on first use (anyio binds a limiter to the running loop)."""
        if self._limiter is None or self._coalescer is None:
            self._limiter = anyio.CapacityLimiter(ENGINE_THREADS)
            self._coalescer = DecideCoalescer(lambda request: self.engine.decide_payload(request))
        return self._limiter, self._coalescer

    @bentoml.api(route="/v1/render", output_spec=RenderResponse)
    def render(self, request: RenderRequest, /) -> RenderResponse | Response:
        """One recipient's email: the chosen modules with their reasons, subject, HTML and plain text."""
        try:
            return self.engine.render(request)
        except ServingError as error:
            return error_response(error)

    @bentoml.api(route="/v1/explain", output_spec=ExplainResponse)
    def explain(self, request: ExplainRequest, /) -> ExplainResponse | Response:
        """The top drivers of one known customer's prediction by one model, in plain words, with SHAP values
        (404 for a customer the online features do not have)."""
        try:
            return self.engine.explain(request)
        except ServingError as error:
            return error_response(error)

    @bentoml.api(route="/v1/forget", output_spec=ForgetResponse)
    def forget(self, request: ForgetRequest, /) -> ForgetResponse | Response:
        """Erase customers: raw store, quarantine, features, online store, decision log and reports, with a
        tombstone that keeps a re-ingested export from bringing them back (`serving.forget`). The answer
        counts what went; it never repeats the ids."""
        try:
            return self.engine.forget(request)
        except ServingError as error:
            return error_response(error)

    @bentoml.api(route="/v1/events", output_spec=EventsResponse)
    def events(self, request: EventsRequest, /) -> Response:
        """Rows of the data contract's event tables, appended durably to the raw store and pushed to the online
        store before the answer (202); a batch with a bad row is refused whole (422 naming every bad row)."""
        from sendwise.ingest.appended import EventsError  # pandas: not in the supervisor process
        from serving.events import events_error_answer

        try:
            answer = self.engine.events(request)
        except EventsError as error:
            return JSONResponse(events_error_answer(error).model_dump(), status_code=422)
        except ServingError as error:
            return error_response(error)
        return JSONResponse(answer.model_dump(), status_code=202)

    def served_models(self) -> ModelsResponse:
        status = self.engine.status()
        return ModelsResponse.model_validate(
            {
                "model_versions": self.engine.model_versions(),
                "status": status.get("status", "ok"),
                "reasons": status.get("reasons", []),
            }
        )

    def __metrics__(self, content: str) -> str:
        """BentoML's hook on `/metrics`: add whether answers are degraded and the versions served."""
        try:
            extra = status_metrics(self.engine.status(), self.engine.model_versions())
        except Exception:
            logger.exception("engine status failed while serving /metrics")
            extra = status_metrics({"status": "degraded"}, {})
        if content and not content.endswith("\n"):
            content += "\n"
        return content + extra


def _api_token() -> str | None:
    """The token the running service was started with (its settings are read in `__init__`)."""
    token: str | None = bentoml.get_current_service().settings.api_token
    return token


class DecideLane:
    """`POST /v1/decide` answered here, past auth and the body checks of `ApiGuard`, without the rest of
    BentoML's route (its request context, router, input descriptor and per-call signature inspection): about
    0.7 ms a request, as much as a triggered email's share of a merged decide. The answer is the route's own
    (`Sendwise.decide_body`). A body that does not validate goes on to the route, which answers the error as
    it always has; so does anything else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DECIDE_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        message = await receive()  # ApiGuard hands the whole body on in one message
        try:
            request = DecideRequest.model_validate_json(message.get("body", b""))
        except ValidationError:
            await self.app(scope, replay(message, receive), send)
            return
        try:
            chunks = await cast("Sendwise", bentoml.get_current_service()).decide_body(request)
        except ServingError as error:
            await send_answer(send, error.status, error_answer(error))
            return
        except Exception:
            logger.exception("POST %s failed", DECIDE_PATH)
            await send_answer(send, 500, INTERNAL_ERROR)
            return
        length = sum(len(chunk) for chunk in chunks)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunks.reverse()  # each piece is let go once sent
        while chunks:
            await send({"type": "http.response.body", "body": bytes(chunks.pop()), "more_body": bool(chunks)})


def _document() -> dict[str, Any]:
    """The OpenAPI document of the running service: its templates are the built-in ones and its settings'."""
    from serving.render import available_templates

    settings = cast("Sendwise", bentoml.get_current_service()).settings
    return openapi_document(available_templates(settings.templates_dir), version=sendwise_version())


def sendwise_version() -> str:
    """The installed distribution's version, else that of the pyproject.toml beside the packages: a bento holds
    the source, not the distribution."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sendwise")
    except PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"]) if pyproject.exists() else "unknown"


# mypy keeps the class type through class decorators; `Sendwise` is a bentoml.Service here
cast("bentoml.Service[Any]", Sendwise).add_asgi_middleware(ApiGuard, token=_api_token)
cast("bentoml.Service[Any]", Sendwise).add_asgi_middleware(DocumentRoute, document=_document)
cast("bentoml.Service[Any]", Sendwise).add_asgi_middleware(DecideLane)
