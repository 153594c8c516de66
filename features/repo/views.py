"""Feature views."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, String

from features.repo.entities import customer, offer
from features.repo.sources import (
    customer_attributes_source,
    customer_source,
    engagement_source,
    offer_source,
)

HOURS = 24

# Who the customer is: time zone, country, tenure, stated interests, consent and whether email may go out
# (email consent given and no unsubscribe, complaint or hard bounce on record).
customer_fv = FeatureView(
    name="customer_fv",
    entities=[customer],
    ttl=timedelta(0),
    schema=[
        Field(name="timezone", dtype=String),
        Field(name="country", dtype=String),
        Field(name="signup_at_days", dtype=Float32),
        Field(name="interests", dtype=String),
        Field(name="profiling_allowed", dtype=Float32),
        Field(name="consent_email", dtype=Float32),
        Field(name="email_eligible", dtype=Float32),
    ],
    source=customer_source,
)

# The customer's own attributes (`attr_*` columns of the contract); the schema is inferred from the table,
# so every attribute an export carries becomes a feature without a code change.
customer_attributes_fv = FeatureView(
    name="customer_attributes_fv",
    entities=[customer],
    ttl=timedelta(0),
    source=customer_attributes_source,
)

# Engagement up to a point in time: counts, rates, recency and profiles by local hour (machine opens excluded).
engagement_fv = FeatureView(
    name="engagement_fv",
    entities=[customer],
    ttl=timedelta(days=2),
    schema=[
        Field(name="n_emails", dtype=Float32),
        Field(name="n_human_opens", dtype=Float32),
        Field(name="n_clicks", dtype=Float32),
        Field(name="n_sessions", dtype=Float32),
        Field(name="n_purchases", dtype=Float32),
        Field(name="purchase_value", dtype=Float32),
        Field(name="sends_7d", dtype=Float32),
        Field(name="opens_observable", dtype=Float32),
        Field(name="days_since_human_open", dtype=Float32),
        Field(name="days_since_session", dtype=Float32),
        Field(name="days_since_email", dtype=Float32),
        Field(name="open_hours_weekday", dtype=Array(Float32)),
        Field(name="open_hours_weekend", dtype=Array(Float32)),
        Field(name="click_hours_weekday", dtype=Array(Float32)),
        Field(name="click_hours_weekend", dtype=Array(Float32)),
        Field(name="session_hours_weekday", dtype=Array(Float32)),
        Field(name="session_hours_weekend", dtype=Array(Float32)),
        Field(name="rhythm_weekday", dtype=Array(Float32)),
        Field(name="rhythm_weekend", dtype=Array(Float32)),
        Field(name="category_names", dtype=Array(String)),
        Field(name="category_views", dtype=Array(Float32)),
    ],
    source=engagement_source,
)

# What an offer is.
offer_fv = FeatureView(
    name="offer_fv",
    entities=[offer],
    ttl=timedelta(0),
    schema=[
        Field(name="offer_kind", dtype=String),
        Field(name="offer_category", dtype=String),
        Field(name="discount_pct", dtype=Float32),
        Field(name="price", dtype=Float32),
        Field(name="margin", dtype=Float32),
    ],
    source=offer_source,
)
