"""From feature rows (as Feast returns them, offline or online) to the models' design matrices.

Training and serving both call these functions, so a feature means the same thing in both. The hour-relative
features (the customer's estimated rhythm at the candidate local hour, from features/activity.py) are what lets
one model score every hour of a window; they are the only features that vary between the hours of one
customer's window besides the day type, so the hours are ranked by the rhythm and not by the sender's past
schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.localtime import local_hour_weekday

HOURS = 24
PROFILE_SIGNALS = ("open", "click", "session")
MONOTONE = {"rhythm_at_hour": 1, "rhythm_vs_peak": 1}
"""More of the customer's activity at the hour never makes an open less likely."""
HOUR_FEATURES = ("rhythm_at_hour", "rhythm_vs_peak", "local_weekday", "is_weekend")
"""What varies between the hours of one customer's window. The booster keeps them apart from every other
feature (no tree mixes the two groups), so the log-odds of an open are the customer's part plus the hour's
part: a curve is one customer row plus a table of hours, which is what makes campaign-scale scoring cheap."""
ENGAGEMENT_FEATURES = (
    "n_emails",
    "n_human_opens",
    "n_clicks",
    "n_sessions",
    "n_purchases",
    "purchase_value",
    "sends_7d",
    "machine_open_share",
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


@dataclass
class CustomerMatrix:
    """Feature rows as arrays: one row per customer (or per training example)."""

    customer_id: np.ndarray
    timezone: np.ndarray
    interests: list[set[str]]
    profiles: dict[str, np.ndarray]  # "open_weekday" -> [n, 24]
    scalars: pd.DataFrame
    attributes: pd.DataFrame
    category_names: list[list[str]]
    category_views: list[np.ndarray]
    has_history: np.ndarray

    def __len__(self) -> int:
        return len(self.customer_id)


def _matrix(values: pd.Series, width: int = HOURS) -> np.ndarray:
    out = np.zeros((len(values), width), dtype=np.float32)
    for i, value in enumerate(values.to_numpy()):
        if value is not None and not (isinstance(value, float) and np.isnan(value)) and len(value) == width:
            out[i] = np.asarray(value, dtype=np.float32)
    return out


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
    scalars = pd.DataFrame(
        {name: pd.to_numeric(column(name, np.nan), errors="coerce").astype("float32") for name in SCALAR_FEATURES},
        index=range(n),
    )
    attribute_columns = sorted(c for c in rows.columns if c.startswith("attr_"))
    attributes = rows[attribute_columns].reset_index(drop=True) if attribute_columns else pd.DataFrame(index=range(n))
    names = [list(v) if v is not None and not isinstance(v, float) else [] for v in column("category_names", None)]
    views = [
        np.asarray(v, dtype=np.float32) if v is not None and not isinstance(v, float) else np.zeros(0, np.float32)
        for v in column("category_views", None)
    ]
    interests = [
        {s.strip().lower() for s in str(v).split("|") if s.strip()} if isinstance(v, str) else set()
        for v in column("interests", "")
    ]
    emails = scalars["n_emails"].fillna(0).to_numpy()
    sessions = scalars["n_sessions"].fillna(0).to_numpy()
    return CustomerMatrix(
        customer_id=column("customer_id", "").astype(str).to_numpy(),
        timezone=column("timezone", "UTC").fillna("UTC").astype(str).to_numpy(),
        interests=interests,
        profiles=profiles,
        scalars=scalars,
        attributes=attributes,
        category_names=names,
        category_views=views,
        has_history=(emails > 0) | (sessions > 0),
    )


def _share_matrix(matrix: CustomerMatrix) -> tuple[list[str], np.ndarray]:
    """Each customer's share of product views per category, over the union of the categories seen."""
    vocabulary = sorted({name for names in matrix.category_names for name in names})
    position = {name: k for k, name in enumerate(vocabulary)}
    shares = np.zeros((len(matrix), max(len(vocabulary), 1)), dtype=np.float32)
    groups: dict[tuple[str, ...], list[int]] = {}
    for r, names in enumerate(matrix.category_names):
        if names and len(names) == len(matrix.category_views[r]):
            groups.setdefault(tuple(names), []).append(r)
    for names, members in groups.items():  # rows of one snapshot share their category list: stack them
        views = np.stack([matrix.category_views[r] for r in members])
        total = views.sum(axis=1, keepdims=True)
        columns = [position[name] for name in names]
        shares[np.ix_(members, columns)] = np.divide(views, total, out=np.zeros_like(views), where=total > 0)
    return vocabulary, shares


def _category_share(
    matrix: CustomerMatrix, rows: np.ndarray, categories: np.ndarray, no_category: str = "zero"
) -> np.ndarray:
    """Share of each row's customer's product views in the given category.

    Where a row has no category (a campaign without a topic), `no_category="average"` gives the share of an
    average category (1 / number of categories) for customers with views, matching "no topic, no effect".
    """
    vocabulary, shares = _share_matrix(matrix)
    values = pd.Series(np.asarray(categories, dtype=object)).where(lambda v: v.notna(), "").astype(str)
    codes = pd.Categorical(values, categories=vocabulary).codes if vocabulary else np.full(len(rows), -1)
    out = np.where(codes >= 0, shares[rows, np.maximum(codes, 0)], 0.0).astype(np.float32)
    if no_category == "average" and vocabulary:
        has_views = shares.sum(axis=1) > 0
        missing = (values == "").to_numpy()
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


def _engagement_scalars(matrix: CustomerMatrix, rows: np.ndarray, cumulative: bool = False) -> pd.DataFrame:
    """Rates per email received; with `cumulative`, the decayed counts too (what a customer is worth)."""
    scalars = matrix.scalars.iloc[rows].reset_index(drop=True)
    emails = scalars["n_emails"].fillna(0)
    scalars["open_rate"] = (scalars["n_human_opens"].fillna(0) + PRIOR_WEIGHT * PRIOR_OPEN_RATE) / (
        emails + PRIOR_WEIGHT
    )
    scalars["click_rate"] = (scalars["n_clicks"].fillna(0) + PRIOR_WEIGHT * 0.05) / (emails + PRIOR_WEIGHT)
    for name in ("n_sessions", "n_purchases", "purchase_value"):
        scalars[name.removeprefix("n_") + "_per_email"] = scalars[name].fillna(0) / (emails + PRIOR_WEIGHT)
    return scalars if cumulative else scalars.drop(columns=list(CUMULATIVE))


def _attributes(matrix: CustomerMatrix, rows: np.ndarray) -> pd.DataFrame:
    attributes = matrix.attributes.iloc[rows].reset_index(drop=True)
    for column in attributes.columns:
        if not pd.api.types.is_numeric_dtype(attributes[column]):
            attributes[column] = attributes[column].astype("category")
    return attributes


def rhythm_features(
    matrix: CustomerMatrix, rows: np.ndarray, hour: np.ndarray, weekend: np.ndarray
) -> dict[str, np.ndarray]:
    """The customer's rhythm at each row's local hour: 24 × its share of the day, and its ratio to the peak.

    Each customer's two days are normalized once and then looked up (rows repeat a customer once per hour of a
    window); a day without activity is flat."""
    days = np.stack([matrix.profiles["rhythm_weekday"], matrix.profiles["rhythm_weekend"]], axis=1)
    total = days.sum(axis=2, keepdims=True)
    shares = np.where(total > 0, days / np.maximum(total, 1e-9), 1.0 / HOURS)
    day = np.asarray(weekend, dtype=np.int64)
    at_hour = shares[rows, day, hour]
    peak = shares.max(axis=2)[rows, day]
    return {
        "rhythm_at_hour": (HOURS * at_hour).astype(np.float32),
        "rhythm_vs_peak": (at_hour / peak).astype(np.float32),
    }


def open_design(
    matrix: CustomerMatrix,
    rows: np.ndarray,
    send_at: pd.Series,
    kind: np.ndarray,
    topic: np.ndarray,
) -> pd.DataFrame:
    """One design row per (customer row, send time): the open model's inputs."""
    rows = np.asarray(rows, dtype=np.int64)
    hour, weekday = local_hour_weekday(send_at.reset_index(drop=True), pd.Series(matrix.timezone[rows]))
    weekend = weekday >= 5
    utc_hour = pd.to_datetime(send_at.to_numpy(), utc=True).hour.to_numpy()
    offset = ((hour.astype(int) - utc_hour + 12) % 24) - 12
    columns: dict[str, np.ndarray] = {
        "local_weekday": weekday.astype(np.float32),
        "is_weekend": weekend.astype(np.float32),
        "utc_offset": offset.astype(np.float32),
    }
    columns.update(rhythm_features(matrix, rows, hour, weekend))
    design = pd.DataFrame(columns)
    design["campaign_kind"] = pd.Categorical(
        kind, categories=["promotional", "newsletter", "triggered", "transactional"]
    )
    design["topic_affinity"] = _category_share(matrix, rows, topic, no_category="average")
    design["topic_interest"] = _interest_match(matrix, rows, topic)
    design = pd.concat([design, _engagement_scalars(matrix, rows), _attributes(matrix, rows)], axis=1)
    return design


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


def offer_design(matrix: CustomerMatrix, rows: np.ndarray, offers: OfferMatrix, offer_rows: np.ndarray) -> pd.DataFrame:
    """One design row per (customer row, offer row): the next-best-offer model's inputs."""
    rows = np.asarray(rows, dtype=np.int64)
    offer_rows = np.asarray(offer_rows, dtype=np.int64)
    categories = offers.category[offer_rows]
    design = pd.DataFrame(
        {
            "offer_id": pd.Categorical(offers.offer_id[offer_rows]),
            "offer_kind": pd.Categorical(offers.kind[offer_rows], categories=["discount", "content", "control"]),
            "offer_category": pd.Categorical(categories),
            "discount_pct": offers.discount_pct[offer_rows],
            "price": offers.price[offer_rows],
            "margin": offers.margin[offer_rows],
            "category_affinity": _category_share(matrix, rows, categories),
            "category_interest": _interest_match(matrix, rows, categories),
        }
    )
    engagement = _engagement_scalars(matrix, rows, cumulative=True)
    return pd.concat([design, engagement, _attributes(matrix, rows)], axis=1)
