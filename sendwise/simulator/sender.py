"""The sender's side of a world: its offers, its campaign calendar and how it chose each email's offer.

The offers carry their true lifts and the windows in which they could be sent; the campaigns are the weekly
promotional and newsletter blasts and the triggered cart-abandonment emails; `LoggedPolicy` is the logging
policy whose propensities the data records, so that offer policies can be evaluated off-policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sendwise.simulator.options import Rates
from sendwise.simulator.truth import CATEGORIES, DAY, HOUR, to_timestamp, utc_seconds

BLAST_HOUR_UTC = 14
"""The UTC hour at which a campaign goes to most of its recipients (the others get it at random hours)."""

# The offers: (offer_id, kind, category, discount_pct, price, margin, lift)
OFFERS: tuple[tuple[str, str, str | None, float | None, float | None, float, float], ...] = (
    ("of-00", "control", None, None, None, 20.0, 0.0),
    ("of-01", "discount", "outdoor", 20, 90.0, 27.0, 0.35),
    ("of-02", "discount", "books", 10, 25.0, 9.0, 0.45),
    ("of-03", "discount", "fashion", 30, 70.0, 14.0, 0.30),
    ("of-04", "discount", "home", 15, 60.0, 21.0, 0.35),
    ("of-05", "discount", "beauty", 25, 40.0, 11.0, 0.40),
    ("of-06", "discount", "electronics", 10, 200.0, 40.0, 0.10),
    ("of-07", "discount", "sports", 20, 80.0, 22.0, 0.30),
    ("of-08", "discount", "kids", 15, 45.0, 14.0, 0.35),
    ("of-09", "discount", "fashion", 10, 120.0, 42.0, 0.20),
    ("of-10", "content", "outdoor", None, None, 30.0, 0.30),
    ("of-11", "content", "books", None, None, 12.0, 0.30),
    ("of-12", "content", "home", None, None, 25.0, 0.30),
)
SOLD_OUT_OFFER, EXPIRED_OFFER, LATE_OFFER = "of-08", "of-09", "of-12"


def make_offers(start_s: float, end_s: float, days: int, rng: np.random.Generator) -> pd.DataFrame:
    """The 12 offers and the control arm, with their true lifts and when each could be sent."""
    frame = pd.DataFrame(
        OFFERS, columns=["offer_id", "kind", "category", "discount_pct", "price", "margin", "lift"]
    ).astype({"discount_pct": "float64", "price": "float64"})
    n = len(frame)
    frame["inventory"] = np.where(frame["kind"] == "discount", rng.integers(150, 900, n), np.nan)
    frame["starts_at"] = to_timestamp(start_s - 60 * DAY)
    frame["ends_at"] = to_timestamp(end_s + 60 * DAY)
    frame["sold_out_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    is_offer = frame["offer_id"]
    frame.loc[is_offer == SOLD_OUT_OFFER, "inventory"] = 0.0
    frame.loc[is_offer == SOLD_OUT_OFFER, "sold_out_at"] = to_timestamp(end_s - 6 * DAY)
    frame.loc[is_offer == EXPIRED_OFFER, "ends_at"] = to_timestamp(end_s - 12 * DAY)
    frame.loc[is_offer == LATE_OFFER, "starts_at"] = to_timestamp(start_s + round(days / 3) * DAY)
    frame.loc[frame["kind"] == "control", ["starts_at", "ends_at"]] = pd.NaT
    return frame


SHOP_URL = "https://shop.example"
"""The simulated shop's site (`.example` is a reserved domain): where offers link, and their pictures."""


def offer_content(offers: pd.DataFrame) -> pd.DataFrame:
    """What the shop says about each offer: `title`, `description`, `url` and `image_url`; none for the control
    arm, which is no offer. Made from each offer's id, kind, category and discount alone, never drawn: the rest
    of a world stays the same, byte for byte, as before offers had content."""
    columns = (offers[name].to_numpy(dtype=object) for name in ("offer_id", "kind", "category", "discount_pct"))
    rows = [_content(*offer) for offer in zip(*columns, strict=True)]
    return pd.DataFrame(rows, columns=["title", "description", "url", "image_url"], index=offers.index, dtype=object)


def _content(offer_id: str, kind: str, category: str | None, discount: float | None) -> tuple[str | None, ...]:
    if kind == "control":
        return None, None, None, None
    topic = category if isinstance(category, str) and category else None
    if discount is not None and not np.isnan(discount):
        title = f"{discount:g}% off {topic}" if topic else f"{discount:g}% off"
        description = f"Take {discount:g}% off everything in {topic or 'the shop'} while the offer lasts."
    else:
        title = f"The {topic} guide" if topic else "Our guide"
        description = f"What is new in {topic or 'the shop'} this season, and how to choose what suits you."
    return title, description, f"{SHOP_URL}/offers/{offer_id}", f"{SHOP_URL}/images/{offer_id}.png"


