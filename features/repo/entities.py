"""Entities: who and what features describe."""

from feast import Entity, ValueType

# A customer of the sending system, by the (hashed) id of the data contract.
customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A customer of the sending system, by the id the data contract gives them.",
)

# An offer that an email may carry.
offer = Entity(
    name="offer",
    join_keys=["offer_id"],
    value_type=ValueType.STRING,
    description="An offer that an email may carry.",
)
