"""From feature rows (as Feast returns them, offline or online) to the models' design matrices.

Training and serving both call these functions, so a feature means the same thing in both. The hour-relative
features (the customer's estimated rhythm at the candidate local hour, from features/activity.py) are what lets
one model score every hour of a window; they are the only features that vary between the hours of one
customer's window besides the day type, so the hours are ranked by the rhythm and not by the sender's past
schedule.
"""

from __future__ import annotations

import weakref
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.localtime import FEW_ROWS, clock_at, local_hour_weekday

HOURS = 24
PROFILE_SIGNALS = ("open", "click", "session")
MONOTONE = {"rhythm_at_hour": 1, "rhythm_vs_peak": 1}
"""More of the customer's activity at the hour never makes an open less likely."""
HOURS_SINCE_VISIT = "hours_since_visit"
HOUR_FEATURES = ("rhythm_at_hour", "rhythm_vs_peak", "is_weekend", HOURS_SINCE_VISIT)
"""What varies between the hours of one customer's window. The booster keeps them apart from every other
feature (no tree mixes the two groups), so the log-odds of an open are the customer's part plus the hour's
part: a curve is one customer row plus a table of hours, which is what makes campaign-scale scoring cheap."""
LATEST_TIMES = ("last_session_ts", "last_purchase_ts")
LATEST_TEXTS = ("last_viewed_category", "last_purchase_category")
"""The latest values (`features.latest`, view `latest_activity_fv`) the models read: times in seconds since
1970 (NaN: never), categories as text (None: none)."""
VISIT_HOURS = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 36.0, 48.0])
"""The values `hours_since_visit` takes: the hours since the last site visit rounded down onto this grid (finer
where a visit is recent, since minutes matter more then), up to two days; a visit longer ago (or none) is 48.
What a customer did before then is the batch aggregates' (days_since_session, the rhythm). A few values keep the
open model's hour table small: a cell per value (`serving.curves`)."""
VISIT_HOURS_CAP = float(VISIT_HOURS[-1])
LATEST_DAYS_CAP = 30.0
"""The offer model's latest-value inputs count up to 30 days; longer ago (or never) is 30 days."""
OFFER_LATEST_FEATURES: tuple[str, ...] = ("days_since_visit", "days_since_purchase", "days_since_category_viewed")
OFFER_LATEST_FEATURES += ("days_since_category_bought",)
"""The offer model's inputs from the latest values at the decision's time: days since the last site visit and
the last purchase, and the same where the offer's category is the one the customer last viewed (or bought),
else the cap. Each is the cap for a customer with no recent activity, which is what the offer scores kept per
snapshot assume (`serving.offers`): a decision scores again only the customers with recent activity."""
ENGAGEMENT_FEATURES = (
    "n_emails",
    "n_human_opens",
    "n_clicks",
    "n_sessions",
    "n_purchases",
    "purchase_value",
    "sends_7d",
    "opens_observable",
    "days_since_human_open",
    "days_since_session",
    "days_since_email",
)
"""Engagement built from the customer's own events (blanked when profiling consent is not given)."""
SCALAR_FEATURES = (*ENGAGEMENT_FEATURES, "signup_at_days")
CUMULATIVE = ("n_human_opens", "n_clicks", "n_sessions", "n_purchases", "purchase_value")
"""Decayed counts grow over the first months of data, so a model would read "more opens" where there is only
"later": the open model sees them per email received instead (`open_rate`, `sessions_per_email`, ...), which
brought its calibration from 1.058 to 1.042. The offer model keeps both: spend so far is what a customer is
worth, and on the Starbucks data the policy lost a point without it."""
PRIOR_OPEN_RATE = 0.2
PRIOR_WEIGHT = 3.0
OPEN_HISTORY = ("open_rate", "n_human_opens", "days_since_human_open")
"""What a customer's own opens say: unknown (NaN) where `opens_observable` is 0, a customer whose opens come
through a privacy proxy. The models learn what to predict then from customers whose opens are seen, shown
the same way in training (training/datasets.py), so a proxied customer's open propensity rests on their
clicks, visits, purchases and attributes instead of on opens that were never theirs."""


