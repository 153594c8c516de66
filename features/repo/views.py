"""Feature views: what sendwise knows about a customer and an offer, each feature described in a user's terms.

Counts and rates decay with a 60-day half-life and hour profiles with a 180-day one (`features.build`), so
"recent" below means weighted toward the last two months (the last six for hour profiles). Hours are the
customer's local hours. Machine opens (privacy proxies, security scanners) are never counted as opens.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, String

from features.repo.entities import customer, offer
from features.repo.sources import (
    customer_attributes_source,
    customer_source,
    email_state_push,
    engagement_source,
    latest_activity_push,
    offer_source,
)

HOURS = 24

# Who the customer is: time zone, country, tenure, stated interests, consent and whether email may go out.
customer_fv = FeatureView(
    name="customer_fv",
    entities=[customer],
    ttl=timedelta(0),
    description="Who the customer is: time zone, country, tenure, stated interests and consent.",
    schema=[
        Field(name="timezone", dtype=String, description="The customer's IANA time zone (UTC where unknown)."),
        Field(name="country", dtype=String, description="The customer's country, as the customers table gives it."),
        Field(name="signup_at_days", dtype=Float32, description="Days since the customer joined the list."),
        Field(
            name="interests",
            dtype=String,
            description="The categories the customer said they are interested in, separated by '|'.",
        ),
        Field(
            name="profiling_allowed",
            dtype=Float32,
            description="1 if the customer consented to profiling (their events may shape predictions), else 0.",
        ),
        Field(name="consent_email", dtype=Float32, description="1 if the customer consented to email, else 0."),
        Field(
            name="email_eligible",
            dtype=Float32,
            description="1 if email may go out: consent given and no unsubscribe, complaint or hard bounce on record.",
        ),
    ],
    source=customer_source,
)

# The customer's own attributes (`attr_*` columns of the contract); the schema is inferred from the table,
# so every attribute an export carries becomes a feature without a code change.
customer_attributes_fv = FeatureView(
    name="customer_attributes_fv",
    entities=[customer],
    ttl=timedelta(0),
    description=(
        "The customer's own attributes, one feature per attr_* column of the customers table (e.g. a loyalty "
        "tier), and n_attributes, how many of them the customer has."
    ),
    source=customer_attributes_source,
)

# Engagement up to a point in time: counts, rates, recency and profiles by local hour (machine opens excluded).
engagement_fv = FeatureView(
    name="engagement_fv",
    entities=[customer],
    ttl=timedelta(days=2),
    description=(
        "How the customer has engaged up to a point in time, from events before it only: recent counts, recency "
        "and activity by local hour."
    ),
    schema=[
        Field(name="n_emails", dtype=Float32, description="Emails the customer received recently."),
        Field(name="n_human_opens", dtype=Float32, description="Emails the customer opened themselves recently."),
        Field(name="n_clicks", dtype=Float32, description="Links the customer clicked in emails recently."),
        Field(name="n_sessions", dtype=Float32, description="Visits of the customer to the site recently."),
        Field(name="n_purchases", dtype=Float32, description="Purchases the customer made recently."),
        Field(name="purchase_value", dtype=Float32, description="Money the customer spent recently."),
        Field(name="sends_7d", dtype=Float32, description="Emails sent to the customer in the last 7 days."),
        Field(
            name="opens_observable",
            dtype=Float32,
            description="1 if the customer's own opens can be seen, 0 if a privacy proxy opens their email for them.",
        ),
        Field(
            name="days_since_human_open",
            dtype=Float32,
            description="Days since the customer last opened an email (empty if never).",
        ),
        Field(
            name="days_since_session",
            dtype=Float32,
            description="Days since the customer last visited the site (empty if never).",
        ),
        Field(
            name="days_since_email",
            dtype=Float32,
            description="Days since the customer was last sent an email (empty if never).",
        ),
        Field(
            name="open_hours_weekday",
            dtype=Array(Float32),
            description="Recent opens on weekdays by local hour (24 values, midnight first).",
        ),
        Field(
            name="open_hours_weekend",
            dtype=Array(Float32),
            description="Recent opens on weekends by local hour (24 values, midnight first).",
        ),
        Field(
            name="click_hours_weekday",
            dtype=Array(Float32),
            description="Recent email clicks on weekdays by local hour (24 values, midnight first).",
        ),
        Field(
            name="click_hours_weekend",
            dtype=Array(Float32),
            description="Recent email clicks on weekends by local hour (24 values, midnight first).",
        ),
        Field(
            name="session_hours_weekday",
            dtype=Array(Float32),
            description="Recent site visits on weekdays by local hour (24 values, midnight first).",
        ),
        Field(
            name="session_hours_weekend",
            dtype=Array(Float32),
            description="Recent site visits on weekends by local hour (24 values, midnight first).",
        ),
        Field(
            name="rhythm_weekday",
            dtype=Array(Float32),
            description=(
                "How active the customer usually is at each local hour of a weekday (site visits and first reads "
                "of emails, pooled with customers of the same time zone where they have few)."
            ),
        ),
        Field(
            name="rhythm_weekend",
            dtype=Array(Float32),
            description="As rhythm_weekday, for weekend days.",
        ),
        Field(
            name="category_names",
            dtype=Array(String),
            description="The product categories that category_views counts, in the same order.",
        ),
        Field(
            name="category_views",
            dtype=Array(Float32),
            description="Recent product views, carts and purchases of the customer in each category.",
        ),
    ],
    source=engagement_source,
)

# What an offer is.
offer_fv = FeatureView(
    name="offer_fv",
    entities=[offer],
    ttl=timedelta(0),
    description="What an offer is and what a conversion of it is worth.",
    schema=[
        Field(
            name="offer_kind",
            dtype=String,
            description="The kind of offer: discount, content, or control (the arm that sends no offer).",
        ),
        Field(name="offer_category", dtype=String, description="The product category the offer is for."),
        Field(name="discount_pct", dtype=Float32, description="The discount the offer gives, in percent."),
        Field(name="price", dtype=Float32, description="The price of what the offer sells."),
        Field(
            name="margin",
            dtype=Float32,
            description="What one conversion of the offer is worth to the business (1 where not given).",
        ),
    ],
    source=offer_source,
)

# What the customer did last: latest values, pushed as events arrive and combined with the aggregates above.
latest_activity_fv = FeatureView(
    name="latest_activity_fv",
    entities=[customer],
    ttl=timedelta(0),
    description="What the customer did last on the site, up to the latest event (pushed as events arrive).",
    schema=[
        Field(
            name="last_session_ts",
            dtype=Float64,
            description="When the customer was last on the site, in seconds since 1970 (empty if never).",
        ),
        Field(
            name="last_purchase_ts",
            dtype=Float64,
            description="When the customer last bought something, in seconds since 1970 (empty if never).",
        ),
        Field(
            name="last_viewed_category",
            dtype=String,
            description="The product category the customer last viewed, put in a cart or bought.",
        ),
        Field(name="last_purchase_category", dtype=String, description="The category of the customer's last purchase."),
    ],
    source=latest_activity_push,
)

# Whether email to the customer has stopped, up to the latest event (pushed as events arrive).
email_state_fv = FeatureView(
    name="email_state_fv",
    entities=[customer],
    ttl=timedelta(0),
    description="Whether the customer unsubscribed, complained or hard-bounced (no row: none of them), and the "
    "consent a customers row pushed as an event last gave.",
    schema=[
        Field(name="unsubscribed", dtype=Float32, description="1 if the customer unsubscribed, else 0."),
        Field(name="complained", dtype=Float32, description="1 if the customer reported an email as spam, else 0."),
        Field(name="hard_bounced", dtype=Float32, description="1 if email to the customer bounced for good, else 0."),
        Field(
            name="event_consent_email",
            dtype=Float32,
            description="Email consent as the latest customers row pushed as an event gave it (empty: none pushed).",
        ),
        Field(
            name="event_consent_profiling",
            dtype=Float32,
            description="Profiling consent as the latest customers row pushed as an event gave it (empty: none).",
        ),
    ],
    source=email_state_push,
)

VIEWS = [customer_fv, customer_attributes_fv, engagement_fv, offer_fv, latest_activity_fv, email_state_fv]
"""Every feature view of the repository."""
