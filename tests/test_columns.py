"""A view's rows as Arrow columns and as Python values give the same snapshot, stops and latest values.

A batch's Redis replies become Arrow tables and a few customers' become Python values (`serving.columns`); both
go through `FeatureSnapshot.from_columns`. These rows hold every awkward case a store can return: missing
values, lists of the wrong length, a customer without a time zone, labels and numeric attributes, categories
named by one customer only, a customer without a row in one view.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from features.latest import ACTIVITY_COLUMNS, EMAIL_CONSENTS, EMAIL_FLAGS
from features.transform import HOURS, SCALAR_FEATURES
from serving.columns import ArrowColumns, ValueColumns, ViewColumns
from serving.redis_features import latest_values, pushed_email_state, stopped_customers
from serving.snapshot import FeatureSnapshot

IDS = ["c-1", "c-2", "c-3", "c-4", "c-5"]


def _customer_rows() -> dict[str, list[Any]]:
    rng = np.random.default_rng(3)
    rows: dict[str, list[Any]] = {"customer_id": IDS}
    for k, name in enumerate(SCALAR_FEATURES):
        rows[name] = [None if (i + k) % 4 == 0 else float(np.float32(rng.random() * 9)) for i in range(len(IDS))]
    day = [float(np.float32(x)) for x in rng.random(HOURS)]
    rows["rhythm_weekday"] = [day, None, day[:5], day, []]
    rows["rhythm_weekend"] = [day[::-1], day, None, day, day]
    rows["profiling_allowed"] = [1.0, 0.0, None, 1.0, 1.0]
    rows["consent_email"] = [1.0, 1.0, 0.0, None, 1.0]
    rows["email_eligible"] = [1.0, None, 1.0, 1.0, 0.0]
    rows["timezone"] = ["Europe/Paris", "America/New_York", None, "Europe/Paris", "Asia/Tokyo"]
    rows["interests"] = ["books|outdoor", None, "Books", "books|outdoor", ""]
    rows["category_names"] = [["shoes", "books"], ["books"], None, ["toys", "hats"], ["hats"]]
    rows["category_views"] = [[2.0, 1.0], [3.0], [1.0], [1.0], None]
    rows["attr_tier"] = ["gold", None, "silver", "gold", None]
    rows["attr_age"] = [31, 45, None, 22, 60]
    return rows


TYPES = {
    **{name: pa.float32() for name in SCALAR_FEATURES},
    "rhythm_weekday": pa.list_(pa.float32()),
    "rhythm_weekend": pa.list_(pa.float32()),
    "profiling_allowed": pa.float32(),
    "consent_email": pa.float32(),
    "email_eligible": pa.float32(),
    "timezone": pa.string(),
    "interests": pa.string(),
    "category_names": pa.list_(pa.string()),
    "category_views": pa.list_(pa.float32()),
    "attr_tier": pa.string(),
    "attr_age": pa.int64(),
    "attr_rank": pa.float64(),
    "customer_id": pa.string(),
    **{name: pa.int64() for name in EMAIL_FLAGS},
    **{name: pa.float64() for name in EMAIL_CONSENTS},
    "last_session_ts": pa.float64(),
    "last_purchase_ts": pa.float64(),
    "last_viewed_category": pa.string(),
    "last_purchase_category": pa.string(),
}


def _both(rows: dict[str, list[Any]]) -> tuple[ViewColumns, ViewColumns]:
    table = pa.table({name: pa.array(values, type=TYPES[name]) for name, values in rows.items()})
    values = {name: v for name, v in rows.items() if name != "customer_id"}
    return ArrowColumns(table), ValueColumns(list(rows["customer_id"]), values, TYPES)


def _snapshots() -> tuple[FeatureSnapshot, FeatureSnapshot]:
    customers = _customer_rows()
    # a second view where one customer has no row and one is not in the first view
    attributes = {"customer_id": ["c-5", "c-9", "c-1"], "attr_rank": [3.0, None, 1.0]}
    arrow, python = _both(customers)
    arrow_more, python_more = _both(attributes)
    return (
        FeatureSnapshot.from_columns({"customer_fv": arrow, "attributes_fv": arrow_more}),
        FeatureSnapshot.from_columns({"customer_fv": python, "attributes_fv": python_more}),
    )


def test_both_forms_make_the_same_snapshot() -> None:
    arrow, python = _snapshots()
    assert list(arrow.index) == list(python.index) == [*IDS, "c-9"]
    for name in ("known", "zone_codes", "interest_codes", "scalars", "rhythm", "views", "has_views"):
        assert np.array_equal(getattr(arrow, name), getattr(python, name), equal_nan=name == "scalars"), name
    assert arrow.zones.tolist() == python.zones.tolist()
    assert arrow.interest_sets == python.interest_sets
    assert (
        arrow.categories == python.categories == ["books", "shoes"]
    )  # toys and hats: lists of unequal length, or no views
    for name in arrow.consent:
        assert np.array_equal(arrow.consent[name], python.consent[name]), name
    assert arrow.attributes.keys() == python.attributes.keys() == {"attr_tier", "attr_age", "attr_rank"}
    rows = arrow.rows([*IDS, "c-9", "nobody"])
    for name in arrow.attributes:
        a, b = arrow.attributes[name].take(rows), python.attributes[name].take(rows)
        assert [str(x) for x in a] == [str(x) for x in b], name
    # the values themselves, not only their agreement
    assert arrow.known.tolist() == [True, True, False, True, True, False, False]
    assert arrow.rhythm[0, 0].tolist() == pytest.approx(_customer_rows()["rhythm_weekday"][0])
    assert not arrow.rhythm[2, 0].any() and not arrow.rhythm[4, 0].any()  # five hours, no hours: zeros
    shoes = arrow.categories.index("shoes")
    assert arrow.views[0, shoes] == 2.0 and not arrow.has_views[2] and not arrow.has_views[4]
    assert arrow.attributes["attr_tier"].take(rows).tolist()[:3] == [
        "gold",
        pytest.approx(np.nan, nan_ok=True),
        "silver",
    ]


def test_both_forms_give_the_same_stops_and_latest_values() -> None:
    state = {
        "customer_id": ["c-1", "c-3", "c-4"],
        "unsubscribed": [1, None, 0],
        "complained": [0, 0, None],
        "hard_bounced": [None, 1, 0],
        "event_consent_email": [None, 0.0, 1.0],
        "event_consent_profiling": [1.0, None, 0.0],
    }
    activity = {
        "customer_id": ["c-2", "c-4"],
        "last_session_ts": [1.7e9, None],
        "last_purchase_ts": [None, 1.6e9],
        "last_viewed_category": ["books", None],
        "last_purchase_category": [None, "toys"],
    }
    asked = ["c-4", "c-1", "nobody", "c-3", "c-2", "c-1"]
    (arrow_state, python_state), (arrow_activity, python_activity) = _both(state), _both(activity)
    a, b = pushed_email_state(arrow_state, asked), pushed_email_state(python_state, asked)
    assert a.stopped.tolist() == b.stopped.tolist() == [False, True, False, True, False, True]
    for name in ("consent_email", "consent_profiling"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert np.array_equal(a.consent_email, [1.0, np.nan, np.nan, 0.0, np.nan, np.nan], equal_nan=True)
    assert stopped_customers(arrow_state) == stopped_customers(python_state) == {"c-1", "c-3"}
    x, y = latest_values(arrow_activity, asked), latest_values(python_activity, asked)
    assert x.keys() == y.keys() == set(ACTIVITY_COLUMNS)
    for name in x:
        assert [str(v) for v in x[name]] == [str(v) for v in y[name]], name
    assert x["last_viewed_category"].tolist() == [None, None, None, None, "books", None]
    assert x["last_purchase_ts"][0] == 1.6e9 and np.isnan(x["last_session_ts"][0])