def make_campaigns(rng: np.random.Generator, start_s: float, days: int, rates: Rates) -> pd.DataFrame:
    """Three campaigns a week (two promotional, one newsletter; one topic each), then one triggered
    cart-abandonment campaign per category. `blast_s` is the campaign's blast time (seconds)."""
    rows: list[dict[str, Any]] = []
    for week_start in range(0, days, 7):
        week = np.arange(week_start, min(days, week_start + 7))
        n_this_week = round(rates.campaigns_per_week * len(week) / 7)
        n_promotional = max(1, round(rates.promotional_share * n_this_week)) if n_this_week else 0
        kinds = rng.permutation(["promotional"] * n_promotional + ["newsletter"] * (n_this_week - n_promotional))
        for day, kind in zip(np.sort(rng.choice(week, n_this_week, replace=False)), kinds, strict=True):
            day_start = start_s + day * DAY
            hour_of_day = int(to_timestamp(day_start).hour)
            topic = CATEGORIES[rng.integers(len(CATEGORIES))]
            rows.append(
                {
                    "campaign_id": f"cmp-{len(rows) + 1:04d}",
                    "kind": kind,
                    "topic": topic,
                    "subject": f"{topic.capitalize()} picks for you"
                    if kind == "promotional"
                    else f"The {topic} letter",
                    "created_at": to_timestamp(np.round(day_start - rng.uniform(1, 4) * DAY, -1)),
                    "day_start_s": day_start,
                    "blast_s": day_start + ((BLAST_HOUR_UTC - hour_of_day) % 24) * HOUR,
                }
            )
    for topic in CATEGORIES:
        rows.append(
            {
                "campaign_id": f"cmp-cart-{topic}",
                "kind": "triggered",
                "topic": topic,
                "subject": "Still thinking about it?",
                "created_at": to_timestamp(start_s - 200 * DAY),
                "day_start_s": np.nan,
                "blast_s": np.nan,
            }
        )
    return pd.DataFrame(rows)


BASKET_SPREAD = (1.0, 2.0)
"""A discount's conversion buys the offer's product at its discount times U(1, 2) (more goes in the basket)."""
BASKET_LOGNORMAL = (3.8, 0.5)
"""A content offer's (or the control arm's) conversion is a basket of LogNormal(3.8, 0.5)."""


def conversion_values(
    rng: np.random.Generator, kinds: np.ndarray, prices: np.ndarray, discounts: np.ndarray
) -> np.ndarray:
    """What each conversion is worth, to the cent: offers of kind `kinds`, list `prices`, `discounts` as fractions."""
    basket = np.where(
        kinds == "discount",
        np.nan_to_num(prices) * (1 - discounts) * rng.uniform(*BASKET_SPREAD, len(kinds)),
        rng.lognormal(*BASKET_LOGNORMAL, len(kinds)),
    )
    return np.round(basket, 2)


def expected_conversion_values(kinds: np.ndarray, prices: np.ndarray, discounts: np.ndarray) -> np.ndarray:
    """The mean of `conversion_values` for each offer (rounding to the cent aside)."""
    mu, sigma = BASKET_LOGNORMAL
    return np.where(
        kinds == "discount",
        np.nan_to_num(prices) * (1 - discounts) * sum(BASKET_SPREAD) / 2,
        np.exp(mu + sigma**2 / 2),
    )


@dataclass(frozen=True)
class OfferMenu:
    """The offers as arrays the logged policy scores: category code (-1: none), discount, control flag, and
    the window (seconds since the epoch) in which each could be sent: from `starts_at` until it ended or
    sold out."""

    category: np.ndarray
    discount_pct: np.ndarray
    is_control: np.ndarray
    opens: np.ndarray
    closes: np.ndarray

    @classmethod
    def from_offers(cls, offers: pd.DataFrame) -> OfferMenu:
        """From the truth offer table (`world.offer_params`)."""

        def seconds(column: str, missing: float) -> np.ndarray:
            values = pd.to_datetime(offers[column], utc=True)
            out = np.full(len(offers), missing)
            known = values.notna().to_numpy()
            out[known] = utc_seconds(values[known])
            return out

        return cls(
            category=pd.Index(CATEGORIES).get_indexer(offers["category"].fillna("")),
            discount_pct=offers["discount_pct"].fillna(0.0).to_numpy(np.float64),
            is_control=(offers["kind"] == "control").to_numpy(),
            opens=seconds("starts_at", -np.inf),
            closes=np.minimum(seconds("ends_at", np.inf), seconds("sold_out_at", np.inf)),
        )


@dataclass(frozen=True)
class LoggedPolicy:
    """How the simulated sender chose the one offer in each promotional email (the logging policy).

    With probability `epsilon` uniform over the offers that could be sent at that time (control included),
    else a softmax of a heuristic score: the offer's category matches the campaign topic or one of the
    customer's declared interests, bigger discounts score higher, the control arm has a fixed score.
    """

    epsilon: float = 0.2
    temperature: float = 0.7
    topic_match: float = 1.2
    interest_match: float = 0.8
    per_discount_point: float = 0.02
    control_score: float = 0.3

    def probabilities(self, menu: OfferMenu, interests: np.ndarray, topic: np.ndarray, utc_s: np.ndarray) -> np.ndarray:
        """[n, n_offers] probability of each offer for each send; rows sum to 1, unavailable offers get 0.

        `interests` is an [n, n_categories] boolean matrix of the customers' declared interests, `topic` the
        campaign's category code (-1: none), `utc_s` the send times in seconds since the epoch.
        """
        has_category = menu.category >= 0
        score = (
            self.topic_match * ((menu.category[None, :] == topic[:, None]) & has_category[None, :])
            + self.interest_match * (interests[:, np.where(has_category, menu.category, 0)] & has_category[None, :])
            + self.per_discount_point * menu.discount_pct[None, :]
            + np.where(menu.is_control, self.control_score, 0.0)[None, :]
        )
        available = (menu.opens[None, :] <= utc_s[:, None]) & (utc_s[:, None] < menu.closes[None, :])
        weights = np.where(available, np.exp((score - score.max()) / self.temperature), 0.0)
        softmax = weights / weights.sum(axis=1, keepdims=True)
        uniform = available / available.sum(axis=1, keepdims=True)
        return self.epsilon * uniform + (1.0 - self.epsilon) * softmax
