"""What the run records, and the words and formats the export writes for it.

The run keeps its events as rows of numbers (`Rows`, with the columns named below): customers, messages,
campaigns, offers and products as row positions, events, user agents and who made an open as small integer
codes; the export turns them into the data contract's words (`EMAIL_EVENTS[SENT] == "sent"`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sendwise.simulator.truth import KINDS


class Rows:
    """Columns collected in parts and concatenated once."""

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []

    def add(self, **columns: Any) -> None:
        sizes = [np.size(v) for v in columns.values() if np.ndim(v) > 0]
        n = sizes[0] if sizes else 1
        self._parts.append({k: np.full(n, v) if np.ndim(v) == 0 else np.asarray(v) for k, v in columns.items()})

    def columns(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        if not self._parts:
            floats = {"t", "value", "propensity", "p_open", "p_conv", "last_visit"}
            return {name: np.empty(0, dtype=np.float64 if name in floats else np.int64) for name in names}
        return {name: np.concatenate([part[name] for part in self._parts]) for name in names}


EMAIL_COLUMNS = ("c", "msg", "camp", "ev", "t", "flag", "bounce", "ua", "source")
SITE_COLUMNS = ("c", "ev", "t", "cat", "product", "value")
OFFER_COLUMNS = ("c", "o", "msg", "ev", "t", "value", "propensity")
MESSAGE_COLUMNS: tuple[str, ...] = ("msg", "c", "camp", "t", "sends7", "p_open", "human", "delivered")
MESSAGE_COLUMNS += ("o", "propensity", "p_conv", "converted", "last_visit")
PRODUCTS_PER_CATEGORY = 40
"""Products of each category: product code `category * PRODUCTS_PER_CATEGORY + j`."""

EMAIL_EVENTS = ("sent", "delivered", "open", "click", "bounce", "unsubscribe", "complaint")
SITE_EVENTS = ("session_start", "page_view", "product_view", "add_to_cart", "purchase")
OFFER_EVENTS = ("exposed", "clicked", "converted")
SENT, DELIVERED, OPEN, CLICK, BOUNCE, UNSUBSCRIBE, COMPLAINT = range(7)
SESSION_START, PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, PURCHASE = range(5)
EXPOSED, OFFER_CLICKED, CONVERTED = range(3)
PROMOTIONAL, NEWSLETTER, TRIGGERED = (KINDS.index(k) for k in ("promotional", "newsletter", "triggered"))
HUMAN, MPP, SCANNER = range(3)
"""Who made an open or a click: the person, Apple's privacy proxy or a security scanner."""

DEVICE_USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17628; Pro)",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
)
MPP_USER_AGENT = "Mozilla/5.0"
SCANNER_USER_AGENTS = ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "Mimecast-Security-Scanner/2.1")
USER_AGENTS = (*DEVICE_USER_AGENTS, MPP_USER_AGENT, *SCANNER_USER_AGENTS)
"""Every user agent the data holds; a user agent code indexes this tuple (the first ones are devices)."""
MPP_UA = len(DEVICE_USER_AGENTS)
SCANNER_UA = MPP_UA + 1


def iso(stamps: pd.Series) -> pd.Series:
    """Time stamps as the exports write them: ISO 8601 in UTC with a `Z` ("" where missing)."""
    return stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna("")
