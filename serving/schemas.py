"""Request and answer models of the HTTP API, field for field as DESIGN.md defines them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

MAX_ID_LENGTH = 128
"""The longest id a client may send: customer, campaign, offer; and a campaign's topic."""
CustomerId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_LENGTH, pattern=r"[^\s\x85]")
]
"""An id with a character that is not white space: stripping removes Unicode white space, which is JSON
Schema's (ECMA-262's) `\\s` and NEL (U+0085)."""
OfferId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
CampaignKind = Literal["promotional", "newsletter", "triggered", "transactional"]
MAX_RECIPIENTS = 10_000
MAX_WINDOW_HOURS = 168
MAX_OFFER_IDS = 1_000
MAX_INTERESTS = 50
MAX_INTEREST_LENGTH = 64
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_NAME_LENGTH = 64
MAX_ATTRIBUTE_TEXT_LENGTH = 256
MAX_TIMEZONE_LENGTH = 64
MAX_EXPLAINED_RECIPIENTS = 1_000
"""The most recipients a `/v1/decide` with `explain: true` takes (explaining costs more than deciding)."""
SEND_AT_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
"""The hours a `window_start` or an explained `send_at` may be (from the first, before the second): anything else
is a typo."""

WHOLE_UTC_HOUR = (
    r"^20[0-9]{2}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
    r"T([01][0-9]|2[0-3]):00:00Z$"
)
"""What the OpenAPI document promises a whole UTC hour looks like: a pattern, not `format: date-time`, so that
tools generating requests from the document make only hours the service takes (it also takes other offsets
than Z, and 29 February)."""
WholeHour = Annotated[
    datetime,
    WithJsonSchema(
        {"type": "string", "pattern": WHOLE_UTC_HOUR, "description": "a whole UTC hour, e.g. 2026-11-26T07:00:00Z"}
    ),
]


def _published_recipient(schema: dict[str, Any]) -> None:
    """What the validators of `Recipient` check, said in the document: zone names, attribute names and values."""
    from zoneinfo import available_timezones

    properties = schema["properties"]
    properties["timezone"] = {
        "anyOf": [{"type": "string", "enum": sorted(available_timezones())}, {"type": "null"}],
        "default": None,
        "description": "an IANA time zone name, e.g. Europe/Berlin",
    }
    properties["attributes"]["propertyNames"] = {"pattern": "^attr_", "maxLength": MAX_ATTRIBUTE_NAME_LENGTH}
    properties["attributes"]["additionalProperties"] = {
        "anyOf": [
            {"type": "string", "maxLength": MAX_ATTRIBUTE_TEXT_LENGTH},
            {"type": "number"},
            {"type": "boolean"},
        ]
    }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Interest = Annotated[str, StringConstraints(max_length=MAX_INTEREST_LENGTH)]


