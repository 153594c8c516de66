"""Request and answer models of the HTTP API, field for field as DESIGN.md defines them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

CustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
CampaignKind = Literal["promotional", "newsletter", "triggered", "transactional"]
MAX_RECIPIENTS = 10_000
MAX_WINDOW_HOURS = 168


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Recipient(_Strict):
    """One recipient; the context fields matter for customers sendwise does not know yet (cold start)."""

    customer_id: CustomerId
    timezone: str | None = None
    country: str | None = Field(default=None, max_length=2)
    interests: list[str] = Field(default_factory=list, max_length=50)
    attributes: dict[str, str | float | int | bool] = Field(default_factory=dict)

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
        bad = [name for name in value if not name.startswith("attr_")]
        if bad:
            raise ValueError(f"attribute names must start with 'attr_' as in the data contract: {bad[:3]}")
        return value


OneLine = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\r\n]*$")]
"""Text that reaches an email header: one line, no CR or LF."""


class Campaign(_Strict):
    """The campaign a batch belongs to: logged with each decision (lift is measured per `campaign_id`)."""

    kind: CampaignKind = "promotional"
    topic: str | None = Field(default=None, max_length=128)
    campaign_id: str | None = Field(default=None, max_length=128, description="the sending system's campaign id")
    subject: OneLine | None = Field(
        default=None,
        description="the subject line; `{{ attr_first_name | default('there') }}` and the like personalise it from "
        "the customer's attributes (Jinja2 syntax, sandboxed)",
    )
    preheader: OneLine | None = Field(
        default=None, description="the line mail clients show after the subject; personalised like `subject`"
    )


class QuietHours(_Strict):
    """No sends from `start`:00 until `end`:00 in each recipient's local time; start > end wraps midnight
    (22 -> 7: 22:00 to 06:59 are quiet)."""

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


def next_whole_hour(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


class DecideRequest(_Strict):
    recipients: list[Recipient] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    campaign: Campaign = Field(default_factory=Campaign)
    window_start: datetime | None = None
    window_hours: int = Field(default=24, ge=1, le=MAX_WINDOW_HOURS)
    offer_ids: list[str] | None = None
    k_offers: int = Field(default=3, ge=0, le=50)
    explore_share: float | None = Field(default=None, ge=0.0, le=1.0)
    constraints: Constraints | None = None

    @field_validator("window_start")
    @classmethod
    def _whole_utc_hour(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("window_start needs a time zone, e.g. 2026-11-26T07:00:00Z")
        value = value.astimezone(UTC)
        if value.minute or value.second or value.microsecond:
            raise ValueError("window_start must be a whole hour, e.g. 2026-11-26T07:00:00Z")
        return value

    def resolved_window_start(self) -> datetime:
        return self.window_start or next_whole_hour()


class OfferScore(BaseModel):
    offer_id: str
    kind: str
    conversion_probability: float
    expected_value: float
    incremental_value: float | None = None


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


class DecideResponse(BaseModel):
    model_versions: dict[str, str | None]
    status: Literal["ok", "degraded"] = "ok"
    decisions: list[Decision]


DecisionId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^d-[0-9a-f]{32}$")]


class RenderRequest(_Strict):
    """Either `decision_id` (render exactly that logged decision) or `customer_id` (decide, log and render)."""

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


class ExplainRequest(_Strict):
    customer_id: CustomerId
    model: ModelName = "open_propensity"
    campaign: Campaign = Field(default_factory=Campaign)
    top: int = Field(default=5, ge=1, le=30)


class Driver(BaseModel):
    feature: str
    value: float | str | None
    shap_value: float
    sentence: str


class ExplainResponse(BaseModel):
    customer_id: str
    model: str
    model_version: str | None
    prediction: float
    base_value: float
    drivers: list[Driver]


class ModelsResponse(BaseModel):
    """`GET /v1/models`: the registered model versions being served, and whether answers are degraded."""

    model_versions: dict[str, str | None]
    status: Literal["ok", "degraded"] = "ok"
    reasons: list[str] = Field(default_factory=list)


class FieldError(BaseModel):
    """One problem with a request, naming the field (`recipients[3].customer_id`, or `body`)."""

    field: str
    message: str


class ErrorAnswer(BaseModel):
    """Every 4xx and 5xx answer of the `/v1` routes: a short error, one readable sentence, the fields."""

    error: str
    message: str
    details: list[FieldError] = Field(default_factory=list)