@dataclass
class CustomerMatrix:
    """Feature rows as arrays: one row per customer (or per training example)."""

    customer_id: np.ndarray
    timezone: np.ndarray
    interests: list[AbstractSet[str]]
    profiles: dict[str, np.ndarray]  # "open_weekday" -> [n, 24]
    scalars: np.ndarray  # [n, SCALAR_FEATURES] float32, NaN where missing
    attributes: dict[str, np.ndarray]  # the attr_* columns: numbers, or labels as objects
    category_names: list[list[str]]
    category_views: list[np.ndarray]
    latest: dict[str, np.ndarray] = field(default_factory=dict)
    """`LATEST_TIMES` and `LATEST_TEXTS` where read (a missing one: never, for every row)."""

    def __len__(self) -> int:
        return len(self.customer_id)

    def latest_time(self, name: str) -> np.ndarray:
        """A latest time of every row, seconds since 1970 (NaN: never or not read)."""
        found = self.latest.get(name)
        return np.full(len(self), np.nan) if found is None else np.asarray(found, dtype=np.float64)

    def latest_text(self, name: str) -> np.ndarray:
        """A latest category of every row (None: none or not read)."""
        found = self.latest.get(name)
        return np.full(len(self), None, dtype=object) if found is None else found

    def take(self, rows: np.ndarray) -> CustomerMatrix:
        """The matrix of these rows (repeated rows are copies)."""
        return CustomerMatrix(
            customer_id=self.customer_id[rows],
            timezone=self.timezone[rows],
            interests=[self.interests[r] for r in rows],
            profiles={name: values[rows] for name, values in self.profiles.items()},
            scalars=self.scalars[rows],
            attributes={name: values[rows] for name, values in self.attributes.items()},
            category_names=[self.category_names[r] for r in rows],
            category_views=[self.category_views[r] for r in rows],
            latest={name: values[rows] for name, values in self.latest.items()},
        )


def _matrix(values: pd.Series, width: int = HOURS) -> np.ndarray:
    out = np.zeros((len(values), width), dtype=np.float32)
    for i, value in enumerate(values.to_numpy()):
        if value is not None and not (isinstance(value, float) and np.isnan(value)) and len(value) == width:
            out[i] = np.asarray(value, dtype=np.float32)
    return out


def _attribute(values: pd.Series) -> np.ndarray:
    """An attribute column as an array: numbers as numbers (NaN where missing), anything else as objects."""
    if pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, np.dtype):  # nullable Int64, ...
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    return values.to_numpy()


def is_label(values: np.ndarray) -> bool:
    """An attribute the models read as categorical: anything but numbers and booleans."""
    return values.dtype.kind not in "biuf"


def set_attribute(attributes: dict[str, np.ndarray], name: str, row: int, value: object) -> None:
    """`attributes[name][row] = value`; a label given where the column holds numbers makes the column labels
    (as the models read a frame's column that mixes the two)."""
    if not is_label(attributes[name]) and not isinstance(value, int | float):
        attributes[name] = attributes[name].astype(object)
    attributes[name][row] = value


def customer_matrix(rows: pd.DataFrame) -> CustomerMatrix:
    """Arrays from feature rows with the columns of the customer, attribute and engagement views."""
    n = len(rows)

    def column(name: str, default: object) -> pd.Series:
        return rows[name] if name in rows.columns else pd.Series([default] * n, index=rows.index)

    profiles = {}
    for signal in PROFILE_SIGNALS:
        for day in ("weekday", "weekend"):
            profiles[f"{signal}_{day}"] = _matrix(column(f"{signal}_hours_{day}", None))
    for day in ("weekday", "weekend"):
        profiles[f"rhythm_{day}"] = _matrix(column(f"rhythm_{day}", None))
    scalars = np.empty((n, len(SCALAR_FEATURES)), dtype=np.float32)
    for k, name in enumerate(SCALAR_FEATURES):
        scalars[:, k] = pd.to_numeric(column(name, np.nan), errors="coerce").astype("float32").to_numpy()
    attributes = {name: _attribute(rows[name]) for name in sorted(c for c in rows.columns if c.startswith("attr_"))}
    names = [list(v) if v is not None and not isinstance(v, float) else [] for v in column("category_names", None)]
    views = [
        np.asarray(v, dtype=np.float32) if v is not None and not isinstance(v, float) else np.zeros(0, np.float32)
        for v in column("category_views", None)
    ]
    interests: list[AbstractSet[str]] = [
        {s.strip().lower() for s in str(v).split("|") if s.strip()} if isinstance(v, str) else set()
        for v in column("interests", "")
    ]
    return CustomerMatrix(
        customer_id=column("customer_id", "").astype(str).to_numpy(),
        timezone=column("timezone", "UTC").fillna("UTC").astype(str).to_numpy(),
        interests=interests,
        profiles=profiles,
        scalars=scalars,
        attributes=attributes,
        category_names=names,
        category_views=views,
        latest=latest_columns(rows),
    )