class Recipient(_Strict):
    """One recipient; the context fields matter for customers sendwise does not know yet (cold start)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_published_recipient)

    customer_id: CustomerId
    timezone: str | None = Field(default=None, max_length=MAX_TIMEZONE_LENGTH)
    country: str | None = Field(default=None, max_length=2)
    interests: list[Interest] = Field(default_factory=list, max_length=MAX_INTERESTS)
    attributes: dict[str, str | float | int | bool] = Field(default_factory=dict, max_length=MAX_ATTRIBUTES)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"timezone {value!r} is not a zone name zoneinfo knows (e.g. Europe/Berlin)") from error
        return value

    @field_validator("attributes")
    @classmethod
    def _attr_names(cls, value: dict[str, object]) -> dict[str, object]:
        long_names = [
            name[:MAX_ATTRIBUTE_NAME_LENGTH] + "..." for name in value if len(name) > MAX_ATTRIBUTE_NAME_LENGTH
        ]
        if long_names:
            raise ValueError(f"attribute names are at most {MAX_ATTRIBUTE_NAME_LENGTH} characters: {long_names[:3]}")
        bad = [name for name in value if not name.startswith("attr_")]
        if bad:
            raise ValueError(f"attribute names must start with 'attr_' as in the data contract: {bad[:3]}")
        long = [name for name, text in value.items() if isinstance(text, str) and len(text) > MAX_ATTRIBUTE_TEXT_LENGTH]
        if long:
            raise ValueError(f"attribute values are at most {MAX_ATTRIBUTE_TEXT_LENGTH} characters: {long[:3]}")
        return value


OneLine = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\r\n]*$")]
"""Text that reaches an email header: one line, no CR or LF."""


class Campaign(_Strict):
    """The campaign a batch belongs to: logged with each decision (lift is measured per `campaign_id`)."""

    kind: CampaignKind = "promotional"
    topic: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    campaign_id: str | None = Field(
        default=None, max_length=MAX_ID_LENGTH, description="the sending system's campaign id"
    )
    subject: OneLine | None = Field(
        default=None,
        description="the subject line; `{{ attr_first_name | default('there') }}` and the like personalise it from "
        "the customer's attributes (Jinja2 syntax, sandboxed)",
    )
    preheader: OneLine | None = Field(
        default=None, description="the line mail clients show after the subject; personalised like `subject`"
    )


def _published_quiet_hours(schema: dict[str, Any]) -> None:
    """`end` != `start`, said in the document: one choice of `end` per `start` (JSON Schema compares no fields)."""
    hours = range(24)
    schema["anyOf"] = [
        {
            "properties": {
                "start": {"type": "integer", "enum": [start]},
                "end": {"type": "integer", "enum": [end for end in hours if end != start]},
            }
        }
        for start in hours
    ]


class QuietHours(_Strict):
    """No sends from `start`:00 until `end`:00 in each recipient's local time; start > end wraps midnight
    (22 -> 7: 22:00 to 06:59 are quiet)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_published_quiet_hours)

    start: int = Field(ge=0, le=23)
    end: int = Field(ge=0, le=23)

    @field_validator("end")
    @classmethod
    def _not_empty(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("start") == value:
            raise ValueError(
                f"quiet hours from {value} to {value} are ambiguous (no hour or every hour): give end != start"
            )
        return value


class FrequencyCap(_Strict):
    """Skip a recipient who already got `emails` or more emails in the `days` before the window."""

    emails: int = Field(ge=1)
    days: int = Field(ge=1, le=365)


class Constraints(_Strict):
    """The sender's rules for one batch (DESIGN.md): quiet hours, the most of the batch one hour may get, a
    frequency cap and no offer repeated within N days."""

    quiet_hours: QuietHours | None = Field(
        default=None, description="hours in each recipient's local time that no send may fall in"
    )
    max_share_per_hour: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="the most any one hour may get: ceil(share × the recipients of this batch that are sent); the "
        "batch is assigned so that the summed open probability is as high as the cap allows",
    )
    frequency_cap: FrequencyCap | None = Field(
        default=None,
        description="skip a recipient with `emails` or more sends in the `days` before the window: the ESP's "
        "sends in the raw store, then sendwise's own decisions with send: true after the store's data ends",
    )
    no_repeat_offer_days: int | None = Field(
        default=None,
        ge=1,
        le=365,
        description="leave out offers the recipient was exposed to (or that sendwise decided to send them) in "
        "the N days before the window; the control offer is exempt",
    )


def in_send_range(value: datetime, name: str) -> datetime:
    """`value` in UTC, if it falls in `SEND_AT_RANGE` (anything else is a typo, and year 1 or 9999 moved to UTC
    would fall off the calendar)."""
    first, end = SEND_AT_RANGE
    out_of_range = ValueError(f"{name} must be an hour of the years {first.year} to {end.year - 1}")
    try:
        value = value.astimezone(UTC)
    except OverflowError as error:
        raise out_of_range from error
    if not first <= value < end:
        raise out_of_range
    return value


