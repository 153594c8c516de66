"""The latest-values tables against a plain per-customer reading of their definition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from features.latest import (
    ACTIVITY_COLUMNS,
    ACTIVITY_TABLE,
    EMAIL_FLAGS,
    EMAIL_STATE_TABLE,
    KEY,
    TIME,
    accumulate,
    activity_changes,
    arrow_table,
    email_state,
    latest_activity,
    with_schema,
)


def _site_events(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Events of a few customers at few distinct times (so that some share a customer and a time)."""
    minutes = rng.integers(0, 40, n)
    return pd.DataFrame(
        {
            KEY: rng.choice(["c10", "c2", "a", "b7", "zz"], n),
            "event": rng.choice(["session_start", "page_view", "product_view", "add_to_cart", "purchase"], n),
            "occurred_at": (pd.Timestamp("2026-11-01T08:00Z") + pd.to_timedelta(minutes, unit="min")).astype(
                "datetime64[us, UTC]"
            ),
            "category": rng.choice(np.array(["books", "garden", None], dtype=object), n),
        }
    )


def _reference(changes: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple[object, ...]]:
    """Each customer's rows in time order, every value the last one set so far; the last row at each time."""
    rows: list[tuple[object, ...]] = []
    for customer in sorted(set(changes[KEY])):
        mine = changes[changes[KEY] == customer].sort_values(TIME, kind="stable")
        state: dict[str, object] = dict.fromkeys(columns)
        kept: dict[pd.Timestamp, tuple[object, ...]] = {}
        for _, change in mine.iterrows():
            for name in columns:
                if pd.notna(change[name]):
                    state[name] = change[name]
            kept[change[TIME]] = (customer, change[TIME], *(state[name] for name in columns))
        rows.extend(kept.values())
    return rows


def _rows(table: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple[object, ...]]:
    def plain(value: object) -> object:
        return None if value is None or (isinstance(value, float) and np.isnan(value)) else value

    return [tuple(plain(v) for v in row) for row in table[[KEY, TIME, *columns]].itertuples(index=False)]


def test_latest_activity_matches_carrying_each_customers_values_forward() -> None:
    rng = np.random.default_rng(11)
    site = _site_events(400, rng)
    table = latest_activity(site)
    assert _rows(table, ACTIVITY_COLUMNS) == [
        tuple(None if isinstance(v, float) and np.isnan(v) else v for v in row)
        for row in _reference(activity_changes(site), ACTIVITY_COLUMNS)
    ]
    assert table[TIME].dtype == "datetime64[us, UTC]"
    assert len(table) < len(site)  # events at a customer's same minute became one row


def test_current_rows_are_updated_by_new_changes() -> None:
    """As the service does with a pushed batch: the stored rows first, then the batch's changes."""
    rng = np.random.default_rng(12)
    site = _site_events(300, rng)
    earlier = site["occurred_at"] < pd.Timestamp("2026-11-01T08:20Z")
    before, after = site[earlier], site[~earlier]
    now = with_schema(latest_activity(before).groupby(KEY).tail(1), ACTIVITY_TABLE)
    updated = accumulate(pd.concat([now, activity_changes(after)], ignore_index=True), ACTIVITY_COLUMNS)
    everything = latest_activity(site)
    last = everything.groupby(KEY).tail(1).reset_index(drop=True)
    assert _rows(updated.groupby(KEY).tail(1).reset_index(drop=True), ACTIVITY_COLUMNS) == _rows(last, ACTIVITY_COLUMNS)


def test_email_flags_stay_set_and_the_tables_keep_their_schema() -> None:
    emails = pd.DataFrame(
        {
            KEY: ["b", "a", "a", "b", "a"],
            "event": ["bounce", "complaint", "unsubscribe", "unsubscribe", "unsubscribe"],
            "bounce_type": ["hard", None, None, None, None],
            "occurred_at": pd.to_datetime(
                [
                    "2026-11-02T08:00Z",
                    "2026-11-02T08:00Z",
                    "2026-11-01T08:00Z",
                    "2026-11-03T08:00Z",
                    "2026-11-02T08:00Z",
                ],
                utc=True,
            ).astype("datetime64[us, UTC]"),
        }
    )
    state = email_state(emails)
    assert state[KEY].tolist() == ["a", "a", "b", "b"]
    assert state[list(EMAIL_FLAGS)].to_numpy().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1]]
    assert state[list(EMAIL_FLAGS)].dtypes.tolist() == [np.float32] * 3
    table = arrow_table(state, EMAIL_STATE_TABLE)
    assert table.schema.field(TIME).type == pa.timestamp("us", tz="UTC")
    empty = arrow_table(latest_activity(None), ACTIVITY_TABLE)
    assert empty.num_rows == 0 and empty.schema.field(KEY).type == pa.string()