def latest_columns(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The latest values of feature rows (those the rows have): times as float seconds, categories as text."""
    found: dict[str, np.ndarray] = {}
    for name in LATEST_TIMES:
        if name in rows.columns:
            found[name] = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=np.float64)
    for name in LATEST_TEXTS:
        if name in rows.columns:
            values = rows[name].astype(object)
            found[name] = values.where(values.notna() & (values != ""), None).to_numpy(dtype=object)
    return found


def _seconds(times: pd.Series | pd.Timestamp, n: int) -> np.ndarray:
    """Seconds since 1970 of one instant (for every row) or of a time per row."""
    if isinstance(times, pd.Timestamp):
        stamp = times.tz_convert("UTC") if times.tzinfo is not None else times.tz_localize("UTC")
        return np.full(n, stamp.value / 1e9)
    index = pd.DatetimeIndex(pd.to_datetime(pd.Series(times).reset_index(drop=True), utc=True))
    return index.asi8.astype(np.float64) / _UNITS_PER_SECOND[str(index.unit)]


_UNITS_PER_SECOND = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def elapsed(since: np.ndarray, at: np.ndarray, unit_seconds: float, cap: float) -> np.ndarray:
    """Time from `since` to `at` in units of `unit_seconds`, between 0 and `cap` (the cap where `since` is
    unknown): the form every latest-value input takes."""
    value = (np.asarray(at, dtype=np.float64) - since) / unit_seconds
    return np.where(np.isnan(value), cap, np.clip(value, 0.0, cap)).astype(np.float32)


def hours_since_visit(matrix: CustomerMatrix, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Hours from each row's customer's last site visit to `at` (seconds since 1970), rounded down onto
    `VISIT_HOURS`: the open model's hour-varying latest-value input."""
    hours = elapsed(matrix.latest_time("last_session_ts")[rows], at, 3600.0, VISIT_HOURS_CAP)
    return VISIT_HOURS[np.searchsorted(VISIT_HOURS, hours, side="right") - 1].astype(np.float32)


def offer_latest_columns(
    matrix: CustomerMatrix, rows: np.ndarray, categories: np.ndarray, at: np.ndarray | None
) -> dict[str, np.ndarray]:
    """`OFFER_LATEST_FEATURES` of each (customer row, offer category) at `at` (seconds since 1970 per row;
    None: no recent activity known, every input at its cap)."""
    if at is None:
        return {name: np.full(len(rows), LATEST_DAYS_CAP, dtype=np.float32) for name in OFFER_LATEST_FEATURES}
    visit = elapsed(matrix.latest_time("last_session_ts")[rows], at, 86400.0, LATEST_DAYS_CAP)
    purchase = elapsed(matrix.latest_time("last_purchase_ts")[rows], at, 86400.0, LATEST_DAYS_CAP)
    named = np.asarray([c if isinstance(c, str) and c else None for c in categories], dtype=object)
    viewed = (matrix.latest_text("last_viewed_category")[rows] == named) & (named != None)  # noqa: E711
    bought = (matrix.latest_text("last_purchase_category")[rows] == named) & (named != None)  # noqa: E711
    cap = np.float32(LATEST_DAYS_CAP)
    return {
        "days_since_visit": visit,
        "days_since_purchase": purchase,
        "days_since_category_viewed": np.where(viewed, visit, cap).astype(np.float32),
        "days_since_category_bought": np.where(bought, purchase, cap).astype(np.float32),
    }


def _share_matrix(matrix: CustomerMatrix) -> tuple[list[str], np.ndarray]:
    """Each customer's share of product views per category, over the union of the categories seen."""
    # Rows with the same categories are stacked together. A snapshot's rows share one list object: rows are
    # grouped by the object first (one look-up each), then the objects by their names.
    by_object: dict[int, tuple[list[str], list[int]]] = {}
    for r, names in enumerate(matrix.category_names):
        if names:
            members = by_object.setdefault(id(names), (names, []))[1]
            if len(names) == len(matrix.category_views[r]):
                members.append(r)
    groups: dict[tuple[str, ...], list[int]] = {}
    for names, members in by_object.values():
        groups.setdefault(tuple(names), []).extend(members)
    vocabulary = sorted({name for names in groups for name in names})
    position = {name: k for k, name in enumerate(vocabulary)}
    shares = np.zeros((len(matrix), max(len(vocabulary), 1)), dtype=np.float32)
    for group, members in groups.items():
        if not members:
            continue
        views = np.stack([matrix.category_views[r] for r in members])
        total = views.sum(axis=1, keepdims=True)
        columns = [position[name] for name in group]
        shares[np.ix_(members, columns)] = np.divide(views, total, out=np.zeros_like(views), where=total > 0)
    return vocabulary, shares


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(each value's code, the distinct values as strings); None and NaN take -1. A dictionary for a few rows,
    where pandas' fixed cost is most of the time."""
    if len(values) > FEW_ROWS:
        found, distinct = pd.factorize(np.asarray(values, dtype=object))
        return found, [str(v) for v in distinct]
    codes: dict[object, int] = {}
    found = np.array(
        [-1 if v is None or pd.isna(v) else codes.setdefault(v, len(codes)) for v in values], dtype=np.int64
    )
    return found, [str(v) for v in codes]


def _category_share(
    matrix: CustomerMatrix, rows: np.ndarray, categories: np.ndarray, no_category: str = "zero"
) -> np.ndarray:
    """Share of each row's customer's product views in the given category.

    Where a row has no category (a campaign without a topic), `no_category="average"` gives the share of an
    average category (1 / number of categories) for customers with views, matching "no topic, no effect".
    """
    vocabulary, shares = _share_matrix(matrix)
    # each distinct category once (a campaign has one topic, an offer design a dozen categories)
    found, names = _factorize(categories)
    position = {name: k for k, name in enumerate(vocabulary)}
    coded = np.array([position.get(name, -1) for name in names] + [-1], dtype=np.int64)
    codes = coded[found]  # -1 (no category) takes the last entry: none
    out = np.where(codes >= 0, shares[rows, np.maximum(codes, 0)], 0.0).astype(np.float32)
    if no_category == "average" and vocabulary:
        has_views = shares.sum(axis=1) > 0
        missing = np.array([name == "" for name in names] + [True])[found]
        out = np.where(missing & has_views[rows], 1.0 / len(vocabulary), out).astype(np.float32)
    return out


def _interest_match(matrix: CustomerMatrix, rows: np.ndarray, categories: np.ndarray) -> np.ndarray:
    return np.array(
        [
            1.0 if isinstance(c, str) and c.lower() in matrix.interests[r] else 0.0
            for r, c in zip(rows, categories, strict=True)
        ],
        dtype=np.float32,
    )


def _engagement_columns(matrix: CustomerMatrix, rows: np.ndarray, cumulative: bool = False) -> dict[str, np.ndarray]:
    """Rates per email received; with `cumulative`, the decayed counts too (what a customer is worth)."""
    table = matrix.scalars[rows]
    scalars = {name: table[:, k] for k, name in enumerate(SCALAR_FEATURES)}
    counts = np.nan_to_num(table, nan=0.0)  # no count yet is none
    count = {name: counts[:, k] for k, name in enumerate(SCALAR_FEATURES)}
    emails = count["n_emails"]
    scalars["open_rate"] = (count["n_human_opens"] + PRIOR_WEIGHT * PRIOR_OPEN_RATE) / (emails + PRIOR_WEIGHT)
    scalars["click_rate"] = (count["n_clicks"] + PRIOR_WEIGHT * 0.05) / (emails + PRIOR_WEIGHT)
    for name in ("n_sessions", "n_purchases", "purchase_value"):
        scalars[name.removeprefix("n_") + "_per_email"] = count[name] / (emails + PRIOR_WEIGHT)
    hidden = scalars["opens_observable"] == 0
    if hidden.any():
        for name in OPEN_HISTORY:
            scalars[name] = np.where(hidden, np.float32(np.nan), scalars[name]).astype(np.float32)
    return scalars if cumulative else {k: v for k, v in scalars.items() if k not in CUMULATIVE}


def _attribute_columns(matrix: CustomerMatrix, rows: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """The attributes of the rows, and which of them are labels (categorical): the non-numeric ones."""
    values = {name: column[rows] for name, column in matrix.attributes.items()}
    return values, [name for name, column in matrix.attributes.items() if is_label(column)]


def rhythm_features(
    matrix: CustomerMatrix, rows: np.ndarray, hour: np.ndarray, weekend: np.ndarray
) -> dict[str, np.ndarray]:
    """The customer's rhythm at each row's local hour: 24 × its share of the day, and the customer's expected
    activity there relative to their own peak (the rhythm as features/activity.py estimates it).

    Each customer's two days are normalized once and then looked up (rows repeat a customer once per hour of a
    window); a day without activity is flat, at its peak everywhere."""
    days = np.stack([matrix.profiles["rhythm_weekday"], matrix.profiles["rhythm_weekend"]], axis=1)
    total = days.sum(axis=2, keepdims=True)
    empty = total <= 0
    shares = np.where(empty, 1.0 / HOURS, days / np.maximum(total, 1e-9))
    relative = np.where(empty, 1.0, np.clip(days, 0.0, 1.0))
    day = np.asarray(weekend, dtype=np.int64)
    return {
        "rhythm_at_hour": (HOURS * shares[rows, day, hour]).astype(np.float32),
        "rhythm_vs_peak": relative[rows, day, hour].astype(np.float32),
    }


@dataclass
class DesignColumns:
    """A design as named columns in order, before it becomes a frame: `categories` names the categorical ones,
    each with its fixed categories or None (the values seen, as `astype("category")` infers them).

    Training and the reference path read `frame()`; serving turns the columns straight into the matrix
    LightGBM predicts from (`lightgbm_matrix`), which for a few rows costs a fraction of building the frame."""

    values: dict[str, np.ndarray]
    categories: dict[str, list[str] | None]

    def frame(self) -> pd.DataFrame:
        data: dict[str, object] = {}
        for name, values in self.values.items():
            if name not in self.categories:
                data[name] = values
            elif (fixed := self.categories[name]) is not None:
                data[name] = pd.Categorical(values, categories=fixed)
            else:
                data[name] = pd.Series(values).astype("category")
        return pd.DataFrame(data, index=range(self.rows))

    @property
    def rows(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0


_names_of: weakref.WeakKeyDictionary[lgb.Booster, list[str]] = weakref.WeakKeyDictionary()


def feature_names(booster: lgb.Booster) -> list[str]:
    """`booster.feature_name()`, asked of LightGBM once per booster (each call decodes every name again). The
    list is shared: read it, never change it."""
    names = _names_of.get(booster)
    if names is None:
        names = _names_of[booster] = booster.feature_name()
    return names


def lightgbm_matrix(columns: DesignColumns, booster: lgb.Booster) -> np.ndarray | None:
    """The float matrix LightGBM converts `columns.frame()[booster.feature_name()]` to: numbers as they are,
    labels as their position in the categories the booster was trained with (NaN where unseen). None when the
    booster's categorical features are not the design's, so the caller predicts from the frame instead."""
    names = feature_names(booster)
    categorical = [name for name in names if name in columns.categories]
    trained = booster.pandas_categorical or []
    if len(trained) != len(categorical) or any(name not in columns.values for name in names):
        return None
    known = dict(zip(categorical, trained, strict=True))
    out = np.empty((columns.rows, len(names)), dtype=np.float64)
    for k, name in enumerate(names):
        values = columns.values[name]
        if name not in known:
            out[:, k] = values
        elif columns.rows <= FEW_ROWS:  # a dictionary; pandas' fixed cost is most of the time of a few rows
            position = {category: float(i) for i, category in enumerate(known[name])}
            out[:, k] = [position.get(v, np.nan) if v is not None else np.nan for v in values]
        else:
            codes = pd.Categorical(values, categories=known[name]).codes.astype(np.float64)
            out[:, k] = np.where(codes < 0, np.nan, codes)
    return out


CAMPAIGN_KINDS = ["promotional", "newsletter", "triggered", "transactional"]


def open_columns(
    matrix: CustomerMatrix,
    rows: np.ndarray,
    send_at: pd.Series | pd.Timestamp,
    kind: np.ndarray,
    topic: np.ndarray,
) -> DesignColumns:
    """One design row per (customer row, send time): the open model's inputs, as columns. `send_at` is a time
    per row, or one UTC instant for every row (a campaign's window start)."""
    rows = np.asarray(rows, dtype=np.int64)
    at = _seconds(send_at, len(rows))
    if isinstance(send_at, pd.Timestamp):
        instant = send_at.tz_convert("UTC") if send_at.tzinfo is not None else send_at.tz_localize("UTC")
        hour, weekday = clock_at(instant, matrix.timezone[rows])
        utc_hour = np.full(len(rows), instant.hour)
    else:
        hour, weekday = local_hour_weekday(send_at.reset_index(drop=True), pd.Series(matrix.timezone[rows]))
        times = pd.to_datetime(pd.Series(send_at).reset_index(drop=True), utc=True)
        utc_hour = pd.DatetimeIndex(times).hour.to_numpy()
    weekend = weekday >= 5
    offset = ((hour.astype(int) - utc_hour + 12) % 24) - 12
    values: dict[str, np.ndarray] = {
        "is_weekend": weekend.astype(np.float32),
        "utc_offset": offset.astype(np.float32),
    }
    values.update(rhythm_features(matrix, rows, hour, weekend))
    values[HOURS_SINCE_VISIT] = hours_since_visit(matrix, rows, at)
    values["campaign_kind"] = np.asarray(kind, dtype=object)
    values["topic_affinity"] = _category_share(matrix, rows, topic, no_category="average")
    values["topic_interest"] = _interest_match(matrix, rows, topic)
    values.update(_engagement_columns(matrix, rows))
    attributes, labels = _attribute_columns(matrix, rows)
    values.update(attributes)
    return DesignColumns(values, {"campaign_kind": CAMPAIGN_KINDS, **dict.fromkeys(labels)})


def open_design(
    matrix: CustomerMatrix,
    rows: np.ndarray,
    send_at: pd.Series,
    kind: np.ndarray,
    topic: np.ndarray,
) -> pd.DataFrame:
    """One design row per (customer row, send time): the open model's inputs."""
    return open_columns(matrix, rows, send_at, kind, topic).frame()


@dataclass
class OfferMatrix:
    """The offers as arrays."""

    offer_id: np.ndarray
    kind: np.ndarray
    category: np.ndarray
    discount_pct: np.ndarray
    price: np.ndarray
    margin: np.ndarray

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> OfferMatrix:
        def numeric(name: str) -> np.ndarray:
            return pd.to_numeric(rows.get(name, pd.Series(np.nan, index=rows.index)), errors="coerce").to_numpy(
                dtype=np.float32
            )

        return cls(
            offer_id=rows["offer_id"].astype(str).to_numpy(),
            kind=rows["offer_kind"].fillna("discount").astype(str).to_numpy(),
            category=rows["offer_category"].fillna("").astype(str).to_numpy(),
            discount_pct=numeric("discount_pct"),
            price=numeric("price"),
            margin=np.nan_to_num(numeric("margin"), nan=1.0),
        )

    def __len__(self) -> int:
        return len(self.offer_id)


OFFER_KINDS = ["discount", "content", "control"]


def offer_design(
    matrix: CustomerMatrix,
    rows: np.ndarray,
    offers: OfferMatrix,
    offer_rows: np.ndarray,
    at: pd.Series | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """One design row per (customer row, offer row): the next-best-offer model's inputs (latest values judged at
    `at`, one time per row or one for all; None: as if no recent activity were known)."""
    return offer_columns(matrix, rows, offers, offer_rows, at).frame()


def offer_columns(
    matrix: CustomerMatrix,
    rows: np.ndarray,
    offers: OfferMatrix,
    offer_rows: np.ndarray,
    at: pd.Series | pd.Timestamp | None = None,
) -> DesignColumns:
    """One design row per (customer row, offer row): the next-best-offer model's inputs, as columns."""
    rows = np.asarray(rows, dtype=np.int64)
    offer_rows = np.asarray(offer_rows, dtype=np.int64)
    categories = offers.category[offer_rows]
    values: dict[str, np.ndarray] = {
        "offer_id": offers.offer_id[offer_rows],
        "offer_kind": offers.kind[offer_rows],
        "offer_category": categories,
        "discount_pct": offers.discount_pct[offer_rows],
        "price": offers.price[offer_rows],
        "margin": offers.margin[offer_rows],
        "category_affinity": _category_share(matrix, rows, categories),
        "category_interest": _interest_match(matrix, rows, categories),
    }
    seconds = None if at is None else _seconds(at, len(rows))
    values.update(offer_latest_columns(matrix, rows, categories, seconds))
    values.update(_engagement_columns(matrix, rows, cumulative=True))
    attributes, labels = _attribute_columns(matrix, rows)
    values.update(attributes)
    kinds = {"offer_id": None, "offer_kind": OFFER_KINDS, "offer_category": None, **dict.fromkeys(labels)}
    return DesignColumns(values, kinds)