def whole_utc_hour(value: datetime, name: str, example: str) -> datetime:
    """`value` in UTC if it has a time zone, falls in `SEND_AT_RANGE` and is a whole hour; else a ValueError
    naming `name` with `example` of what is expected."""
    if value.tzinfo is None:
        raise ValueError(f"{name} needs a time zone, e.g. {example}")
    value = in_send_range(value, name)
    if value.minute or value.second or value.microsecond:
        raise ValueError(f"{name} must be a whole hour, e.g. {example}")
    return value


def next_whole_hour(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _published_decide(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """`explain: true` takes at most `MAX_EXPLAINED_RECIPIENTS`, said in the document. Not in BentoML's copy of
    the model (its own OpenAPI 3.0 document, which `bentoml build` writes into the bento, has no `if`); the
    document the service publishes is `serving.openapi`'s."""
    if model is not DecideRequest:
        return
    schema["if"] = {"properties": {"explain": {"const": True}}, "required": ["explain"]}
    schema["then"] = {"properties": {"recipients": {"maxItems": MAX_EXPLAINED_RECIPIENTS}}}


class DecideRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_published_decide)

    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    campaign: Campaign = Field(default_factory=Campaign)
    window_start: WholeHour | None = None
    window_hours: int = Field(default=24, ge=1, le=MAX_WINDOW_HOURS)
    offer_ids: list[OfferId] | None = Field(default=None, max_length=MAX_OFFER_IDS)
    k_offers: int = Field(default=3, ge=0, le=50)
    explore_share: float | None = Field(default=None, ge=0.0, le=1.0)
    constraints: Constraints | None = None
    explain: bool = Field(
        default=False,
        description=f"add `drivers` to each decision to send: the top three drivers of its open probability at its "
        f"send_at (at most {MAX_EXPLAINED_RECIPIENTS:,} recipients)",
    )

    @field_validator("explain")
    @classmethod
    def _few_enough_to_explain(cls, value: bool, info: ValidationInfo) -> bool:
        recipients = info.data.get("recipients")
        if value and recipients is not None and len(recipients) > MAX_EXPLAINED_RECIPIENTS:
            raise ValueError(
                f"explain: true takes at most {MAX_EXPLAINED_RECIPIENTS:,} recipients and this request has "
                f"{len(recipients):,}: send the recipients to explain in smaller requests, or leave explain out"
            )
        return value

    @field_validator("window_start")
    @classmethod
    def _whole_utc_hour(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return whole_utc_hour(value, "window_start", "2026-11-26T07:00:00Z")

    def resolved_window_start(self) -> datetime:
        return self.window_start or next_whole_hour()


class OfferScore(BaseModel):
    offer_id: str
    kind: str
    conversion_probability: float
    expected_value: float
    incremental_value: float | None = None


class Driver(BaseModel):
    """One feature's part in a prediction."""

    feature: str = Field(description="the model's name for the feature (the sentence says it in plain words)")
    value: float | str | None = Field(description="the feature's value for this prediction (null: unknown)")
    shap_value: float = Field(
        description="its SHAP value, in log-odds: base_value plus every feature's SHAP value is the prediction's "
        "log-odds"
    )
    sentence: str = Field(
        description="in plain words, on the probability scale: the prediction beside what it would be without this "
        "feature's part (as if it counted as for an average customer), e.g. \"the customer's past open rate (42%) "
        'makes an open about twice as likely: 31% instead of 15%"'
    )


class Decision(BaseModel):
    customer_id: str
    decision_id: str
    send: bool
    send_at: datetime | None = None
    open_probability: float | None = None
    hourly_open_probability: list[float] = Field(default_factory=list)
    explore: bool = False
    propensity: float = 1.0
    offers: list[OfferScore] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    cold_start: bool = False
    history_emails: int = 0
    holdout: bool = Field(
        default=False,
        description="the customer is in the global holdout (SENDWISE_HOLDOUT_SHARE, stable by id): never sent "
        "promotional or newsletter email; triggered and transactional email is not held out",
    )
    reasons: list[str] = Field(default_factory=list)
    drivers: list[Driver] | None = Field(
        default=None,
        description="with `explain: true`, on a decision to send: the three strongest drivers of `open_probability` "
        "(the open probability at `send_at`, by the model that chose the hour), strongest first; null otherwise",
    )


class DecideResponse(BaseModel):
    model_versions: dict[str, str | None]
    status: Literal["ok", "degraded"] = Field(
        default="ok",
        description="`degraded` when the online features could not be read: the decisions come from the last "
        "features read (population priors for customers without any), and `reasons` says what failed",
    )
    reasons: list[str] = Field(default_factory=list, description="why the answer is degraded (empty when ok)")
    decisions: list[Decision]


DecisionId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^d-[0-9a-f]{32}$")]


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A field's schema without its `null` choice (`X | None` -> X), keeping its description."""
    (chosen,) = [choice for choice in schema["anyOf"] if choice.get("type") != "null"]
    return {**chosen, **({"description": schema["description"]} if "description" in schema else {})}


def _published_render(schema: dict[str, Any]) -> None:
    """The two ways to ask, as two object schemas (the model validator's rule, said in the document)."""
    properties = schema.pop("properties")
    schema.pop("additionalProperties", None)
    fresh = {name: value for name, value in properties.items() if name != "decision_id"}
    fresh["customer_id"] = _not_null(properties["customer_id"])
    schema["anyOf"] = [
        _object(
            {"decision_id": _not_null(properties["decision_id"]), "template": properties["template"]}, ["decision_id"]
        ),
        _object(fresh, ["customer_id"]),
    ]


class RenderRequest(_Strict):
    """Either `decision_id` (render exactly that logged decision) or `customer_id` (decide, log and render)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_published_render)

    decision_id: DecisionId | None = Field(
        default=None, description="a decision `/v1/decide` returned: renders it, makes no new decision"
    )
    customer_id: CustomerId | None = None
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the layout: a built-in (`promotional`, `newsletter`) or one of SENDWISE_TEMPLATES_DIR; "
        "default: the decision's",
    )
    campaign: Campaign | None = Field(default=None, description="with `customer_id` only")
    recipient: Recipient | None = Field(default=None, description="with `customer_id` only: cold-start context")

    @model_validator(mode="after")
    def _one_way(self) -> RenderRequest:
        if self.decision_id is None and self.customer_id is None:
            raise ValueError("give decision_id (render a logged decision) or customer_id (decide and render)")
        if self.decision_id is not None and (
            self.customer_id is not None or self.campaign is not None or self.recipient is not None
        ):
            raise ValueError(
                "decision_id renders the logged decision as it was decided: give no customer_id, campaign or "
                "recipient with it"
            )
        return self


class RenderedModule(BaseModel):
    name: str
    reason: str


class RenderResponse(BaseModel):
    customer_id: str
    decision_id: str
    template: str
    send: bool
    send_at: datetime | None = None
    subject: str | None = None
    preheader: str | None = None
    html: str | None = None
    text: str | None = None
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="List-Unsubscribe (https, and mailto where configured), List-Unsubscribe-Post (RFC 8058), "
        "From where the brand has a sender address, X-Sendwise-Decision",
    )
    modules: list[RenderedModule] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="what may keep the email from working as meant (size, missing links)"
    )


ModelName = Literal["open_propensity", "send_time", "next_best_offer"]


def _published_explain(schema: dict[str, Any]) -> None:
    """One object schema per model, each with the fields that model needs (the validators' rules)."""
    properties = schema.pop("properties")
    schema.pop("additionalProperties", None)
    schema.pop("required", None)
    common = {name: properties[name] for name in ("customer_id", "campaign", "top")}

    def model(name: str) -> dict[str, Any]:
        return {**properties["model"], "type": "string", "enum": [name]}

    schema["anyOf"] = [
        _object({**common, "model": model("open_propensity"), "send_at": properties["send_at"]}, ["customer_id"]),
        _object(
            {**common, "model": model("send_time"), "send_at": _not_null(properties["send_at"])},
            ["customer_id", "model", "send_at"],
        ),
        _object(
            {
                **common,
                "model": model("next_best_offer"),
                "send_at": properties["send_at"],
                "offer_id": _not_null(properties["offer_id"]),
            },
            ["customer_id", "model", "offer_id"],
        ),
    ]


class ExplainRequest(_Strict):
    """One known customer's prediction by one model, taken apart into its drivers."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_published_explain)

    customer_id: CustomerId
    model: ModelName = Field(
        default="open_propensity",
        description="`open_propensity`: the open probability at `send_at` (default: the best hour of the next 24); "
        "`send_time`: the open probability at `send_at` by the model that chooses send hours, as /v1/decide gives "
        "it in `hourly_open_probability`; `next_best_offer`: the conversion probability of `offer_id`",
    )
    campaign: Campaign = Field(default_factory=Campaign, description="the campaign the open models predict for")
    send_at: WholeHour | None = Field(
        default=None,
        validate_default=True,
        description="a whole UTC hour: the send explained (required for `send_time`); for "
        "`next_best_offer`, when the offer must be eligible (default: the next whole hour)",
    )
    offer_id: str | None = Field(
        default=None,
        validate_default=True,
        max_length=MAX_ID_LENGTH,
        description="the offer whose conversion probability `next_best_offer` explains (required for it, and only "
        "for it); it must be eligible at `send_at`",
    )
    top: int = Field(default=5, ge=1, le=30, description="how many drivers, strongest first")

    @field_validator("send_at")
    @classmethod
    def _explained_hour(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            if info.data.get("model") == "send_time":
                raise ValueError(
                    "send_time explains the open probability of one hour: give send_at, a whole UTC hour such as "
                    "2026-11-26T19:00:00Z"
                )
            return None
        return whole_utc_hour(value, "send_at", "2026-11-26T19:00:00Z")

    @field_validator("offer_id")
    @classmethod
    def _offer_for_the_offer_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        model = info.data.get("model")
        if value is None and model == "next_best_offer":
            raise ValueError(
                "next_best_offer explains one offer's conversion probability: give offer_id, an offer eligible at "
                "send_at"
            )
        if value is not None and model is not None and model != "next_best_offer":
            raise ValueError(f"offer_id is for model next_best_offer only, not {model}")
        return value


class ExplainResponse(BaseModel):
    customer_id: str
    model: str
    model_version: str | None
    send_at: datetime | None = Field(default=None, description="the send explained (the open models)")
    offer_id: str | None = Field(default=None, description="the offer explained (next_best_offer)")
    prediction: float = Field(description="the probability explained: of an open at send_at, or of a conversion")
    base_value: float = Field(
        description="the model's base value in log-odds (its average raw score): where every explanation starts"
    )
    base_probability: float = Field(description="the base value as a probability")
    drivers: list[Driver] = Field(description="the strongest drivers, strongest first")
    others_shap_value: float = Field(
        default=0.0,
        description="the summed SHAP values of the features not among `drivers`: base_value + the drivers' SHAP "
        "values + this = the log-odds of `prediction`",
    )


class ModelsResponse(BaseModel):
    """`GET /v1/models`: the registered model versions being served, and whether answers are degraded."""

    model_versions: dict[str, str | None]
    status: Literal["ok", "degraded"] = "ok"
    reasons: list[str] = Field(default_factory=list)


MAX_FORGOTTEN = 10_000
"""Customer ids one `POST /v1/forget` takes."""


class ForgetRequest(_Strict):
    """`POST /v1/forget`: the customers to erase (see `serving.forget`)."""

    customer_ids: list[CustomerId] = Field(min_length=1, max_length=MAX_FORGOTTEN)


class ForgetResponse(BaseModel):
    """What an erasure removed: counts only, never the ids."""

    customers: int = Field(description="distinct ids erased")
    new_tombstones: int = Field(description="ids not erased before")
    rows: dict[str, int] = Field(description="rows removed per file of the home (raw store, quarantine, features)")
    online_rows: int = Field(description="rows removed from Feast's online store")
    decisions: int = Field(description="logged decisions removed")
    reports: list[str] = Field(description="report files removed (they named a customer)")


class FieldError(BaseModel):
    """One problem with a request, naming the field (`recipients[3].customer_id`, or `body`)."""

    field: str
    message: str


class ErrorAnswer(BaseModel):
    """Every 4xx and 5xx answer of the `/v1` routes: a short error, one readable sentence, the fields."""

    error: str
    message: str
    details: list[FieldError] = Field(default_factory=list)


MAX_EVENTS = 10_000
"""Rows one `POST /v1/events` takes (`sendwise push` sends a longer file in chunks of this size)."""
EVENT_TABLES = ("customers", "email_events", "site_events", "offer_events")
"""The contract tables whose rows `POST /v1/events` takes (`sendwise.ingest.appended.APPENDABLE`): the event
tables, and customers (a whole row: how a sending system says a person withdrew or gave consent now)."""
_EVENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_EVENT_TIME = WHOLE_UTC_HOUR.removesuffix(r":00:00Z$") + r":[0-5][0-9]:[0-5][0-9]Z$"


def _event_column_schema(column: Any) -> dict[str, Any]:
    """What the OpenAPI document promises one contract column takes: the narrow form generators need (the
    service reads rows as an export is read: aliases, any offset, booleans and numbers as text)."""
    from sendwise.contract import Kind

    kind = column.kind
    schema: dict[str, Any]
    if kind == Kind.ID:
        schema = {"type": "string", "pattern": _EVENT_ID}
    elif kind == Kind.TIMESTAMP:
        schema = {"type": "string", "pattern": _EVENT_TIME, "description": "ISO 8601 with a zone"}
    elif kind == Kind.BOOL:
        schema = {"type": "boolean"}
    elif kind in (Kind.FLOAT, Kind.INT):
        schema = {"type": "number"}
        if column.low is not None:
            schema["minimum" if column.low_inclusive else "exclusiveMinimum"] = column.low
        if column.high is not None:
            schema["maximum" if column.high_inclusive else "exclusiveMaximum"] = column.high
    elif kind == Kind.CHOICE:
        schema = {"type": "string", "enum": list(column.choices)}
    else:
        schema = {"type": "string", "maxLength": 2048}
    return schema if column.required else {"anyOf": [schema, {"type": "null"}]}


def _event_row_schema() -> dict[str, Any]:
    """One row of a contract event table and the table it belongs to, one choice per table."""
    from sendwise.contract import TABLES

    ways = []
    for name in EVENT_TABLES:
        table = TABLES[name]
        properties: dict[str, Any] = {"table": {"const": name}}
        properties.update({column.name: _event_column_schema(column) for column in table.columns})
        way: dict[str, Any] = {
            "type": "object",
            "title": name,
            "properties": properties,
            "required": ["table", *table.required],
            "additionalProperties": False,
        }
        if name == "customers":  # profiling consent: no ingest flag says it for a row sent alone
            way["required"].append("consent_profiling")
            properties["consent_profiling"] = {"type": "boolean"}
            way["patternProperties"] = {"^attr_": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]}}
        ways.append(way)
    return {"oneOf": ways, "description": "a row of the data contract and its table"}


EventRow = Annotated[
    dict[str, str | int | float | bool | None],
    WithJsonSchema(_event_row_schema()),
]


class EventsRequest(_Strict):
    """`POST /v1/events`: rows of the data contract's event tables, each naming its table."""

    events: list[EventRow] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsResponse(BaseModel):
    """What became of a batch of events (answered with 202): counts, never ids."""

    received: int = Field(description="rows in the request")
    appended: dict[str, int] = Field(description="rows appended durably to the raw store, per table")
    forgotten: int = Field(description="rows of erased customers refused")
    pushed: int = Field(description="customers whose latest-value features were pushed to the online store")
    status: Literal["ok", "degraded"] = Field(
        default="ok", description="degraded: appended, but the online store could not be updated (see reasons)"
    )
    reasons: list[str] = Field(default_factory=list)
