"""Offline sources: Parquet feature tables that `features.build` writes from the raw events.

Paths are file names inside the home's feature tables folder; `features.store` makes them absolute.
"""

from feast import FileSource

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
