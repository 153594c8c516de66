"""What sendwise derives from email events: sends, human opens (machine opens removed) and the 72-hour label.

Machine opens are those the ESP flagged, and those it did not flag that look like one:
- an open within 60 seconds of the send (security scanners fetch links and pixels in seconds);
- an open within 15 minutes of the send whose user agent is a proxy's: a user agent seen on flagged
  machine opens at least half of the time (Apple Mail Privacy Protection, image proxies).
Both thresholds are documented in docs/features.md and measured against a simulated world's truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SCANNER_SECONDS = 60
PROXY_SECONDS = 15 * 60
PROXY_FLAGGED_SHARE = 0.5
PROXY_MIN_OPENS = 20


def message_sends(email_events: pd.DataFrame) -> pd.DataFrame:
    """One row per message: who, which campaign, when it was sent (its `delivered` time where no `sent`)."""
    sends = email_events[email_events["event"].isin(["sent", "delivered"])]
    sends = sends.assign(_order=(sends["event"] != "sent").astype(np.int8))
    sends = sends.sort_values(["message_id", "_order", "occurred_at"], kind="stable")
    first = sends.drop_duplicates("message_id")
    columns = ["message_id", "customer_id", "campaign_id", "occurred_at", "decision_id"]
    table = first[[c for c in columns if c in first.columns]].rename(columns={"occurred_at": "send_at"})
    if "decision_id" not in table.columns:
        table["decision_id"] = None
    return table.reset_index(drop=True)


def proxy_user_agents(opens: pd.DataFrame) -> set[str]:
    """User agents that the ESP flags as machines at least half of the time."""
    if "user_agent" not in opens.columns or "machine_open" not in opens.columns:
        return set()
    seen = opens.dropna(subset=["user_agent"])
    if seen.empty:
        return set()
    flagged = seen["machine_open"].fillna(False).astype(bool)
    stats = flagged.groupby(seen["user_agent"]).agg(["mean", "size"])
    chosen = stats[(stats["mean"] >= PROXY_FLAGGED_SHARE) & (stats["size"] >= PROXY_MIN_OPENS)]
    return set(chosen.index)


def classify_opens(email_events: pd.DataFrame, sends: pd.DataFrame) -> pd.DataFrame:
    """Every open with `delay_s` after its send and `is_machine` (flagged or detected)."""
    opens = email_events[email_events["event"] == "open"].copy()
    send_at = sends.set_index("message_id")["send_at"]
    opens["send_at"] = opens["message_id"].map(send_at)
    opens["delay_s"] = (opens["occurred_at"] - opens["send_at"]).dt.total_seconds()
    flagged = (
        opens["machine_open"].fillna(False).astype(bool)
        if "machine_open" in opens.columns
        else pd.Series(False, index=opens.index)
    )
    proxies = proxy_user_agents(opens)
    by_proxy = (
        opens["user_agent"].isin(proxies) & (opens["delay_s"] <= PROXY_SECONDS)
        if proxies and "user_agent" in opens.columns
        else pd.Series(False, index=opens.index)
    )
    by_scanner = opens["delay_s"].between(-1, SCANNER_SECONDS)
    opens["flagged"] = flagged
    opens["is_machine"] = flagged | by_proxy | by_scanner
    return opens


def label_sends(email_events: pd.DataFrame, label_hours: int = 72) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sends with `human_open` (a human open within `label_hours`) and `clicked`; and the classified opens."""
    sends = message_sends(email_events)
    opens = classify_opens(email_events, sends)
    window = pd.Timedelta(hours=label_hours)
    human = opens[~opens["is_machine"] & (opens["delay_s"] >= 0) & (opens["delay_s"] <= window.total_seconds())]
    first_open = human.groupby("message_id")["occurred_at"].min()
    clicks = email_events[email_events["event"] == "click"]
    clicked_ids = set(clicks["message_id"])
    sends["first_human_open_at"] = sends["message_id"].map(first_open)
    # A click proves a person read the email even when the open pixel was blocked or proxied.
    sends["clicked"] = sends["message_id"].isin(clicked_ids)
    sends["human_open"] = sends["first_human_open_at"].notna() | sends["clicked"]
    return sends, opens
