"""Offline sources: Parquet feature tables that `features.build` writes from the raw events.

Paths are file names inside the home's feature tables folder; `features.store` makes them absolute.
"""

from feast import FileSource

# One row per customer: profile fields from the customers table (static between exports).
customer_source = FileSource(
    name="customer_source",
    path="customer_features.parquet",
    timestamp_field="event_timestamp",
)

# One row per customer: the `attr_*` columns of the customers table, plus how many there are.
customer_attributes_source = FileSource(
    name="customer_attributes_source",
    path="customer_attributes.parquet",
    timestamp_field="event_timestamp",
)

# One row per customer and snapshot time: engagement built only from events before that time.
engagement_source = FileSource(
    name="engagement_source",
    path="engagement_features.parquet",
    timestamp_field="event_timestamp",
)

# One row per offer: what the offer is and what a conversion is worth.
offer_source = FileSource(
    name="offer_source",
    path="offer_features.parquet",
    timestamp_field="event_timestamp",
)
