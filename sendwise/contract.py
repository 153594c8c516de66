"""The data contract (``docs/data-contract.md``) as one declarative definition.

Every table, its columns, which are required, how each is parsed, the event-name aliases, the boolean words
and the id rules live here; ``sendwise.ingest`` applies them and nothing else decides what a valid row is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pandas as pd


def __getattr__(name: str) -> Any:
    """`STRING`, pandas' Arrow-backed string dtype, made when first asked for: the service's supervisor process
    imports this module (the API's schemas name the contract's tables) and should not load pandas for it."""
    if name == "STRING":
        import pandas as pd

        return pd.StringDtype("pyarrow")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Kind(StrEnum):
    """How a column is read and what it becomes in the raw store."""

    ID = "id"  # str, trimmed, at most MAX_ID_LENGTH characters
    TEXT = "text"  # str, trimmed, empty is missing
    FREE_TEXT = "free_text"  # str exactly as given (not trimmed); empty or only whitespace is missing
    LINK = "link"  # an absolute http or https URL with a host (LINK_SCHEMES), trimmed; nothing else
    TIMESTAMP = "timestamp"  # ISO 8601 with a zone (or Parquet tz-aware) -> datetime64[us, UTC]
    BOOL = "bool"  # BOOLEAN_WORDS -> bool (pandas ``boolean`` where it may be missing)
    FLOAT = "float"  # float64
    INT = "int"  # whole number, stored as float64 so that it may be missing
    CHOICE = "choice"  # one of ``choices`` (case-insensitive, through ``aliases``), stored lower case
    TIMEZONE = "timezone"  # a zoneinfo name; unknown names count as missing and are inferred
    COUNTRY = "country"  # ISO 3166-1 alpha-2, upper case (COUNTRY_ALIASES applied)
    INTERESTS = "interests"  # `|`-separated, "" when none


@dataclass(frozen=True)
class Column:
    """One column of a contract table."""

    name: str
    kind: Kind
    required: bool = False
    choices: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    low: float | None = None  # lower bound of a number
    low_inclusive: bool = True
    high: float | None = None  # upper bound of a number
    high_inclusive: bool = True
    # a link column that accepts plain http but counts such links in a warning that ends with this advice
    http_warning: str | None = None

    def bounds_text(self) -> str:
        """The allowed range in interval notation, e.g. ``(0, 1]``."""
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{left}{low}, {high}{right}"


@dataclass(frozen=True)
class Table:
    """One contract table: its columns and how its rows are identified."""

    name: str
    key: str  # the id that identifies a row (events: ``event_id``; entities: their own id)
    columns: tuple[Column, ...]
    is_event: bool = False  # events are deduplicated by ``event_id``; entities: the later row wins
    time_columns: tuple[str, ...] = ()  # the columns whose range is the table's time span
    attributes: bool = False  # ``attr_*`` columns are accepted as features
    money: bool = False  # a ``currency`` column is accepted (one currency per dataset)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns if column.required)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")


MAX_ID_LENGTH = 128
# an id that looks like an email address is a direct identifier: the contract wants it hashed upstream
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
ATTRIBUTE_PREFIX = "attr_"
LINK_SCHEMES = ("http", "https")
LINK_TEXT = "an absolute http or https link with a host"  # what a link column accepts, as reasons say it
# whitespace (Unicode's too) and control characters (C0, DEL, C1): none may appear inside a link
LINK_BREAKS = r"[\s\x00-\x1f\x7f-\x9f]"
CURRENCY_COLUMN = "currency"
HASHED_EVENT_ID_PREFIX = "h-"

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
BOOLEAN_WORDS: Mapping[str, bool] = MappingProxyType(
    {**dict.fromkeys(TRUE_WORDS, True), **dict.fromkeys(FALSE_WORDS, False)}
)

COUNTRY_ALIASES: Mapping[str, str] = MappingProxyType({"UK": "GB"})

EMAIL_EVENTS = ("sent", "delivered", "open", "click", "bounce", "unsubscribe", "complaint")
EMAIL_EVENT_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "processed": "sent",
        "accepted": "sent",
        "opened": "open",
        "clicked": "click",
        "bounced": "bounce",
        "dropped": "bounce",
        "spamreport": "complaint",
        "spam": "complaint",
        "unsubscribed": "unsubscribe",
    }
)
SITE_EVENTS = ("session_start", "page_view", "product_view", "add_to_cart", "purchase")
OFFER_EVENTS = ("exposed", "clicked", "converted")
CAMPAIGN_KINDS = ("promotional", "newsletter", "triggered", "transactional")
OFFER_KINDS = ("discount", "content", "control")
BOUNCE_TYPES = ("hard", "soft")

# customers
customers = Table(
    name="customers",
    key="customer_id",
    columns=(
        Column("customer_id", Kind.ID, required=True),
        Column("timezone", Kind.TIMEZONE),
        Column("country", Kind.COUNTRY),
        Column("signup_at", Kind.TIMESTAMP),
        Column("consent_email", Kind.BOOL, required=True),
        Column("consent_profiling", Kind.BOOL),
        Column("interests", Kind.INTERESTS),
        Column("updated_at", Kind.TIMESTAMP),
    ),
    time_columns=("signup_at",),
    attributes=True,
)

# campaigns
campaigns = Table(
    name="campaigns",
    key="campaign_id",
    columns=(
        Column("campaign_id", Kind.ID, required=True),
        Column("kind", Kind.CHOICE, required=True, choices=CAMPAIGN_KINDS),
        Column("topic", Kind.TEXT),
        Column("subject", Kind.TEXT),
        Column("created_at", Kind.TIMESTAMP),
    ),
    time_columns=("created_at",),
)

# email_events: what an ESP webhook or export reports
email_events = Table(
    name="email_events",
    key="event_id",
    columns=(
        Column("event_id", Kind.ID),
        Column("customer_id", Kind.ID, required=True),
        Column("message_id", Kind.ID, required=True),
        Column("campaign_id", Kind.ID),
        Column("event", Kind.CHOICE, required=True, choices=EMAIL_EVENTS, aliases=EMAIL_EVENT_ALIASES),
        Column("occurred_at", Kind.TIMESTAMP, required=True),
        Column("machine_open", Kind.BOOL),
        Column("bounce_type", Kind.CHOICE, choices=BOUNCE_TYPES),
        Column("user_agent", Kind.TEXT),
        Column("url", Kind.TEXT),
        Column("decision_id", Kind.ID),
    ),
    is_event=True,
    time_columns=("occurred_at",),
)

# site_events: what the shop reports
site_events = Table(
    name="site_events",
    key="event_id",
    columns=(
        Column("event_id", Kind.ID),
        Column("customer_id", Kind.ID, required=True),
        Column("event", Kind.CHOICE, required=True, choices=SITE_EVENTS),
        Column("occurred_at", Kind.TIMESTAMP, required=True),
        Column("category", Kind.TEXT),
        Column("product_id", Kind.ID),
        Column("value", Kind.FLOAT),
    ),
    is_event=True,
    time_columns=("occurred_at",),
    money=True,
)

# offers
offers = Table(
    name="offers",
    key="offer_id",
    columns=(
        Column("offer_id", Kind.ID, required=True),
        Column("kind", Kind.CHOICE, required=True, choices=OFFER_KINDS),
        Column("category", Kind.TEXT),
        Column("discount_pct", Kind.FLOAT, low=0.0, high=100.0),
        Column("price", Kind.FLOAT),
        Column("margin", Kind.FLOAT),
        Column("inventory", Kind.INT),
        Column("starts_at", Kind.TIMESTAMP),
        Column("ends_at", Kind.TIMESTAMP),
        # what the email says about the offer: free text, escaped by the renderer, never a feature
        Column("title", Kind.FREE_TEXT),
        Column("description", Kind.FREE_TEXT),
        Column("url", Kind.LINK),
        Column("image_url", Kind.LINK, http_warning="mail clients block or warn on images over http; use https"),
        # how long after an exposure a conversion still counts (missing: SENDWISE_CONVERSION_WINDOW_DAYS)
        Column("conversion_window_days", Kind.FLOAT, low=0.0, low_inclusive=False),
    ),
    time_columns=("starts_at", "ends_at"),
    money=True,
)

# the offer columns an email shows and no model reads
OFFER_CONTENT = ("title", "description", "url", "image_url")

# offer_events
offer_events = Table(
    name="offer_events",
    key="event_id",
    columns=(
        Column("event_id", Kind.ID),
        Column("customer_id", Kind.ID, required=True),
        Column("offer_id", Kind.ID, required=True),
        Column("message_id", Kind.ID),
        Column("event", Kind.CHOICE, required=True, choices=OFFER_EVENTS),
        Column("occurred_at", Kind.TIMESTAMP, required=True),
        Column("value", Kind.FLOAT),
        Column("propensity", Kind.FLOAT, low=0.0, low_inclusive=False, high=1.0),
        Column("decision_id", Kind.ID),
    ),
    is_event=True,
    time_columns=("occurred_at",),
    money=True,
)

# every table in the order the ingest reads them
TABLES: Mapping[str, Table] = MappingProxyType(
    {table.name: table for table in (customers, campaigns, email_events, site_events, offers, offer_events)}
)
REQUIRED_TABLES = ("customers",)

# the columns of the raw store, in order (docs/architecture.md, "Raw store"); customers add ``attr_*``
RAW_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        name: (
            ("customer_id", "timezone", "timezone_inferred", *table.column_names[2:])
            if name == "customers"
            else table.column_names
        )
        for name, table in TABLES.items()
    }
)


def canonical_choice(column: Column, value: str) -> str | None:
    """The canonical spelling of ``value`` for a choice column (aliases, any case), or None if invalid."""
    word = value.strip().lower()
    word = column.aliases.get(word, word)
    return word if word in column.choices else None


def choice_text(column: Column) -> str:
    """The accepted values of a choice column, for quarantine reasons."""
    text = "one of " + ", ".join(column.choices)
    return text + " (or an alias of one)" if column.aliases else text


def parse_booleans(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Read contract booleans (``true/false 1/0 yes/no y/n t/f`` in any case; empty is missing).

    Returns the values as pandas ``boolean`` and a mask of the entries that are not booleans.
    """
    import pandas as pd

    if pd.api.types.is_bool_dtype(values.dtype):
        parsed = values.astype("boolean")
        return parsed, pd.Series(False, index=values.index)
    if pd.api.types.is_numeric_dtype(values.dtype):
        numbers = values.astype("Float64")
        parsed = numbers.map({1.0: True, 0.0: False}, na_action="ignore").astype("boolean")
        return parsed, numbers.notna() & parsed.isna()
    words = _strings(values).str.strip().str.lower()
    codes, uniques = pd.factorize(words)
    lookup = pd.array([BOOLEAN_WORDS.get(word) for word in uniques] + [None], dtype="boolean")
    parsed = pd.Series(lookup[codes], index=values.index, dtype="boolean")
    present = words.notna() & (words != "").fillna(False)
    return parsed, (present & parsed.isna()).fillna(False).astype(bool)


def link_scheme(value: str) -> str | None:
    """The scheme of a link the contract accepts, in lower case; None for anything else.

    Accepted: an absolute URL whose scheme is one of ``LINK_SCHEMES``, which names a host (and a valid port
    where it gives one) and holds no whitespace or control character (``LINK_BREAKS``: one could end a header
    line or split the link where it is written). Relative links, ``//host/...``, ``javascript:``, ``data:``,
    ``mailto:`` and the like are not links an email can send a reader to.
    """
    if re.search(LINK_BREAKS, value):
        return None
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # the port raises ValueError where it is not a number in range
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return scheme if scheme in LINK_SCHEMES and host else None


def looks_like_email(values: pd.Series) -> pd.Series:
    """Mask of ids that look like an email address (a direct identifier the contract forbids)."""
    return _strings(values).str.contains(EMAIL_PATTERN, regex=True).fillna(False).astype(bool)


def _strings(values: pd.Series) -> pd.Series:
    """Values as Arrow-backed strings, whose string methods run vectorized in Arrow."""
    import pandas as pd

    string = pd.StringDtype("pyarrow")
    return values if values.dtype == string else values.astype(string)
