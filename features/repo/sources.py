"""Offline sources: Parquet feature tables that `features.build` writes from the raw events.

Paths are file names inside the home's feature tables folder; `features.store` makes them absolute.
"""

from feast import FileSource, PushSource

# One row per customer: profile fields from the customers table (static between exports).
customer_source = FileSource(
    name="customer_source",
    description="One row per customer: profile fields from the customers table.",
    path="customer_features.parquet",
    timestamp_field="event_timestamp",
)

# One row per customer: the `attr_*` columns of the customers table, plus how many there are.
customer_attributes_source = FileSource(
    name="customer_attributes_source",
    description="One row per customer: the attr_* columns of the customers table.",
    path="customer_attributes.parquet",
    timestamp_field="event_timestamp",
)

# One row per customer and snapshot time: engagement built only from events before that time.
engagement_source = FileSource(
    name="engagement_source",
    description="One row per customer and time features were needed: engagement from the events before it.",
    path="engagement_features.parquet",
    timestamp_field="event_timestamp",
)

# One row per offer: what the offer is and what a conversion is worth.
offer_source = FileSource(
    name="offer_source",
    description="One row per offer: what it is and what a conversion is worth.",
    path="offer_features.parquet",
    timestamp_field="event_timestamp",
)

# One row per customer and site event: what the customer did last, as of that event (`features.latest`).
latest_activity_table = FileSource(
    name="latest_activity_table",
    description="One row per customer and site event: the last visit, category viewed and purchase as of it.",
    path="latest_activity.parquet",
    timestamp_field="event_timestamp",
)

# The same values pushed by a running service as events arrive (POST /v1/events).
latest_activity_push = PushSource(
    name="latest_activity_push",
    description="What the customer did last, pushed as site events arrive.",
    batch_source=latest_activity_table,
)

# One row per customer and event that stops email (unsubscribe, complaint, hard bounce), as of that event.
email_state_table = FileSource(
    name="email_state_table",
    description="One row per customer and unsubscribe, complaint or hard bounce: whether email has stopped.",
    path="email_state.parquet",
    timestamp_field="event_timestamp",
)

# The same values pushed by a running service as events arrive (POST /v1/events).
email_state_push = PushSource(
    name="email_state_push",
    description="Whether email to the customer has stopped, and their consent, pushed as events arrive.",
    batch_source=email_state_table,
)
