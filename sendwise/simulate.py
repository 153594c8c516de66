"""Simulate a world in the data contract, with its ground truth (`sendwise simulate OUT_DIR`).

The world's customers, offers and true probabilities are a `sendwise.truth.World`; every open, session and
conversion here is drawn from that World's functions, so the truth in `OUT_DIR/truth/` is the truth of the
data. Time runs hour by hour: each hour's emails are sent (in time order, so fatigue counts every earlier
send), and their outcomes (opens up to 72 h later, clicks, the sessions clicks lead to, abandoned carts and
the triggered emails those cause) are drawn at once. docs/simulator.md describes the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from sendwise.simulator import families
from sendwise.simulator.truth import (
    CATEGORIES,
    DAY,
    HOUR,
    KINDS,
    Coefficients,
    World,
    sigmoid,
    to_timestamp,
    utc_seconds,
)

DEFAULT_END = pd.Timestamp("2026-11-01T00:00:00Z")
BLAST_HOUR_UTC = 14

# (zone, ISO 3166 country, share of customers)
ZONES: tuple[tuple[str, str, float], ...] = (
    ("America/New_York", "US", 0.13),
    ("America/Chicago", "US", 0.07),
    ("America/Denver", "US", 0.03),
    ("America/Los_Angeles", "US", 0.08),
    ("America/Toronto", "CA", 0.03),
    ("America/Vancouver", "CA", 0.015),
    ("America/Mexico_City", "MX", 0.025),
    ("America/Bogota", "CO", 0.015),
    ("America/Sao_Paulo", "BR", 0.03),
    ("America/Argentina/Buenos_Aires", "AR", 0.015),
    ("Europe/London", "GB", 0.08),
    ("Europe/Berlin", "DE", 0.08),
    ("Europe/Paris", "FR", 0.05),
    ("Europe/Madrid", "ES", 0.03),
    ("Europe/Rome", "IT", 0.03),
    ("Europe/Amsterdam", "NL", 0.02),
    ("Europe/Stockholm", "SE", 0.015),
    ("Europe/Warsaw", "PL", 0.02),
    ("Asia/Dubai", "AE", 0.01),
    ("Asia/Kolkata", "IN", 0.04),
    ("Asia/Singapore", "SG", 0.02),
    ("Asia/Tokyo", "JP", 0.04),
    ("Asia/Seoul", "KR", 0.015),
    ("Australia/Sydney", "AU", 0.03),
    ("Australia/Perth", "AU", 0.01),
    ("Pacific/Auckland", "NZ", 0.01),
)
MULTI_ZONE_COUNTRIES = frozenset({"US", "CA", "AU"})

# Typical peaks of daily activity (local hour, how common)
ACTIVITY_SLOTS = ((6.5, 0.10), (8.0, 0.18), (12.5, 0.15), (16.5, 0.10), (19.5, 0.30), (22.0, 0.17))

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
_MPP_UA = len(DEVICE_USER_AGENTS)
_SCANNER_UA = _MPP_UA + 1

EMAIL_EVENTS = ("sent", "delivered", "open", "click", "bounce", "unsubscribe", "complaint")
SITE_EVENTS = ("session_start", "page_view", "product_view", "add_to_cart", "purchase")
OFFER_EVENTS = ("exposed", "clicked", "converted")
EMAIL_ALIASES = {
    "sent": ("processed", "accepted", "Sent"),
    "delivered": ("Delivered", "DELIVERED"),
    "open": ("Opened", "opened", "OPEN"),
    "click": ("Clicked", "clicked"),
    "bounce": ("bounced", "Bounce", "dropped"),
    "unsubscribe": ("unsubscribed", "Unsubscribe"),
    "complaint": ("spamreport", "spam"),
}
SENT, DELIVERED, OPEN, CLICK, BOUNCE, UNSUBSCRIBE, COMPLAINT = range(7)
SESSION_START, PAGE_VIEW, PRODUCT_VIEW, ADD_TO_CART, PURCHASE = range(5)
EXPOSED, OFFER_CLICKED, CONVERTED = range(3)
PROMOTIONAL, NEWSLETTER, TRIGGERED = (KINDS.index(k) for k in ("promotional", "newsletter", "triggered"))
HUMAN, MPP, SCANNER = range(3)

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


@dataclass(frozen=True)
class Rates:
    """Rates of the mechanics that are not part of the true probabilities."""

    audience_share_mean: float = 0.7
    random_hour_share: float = 0.1
    campaigns_per_week: int = 3
    promotional_share: float = 0.65
    consent_email_false: float = 0.05
    consent_profiling_false: float = 0.05
    blank_timezone: float = 0.03
    mpp_share: float = 0.30
    mpp_flagged: float = 0.85
    business_share: float = 0.04
    scanner_share_of_business: float = 0.3
    scanner_flagged: float = 0.5
    bad_address: float = 0.008
    soft_bounce: float = 0.004
    reopen: float = 0.12
    open_delay_decay_hours: float = 10.0
    complaint: float = 0.0004
    open_conversion_coupling: float = 0.5
    offer_click_given_click: float = 0.7
    triggered_delay_minutes: tuple[float, float] = (60.0, 90.0)
    duplicate_email_rows: float = 0.005
    duplicate_other_rows: float = 0.002
    alias_share: float = 0.02


@dataclass(frozen=True)
class Realism:
    """How real inboxes depart from the classic world (docs/simulator.md, "Realistic worlds").

    The defaults are the classic world. `realistic()` gives the middle of the ranges real mail shows; every
    field can be set on its own (`sendwise simulate --realistic --mpp-share 0.6 ...`) to reach their corners.
    """

    proxy_human_opens: bool = False
    """A proxied recipient's own opens also arrive through the proxy: its user agent, flagged by the ESP as
    often as the proxy's fetches (the ESP cannot tell them apart). Classic: with the device's user agent."""
    prefetch_fast_share: float = 1.0
    """Share of the proxy's fetches made within minutes of delivery; the rest come hours later."""
    prefetch_slow_median_hours: float = 4.0
    """Median delay of the late fetches (log-normal, at most `PREFETCH_MAX_HOURS`)."""
    refetch_share: float = 0.0
    """Share of proxied emails the proxy fetches a second time, up to two days later."""
    scanner_click_share: float = 0.0
    """Share of scanned emails whose links the scanner also follows, seconds after delivery."""
    rhythms: str = "classic"
    """Daily-rhythm families: `classic`, `development` or `heldout` (sendwise/families.py)."""

    @classmethod
    def realistic(cls, **overrides: Any) -> Realism:
        """The middle of the realistic ranges, with any field overridden."""
        values: dict[str, Any] = {
            "proxy_human_opens": True,
            "prefetch_fast_share": 0.5,
            "prefetch_slow_median_hours": 4.0,
            "refetch_share": 0.15,
            "scanner_click_share": 0.15,
            "rhythms": "heldout",
        }
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        if self.rhythms not in families.CHOICES:
            raise ValueError(f"rhythms must be one of {families.CHOICES}, not {self.rhythms!r}")
        for name in ("prefetch_fast_share", "refetch_share", "scanner_click_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.prefetch_slow_median_hours <= 0:
            raise ValueError(f"prefetch_slow_median_hours must be positive, not {self.prefetch_slow_median_hours}")


REALISTIC_RATES = Rates(mpp_share=0.45, mpp_flagged=0.7, business_share=0.08, scanner_share_of_business=0.5)
"""The rates of a realistic world's middle: 45% of recipients behind Apple's proxy, the ESP flagging 70% of
the proxy's opens, security scanners on 4% of recipients."""
SCANNED_BUSINESS_SHARE = 0.08
"""Business accounts in a world whose scanner share is set: scanners sit on business mail servers."""


def simulation_options(
    *,
    realistic: bool = False,
    mpp_share: float | None = None,
    esp_flag_share: float | None = None,
    prefetch_fast_share: float | None = None,
    prefetch_median_hours: float | None = None,
    scanner_share: float | None = None,
    rhythms: str | None = None,
) -> tuple[Rates, Realism]:
    """The rates and realism of `sendwise simulate`'s options: the classic world, or with `realistic` the
    middle of the realistic ranges; any option given overrides either."""
    rates = REALISTIC_RATES if realistic else Rates()
    realism = Realism.realistic() if realistic else Realism()
    overrides: dict[str, Any] = {}
    if mpp_share is not None:
        overrides["mpp_share"] = mpp_share
    if esp_flag_share is not None:
        overrides["mpp_flagged"] = esp_flag_share
    if scanner_share is not None:
        if not 0.0 <= scanner_share <= SCANNED_BUSINESS_SHARE:
            raise ValueError(f"scanner share must be between 0 and {SCANNED_BUSINESS_SHARE}, not {scanner_share}")
        overrides["business_share"] = SCANNED_BUSINESS_SHARE
        overrides["scanner_share_of_business"] = scanner_share / SCANNED_BUSINESS_SHARE
    changes: dict[str, Any] = {}
    if prefetch_fast_share is not None:
        changes["prefetch_fast_share"] = prefetch_fast_share
    if prefetch_median_hours is not None:
        changes["prefetch_slow_median_hours"] = prefetch_median_hours
    if rhythms is not None:
        changes["rhythms"] = rhythms
    return replace(rates, **overrides), replace(realism, **changes)


PREFETCH_MAX_HOURS = 30.0
PREFETCH_FAST_MAX_SECONDS = 600.0


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


@dataclass(frozen=True)
class SimulationSummary:
    """What `simulate` wrote: counts per table (data rows, dirt included) and how long it took."""

    out_dir: Path
    start: pd.Timestamp
    end: pd.Timestamp
    seed: int
    customers: int
    campaigns: int
    emails_sent: int
    human_opens: int
    machine_opens: int
    conversions: int
    rows: dict[str, int]
    seconds: float


def simulate(
    out_dir: Path,
    customers: int = 10_000,
    days: int = 90,
    seed: int = 0,
    end: pd.Timestamp | None = None,
    progress: bool = True,
    rates: Rates | None = None,
    realism: Realism | None = None,
) -> SimulationSummary:
    """Write a synthetic world in the data contract to `out_dir` and its ground truth to `out_dir/truth/`.

    The data covers [end - days, end); `end` must be a whole UTC hour (default 2026-11-01T00:00Z), so the
    same seed always gives the same world. `rates` and `realism` default to the classic world's.
    """
    began = time.perf_counter()
    if customers < 1 or days < 1:
        raise ValueError(f"customers and days must be at least 1, got customers={customers}, days={days}")
    end = DEFAULT_END if end is None else pd.Timestamp(end)
    if end.tzinfo is None:
        raise ValueError(f"end {end} has no time zone; give a UTC hour such as 2026-11-01T00:00Z")
    end = end.tz_convert("UTC")
    if end != end.floor("h"):
        raise ValueError(f"end {end} is not a whole hour")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rates = rates or Rates()
    realism = realism or Realism()
    policy, coefficients = LoggedPolicy(), Coefficients()
    end_s = float(utc_seconds(end)[0])
    start_s = end_s - days * DAY
    # Streams 6 and 7 only draw what a realistic world adds, so a classic world stays the same draw for draw.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    n_hours = days * 24
    with tqdm(total=n_hours + 3, desc="simulating", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("customers, offers, campaigns")
        params = make_customers(customers, streams[0], start_s, rates, realism, streams[6])
        offers = make_offers(start_s, end_s, days, streams[1])
        campaigns = make_campaigns(streams[1], start_s, days, rates)
        meta = {
            "generated_by": "sendwise.simulate",
            "format_version": 1,
            "seed": seed,
            "start": to_timestamp(start_s).isoformat(),
            "days": days,
            "customers": customers,
            "blast_hour_utc": BLAST_HOUR_UTC,
            "categories": list(CATEGORIES),
            "kinds": list(KINDS),
            "zones": [{"timezone": z, "country": c, "share": s} for z, c, s in ZONES],
            "policy": asdict(policy),
            "rates": asdict(rates),
            "realism": asdict(realism),
        }
        world = World(end=end, coefficients=coefficients, customer_params=params, offer_params=offers, meta=meta)
        world.clock(start_s - 2 * DAY, end_s + 5 * DAY)
        run = _Run(world, campaigns, policy, rates, streams[2], start_s, end_s, realism, streams[7])
        run.baseline_sessions(streams[3])
        bar.update(1)
        bar.set_postfix_str("sending")
        for _ in run.hours():
            bar.update(1)
        world.set_end_state(run.sends_in_last_7_days(end_s), run.suppressed_at <= end_s)
        meta["campaigns"] = len(campaigns)
        bar.set_postfix_str("assembling")
        tables = _assemble(run, streams[4], streams[5])
        bar.update(1)
        bar.set_postfix_str("writing")
        rows = _write(out_dir, world, tables)
        bar.update(1)
    messages = tables.messages
    return SimulationSummary(
        out_dir=out_dir,
        start=to_timestamp(start_s),
        end=end,
        seed=seed,
        customers=customers,
        campaigns=int((campaigns["kind"] != "triggered").sum()),
        emails_sent=len(messages),
        human_opens=int((~tables.opens["is_machine"]).sum()),
        machine_opens=int(tables.opens["is_machine"].sum()),
        conversions=int(messages["converted_7d"].sum()),
        rows=rows,
        seconds=time.perf_counter() - began,
    )


# --- the population ----------------------------------------------------------------------------------------
def make_customers(
    n: int,
    rng: np.random.Generator,
    start_s: float,
    rates: Rates,
    realism: Realism | None = None,
    rhythm_rng: np.random.Generator | None = None,
) -> pd.DataFrame:
    """The customers' true parameters and the attributes the shop exports (one row per customer).

    A world of other rhythm families draws them from `rhythm_rng`; everything else is drawn as in the classic
    world, so the same seed gives the same people with other daily rhythms.
    """
    shares = np.array([share for _, _, share in ZONES])
    zone = rng.choice(len(ZONES), n, p=shares / shares.sum())
    timezone = np.array([z for z, _, _ in ZONES], dtype=object)[zone]
    country = np.array([c for _, c, _ in ZONES], dtype=object)[zone]
    weekday, weekend = activity_profiles(rng, n)
    family = np.full(n, "classic", dtype=object)
    if realism is not None and realism.rhythms != "classic":
        weekday, weekend, family = families.draw_population(rhythm_rng or np.random.default_rng(), realism.rhythms, n)
    dormant = rng.random(n) < 0.15
    base = rng.normal(-0.7, 0.8, n) - 2.0 * dormant
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.6), n)
    affinity = np.maximum(affinity, 1e-6)
    affinity /= affinity.sum(axis=1, keepdims=True)
    is_mpp = rng.random(n) < rates.mpp_share
    business = rng.random(n) < rates.business_share
    single_zone = ~np.isin(country, list(MULTI_ZONE_COUNTRIES))
    blank_share = min(0.5, rates.blank_timezone * n / max(single_zone.sum(), 1))
    timezone_in_data = np.where(single_zone & (rng.random(n) < blank_share), "", timezone)
    signup_s = start_s - rng.uniform(7 * DAY, 4 * 365 * DAY, n)
    return pd.DataFrame(
        {
            "customer_id": [f"c-{i:06d}" for i in range(1, n + 1)],
            "timezone": timezone,
            "country": country,
            "consent_email": rng.random(n) >= rates.consent_email_false,
            "consent_profiling": rng.random(n) >= rates.consent_profiling_false,
            "interests": declared_interests(rng, affinity),
            "signup_at": pd.to_datetime(np.round(signup_s), unit="s", utc=True),
            "updated_at": pd.to_datetime(np.round(signup_s + rng.random(n) * (start_s - signup_s)), unit="s", utc=True),
            "attr_loyalty_tier": _loyalty_tier(rng, base),
            "attr_age_band": rng.choice(
                ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"],
                n,
                p=[0.12, 0.25, 0.22, 0.18, 0.13, 0.10],
            ),
            "attr_account_type": np.where(business, "business", "personal"),
            "timezone_in_data": timezone_in_data,
            "base": base,
            "fatigue": rng.gamma(2.0, 0.05, n),
            "hour_amplitude": 0.9 * rng.lognormal(0.0, 0.25, n),
            "weekday_activity": list(weekday),
            "weekend_activity": list(weekend),
            "rhythm_family": family,
            "affinity": list(affinity),
            "price_sensitivity": rng.beta(2.0, 2.5, n),
            "conversion_base": -3.9 + 0.45 * (base + 0.7) + rng.normal(0.0, 0.35, n),
            "is_mpp": is_mpp,
            "is_scanner": business & (rng.random(n) < rates.scanner_share_of_business),
            "bad_address": rng.random(n) < rates.bad_address,
            "device_user_agent": _device_user_agents(rng, is_mpp),
            "session_rate": np.clip(0.22 * np.exp(0.5 * (base + 0.7) + rng.normal(0.0, 0.5, n)), 0.01, 3.0),
            "audience_share": rng.beta(7.0 * rates.audience_share_mean, 7.0 * (1 - rates.audience_share_mean), n),
            "sends_in_prev_7d": np.zeros(n, dtype=np.int64),
            "suppressed": np.zeros(n, dtype=bool),
        }
    )


def activity_profiles(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Weekday and weekend share of activity per local hour ([n, 24] each, rows sum to 1).

    One or two peaks (von Mises bumps on the 24 h circle) at typical times of day; on weekends the peaks
    move later and the morning peak often becomes a late-morning one.
    """
    slot_hours = np.array([h for h, _ in ACTIVITY_SLOTS])
    slot_weights = np.array([w for _, w in ACTIVITY_SLOTS])
    first = rng.choice(len(slot_hours), n, p=slot_weights / slot_weights.sum())
    second = (first + rng.integers(1, len(slot_hours), n)) % len(slot_hours)
    centers = np.stack([slot_hours[first], slot_hours[second]], axis=1) + rng.normal(0.0, 0.6, (n, 2))
    two_peaks = rng.random(n) < 0.45
    w1 = np.where(two_peaks, rng.uniform(0.55, 0.8, n), 1.0)
    weights = np.stack([w1, 1.0 - w1], axis=1)
    kappa = rng.uniform(1.5, 5.0, (n, 2))
    weekday = _von_mises_mixture(centers, weights, kappa)
    weekend_centers = centers + rng.uniform(0.5, 2.5, (n, 1))
    late_morning = (weekend_centers < 11.0) & (rng.random((n, 1)) < 0.35)
    weekend_centers = np.where(late_morning, rng.normal(10.5, 0.5, (n, 2)), weekend_centers)
    swap = (rng.random(n) < 0.3) & two_peaks
    weekend_weights = np.where(swap[:, None], weights[:, ::-1], weights)
    weekend = _von_mises_mixture(weekend_centers, weekend_weights, 0.8 * kappa)
    return weekday, weekend


def _von_mises_mixture(centers: np.ndarray, weights: np.ndarray, kappa: np.ndarray, floor: float = 0.06) -> np.ndarray:
    hours = np.arange(24) + 0.5
    angle = 2 * np.pi * (hours[None, None, :] - centers[:, :, None]) / 24.0
    bumps = np.exp(kappa[:, :, None] * (np.cos(angle) - 1.0))
    bumps /= bumps.sum(axis=2, keepdims=True)
    mixture = (1.0 - floor) * (weights[:, :, None] * bumps).sum(axis=1) + floor / 24.0
    return mixture / mixture.sum(axis=1, keepdims=True)


def declared_interests(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    """'|'-joined top categories for about a third of the customers, '' for the others."""
    n = len(affinity)
    top = np.argsort(-affinity, axis=1)[:, :2]
    declares = rng.random(n) < 0.35
    two = rng.random(n) < 0.4
    noisy = rng.random(n) < 0.1
    first = np.where(noisy, rng.integers(0, len(CATEGORIES), n), top[:, 0])
    names = np.array(CATEGORIES, dtype=object)
    out = np.where(declares, names[first], "")
    with_second = declares & two & (first != top[:, 1])
    out[with_second] = out[with_second] + "|" + names[top[with_second, 1]]
    return out


def interest_matrix(interests: pd.Series) -> np.ndarray:
    """[n, n_categories] boolean: the customer declared an interest in the category."""
    values = interests.fillna("").astype(str).to_numpy()
    return np.stack([np.char.find(("|" + values + "|").astype(str), f"|{c}|") >= 0 for c in CATEGORIES], axis=1)


def _loyalty_tier(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    score = base + rng.normal(0.0, 0.7, len(base))
    cuts = np.quantile(score, [0.5, 0.8, 0.95]) if len(base) else np.zeros(3)
    return np.array(["bronze", "silver", "gold", "platinum"], dtype=object)[np.searchsorted(cuts, score)]


def _device_user_agents(rng: np.random.Generator, is_mpp: np.ndarray) -> np.ndarray:
    n = len(is_mpp)
    apple = rng.choice(2, n, p=[0.7, 0.3])
    other = rng.choice(len(DEVICE_USER_AGENTS), n, p=[0.12, 0.05, 0.25, 0.15, 0.18, 0.25])
    return np.where(is_mpp, apple, other)


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


# --- the run: hour by hour -------------------------------------------------------------------------------
class _Rows:
    """Columns collected in parts and concatenated once."""

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []

    def add(self, **columns: Any) -> None:
        sizes = [np.size(v) for v in columns.values() if np.ndim(v) > 0]
        n = sizes[0] if sizes else 1
        self._parts.append({k: np.full(n, v) if np.ndim(v) == 0 else np.asarray(v) for k, v in columns.items()})

    def columns(self, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        if not self._parts:
            floats = {"t", "value", "propensity", "p_open", "p_conv"}
            return {name: np.empty(0, dtype=np.float64 if name in floats else np.int64) for name in names}
        return {name: np.concatenate([part[name] for part in self._parts]) for name in names}


EMAIL_COLUMNS = ("c", "msg", "camp", "ev", "t", "flag", "bounce", "ua", "source")
SITE_COLUMNS = ("c", "ev", "t", "cat", "product", "value")
OFFER_COLUMNS = ("c", "o", "msg", "ev", "t", "value", "propensity")
MESSAGE_COLUMNS: tuple[str, ...] = ("msg", "c", "camp", "t", "sends7", "p_open", "human", "delivered")
MESSAGE_COLUMNS += ("o", "propensity", "p_conv", "converted")
_RING = 32
_PRODUCTS_PER_CATEGORY = 40


@dataclass
class _Views:
    """Product views of a batch of sessions (one entry per view)."""

    session: np.ndarray
    rank: np.ndarray
    category: np.ndarray
    product: np.ndarray
    affinity: np.ndarray


@dataclass
class _SessionRows:
    """Site event rows of a batch of sessions, in time order within each session."""

    session: np.ndarray
    event: np.ndarray
    category: np.ndarray
    product: np.ndarray
    value: np.ndarray


def _session_rows(
    views: _Views, carted: np.ndarray, purchased: np.ndarray, n: int, n_pages: np.ndarray
) -> _SessionRows:
    """session_start, page views, product views (each carted one followed by add_to_cart), purchase."""
    page_session = np.repeat(np.arange(n), n_pages)
    page_rank = np.arange(len(page_session)) - np.repeat(np.cumsum(n_pages) - n_pages, n_pages)
    cart = np.flatnonzero(carted)
    buyers = np.flatnonzero(purchased)
    view_order = n_pages[views.session] + 1 + 2 * views.rank
    parts: tuple[tuple[Any, ...], ...] = (  # (session, order within the session, event, category, product)
        (np.arange(n), np.zeros(n), SESSION_START, -1, -1),
        (page_session, 1 + page_rank, PAGE_VIEW, -1, -1),
        (views.session, view_order, PRODUCT_VIEW, views.category, views.product),
        (views.session[cart], view_order[cart] + 1, ADD_TO_CART, views.category[cart], views.product[cart]),
        (buyers, np.full(len(buyers), np.inf), PURCHASE, -1, -1),
    )
    session = np.concatenate([p[0] for p in parts])
    order = np.lexsort((np.concatenate([p[1] for p in parts]), session))
    sizes = [len(p[0]) for p in parts]

    def column(i: int) -> np.ndarray:
        pieces = [np.broadcast_to(np.asarray(p[i]), (size,)) for p, size in zip(parts, sizes, strict=True)]
        return np.concatenate(pieces)[order]

    return _SessionRows(
        session=session[order],
        event=column(2).astype(np.int64),
        category=column(3).astype(np.int64),
        product=column(4).astype(np.int64),
        value=np.full(len(order), np.nan),
    )


class _Run:
    """The state of a simulation while it runs, and the rows it has produced."""

    def __init__(
        self,
        world: World,
        campaigns: pd.DataFrame,
        policy: LoggedPolicy,
        rates: Rates,
        rng: np.random.Generator,
        start_s: float,
        end_s: float,
        realism: Realism | None = None,
        realism_rng: np.random.Generator | None = None,
    ) -> None:
        self.world, self.campaigns, self.policy, self.rates, self.rng = world, campaigns, policy, rates, rng
        self.start_s, self.end_s = start_s, end_s
        self.realism = realism or Realism()
        self.realism_rng = realism_rng or np.random.default_rng()
        params = world.customer_params
        self.n = len(params)
        self.consent = params["consent_email"].to_numpy(bool)
        self.is_mpp = params["is_mpp"].to_numpy(bool)
        self.is_scanner = params["is_scanner"].to_numpy(bool)
        self.bad_address = params["bad_address"].to_numpy(bool)
        self.device_ua = params["device_user_agent"].to_numpy(np.int64)
        self.session_rate = params["session_rate"].to_numpy(np.float64)
        self.audience_share = params["audience_share"].to_numpy(np.float64)
        self.base = params["base"].to_numpy(np.float64)
        self.affinity_cum = np.cumsum(np.stack(params["affinity"].to_numpy()), axis=1)
        self.interests = interest_matrix(params["interests"])
        self.camp_kind = pd.Index(KINDS).get_indexer(campaigns["kind"])
        self.camp_topic = pd.Index(CATEGORIES).get_indexer(campaigns["topic"].fillna(""))
        self.cart_campaign = np.array(
            [campaigns.index[campaigns["campaign_id"] == f"cmp-cart-{c}"][0] for c in CATEGORIES]
        )
        self.offer_category = pd.Index(CATEGORIES).get_indexer(world.offer_params["category"].fillna(""))
        self.offer_price = world.offer_params["price"].to_numpy(np.float64)
        self.offer_discount = world.offer_params["discount_pct"].fillna(0.0).to_numpy(np.float64) / 100
        self.offer_kind = world.offer_params["kind"].to_numpy()
        self.menu = OfferMenu.from_offers(world.offer_params)
        catalog_rng = np.random.default_rng(1234)
        self.product_price = np.round(catalog_rng.lognormal(3.6, 0.6, len(CATEGORIES) * _PRODUCTS_PER_CATEGORY), 2)
        self.suppressed_at = np.full(self.n, np.inf)
        self.last_triggered = np.full(self.n, -np.inf)
        self.ring = np.full((self.n, _RING), -np.inf)
        self.ring_pos = np.zeros(self.n, dtype=np.int64)
        self.next_message = 1
        self.email, self.site, self.offer, self.messages = _Rows(), _Rows(), _Rows(), _Rows()
        self.schedule: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # --- sessions on the site
    def baseline_sessions(self, rng: np.random.Generator) -> None:
        """Sessions as a Poisson process whose hourly rate follows each customer's activity profile."""
        customers = np.arange(self.n)
        starts, owners = [], []
        days = round((self.end_s - self.start_s) / DAY)
        for day in range(days):
            hour_starts = self.start_s + day * DAY + HOUR * np.arange(24)
            activity = self.world.activity_at(customers[:, None], hour_starts[None, :] + HOUR / 2)
            counts = rng.poisson(self.session_rate[:, None] * activity)
            who, hour = np.nonzero(counts)
            repeats = counts[who, hour]
            owners.append(np.repeat(who, repeats))
            starts.append(np.repeat(hour_starts[hour], repeats) + rng.random(repeats.sum()) * HOUR)
        c = np.concatenate(owners) if owners else np.empty(0, np.int64)
        t = np.concatenate(starts) if starts else np.empty(0)
        cart_c, cart_t, cart_cat = self.sessions(c, t, np.full(len(c), -1))
        sched_c, sched_t, sched_camp = [cart_c], [cart_t], [self.cart_campaign[cart_cat]]
        for campaign in self.campaigns.itertuples():
            if campaign.kind == "triggered":
                continue
            c_, t_ = self._recipients(campaign.day_start_s, campaign.blast_s)
            sched_c.append(c_)
            sched_t.append(t_)
            sched_camp.append(np.full(len(c_), campaign.Index))
        all_t = np.concatenate(sched_t)
        order = np.argsort(all_t, kind="stable")
        self.schedule = (np.concatenate(sched_c)[order], all_t[order], np.concatenate(sched_camp)[order])

    def _recipients(self, day_start_s: float, blast_s: float) -> tuple[np.ndarray, np.ndarray]:
        """About 70% of consenting customers; most at the blast hour, some at a random hour of the day."""
        rng = self.rng
        audience = np.flatnonzero(self.consent & (rng.random(self.n) < self.audience_share))
        random_hour = rng.random(len(audience)) < self.rates.random_hour_share
        t = np.where(
            random_hour,
            day_start_s + HOUR * rng.integers(0, 24, len(audience)) + rng.uniform(0, 600, len(audience)),
            blast_s + rng.uniform(0, 1200, len(audience)),
        )
        return audience, t

    def sessions(self, c: np.ndarray, t: np.ndarray, topic: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Site events of sessions starting at `t` (a topic leads the first product view: a click's session).

        A session has page views, product views (category by affinity), some products put in the cart, and
        sometimes a purchase of the cart. Returns the abandoned carts of consenting customers as
        (customer, when the triggered email is due, category).
        """
        if not len(c):
            return np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)
        views = self._product_views(c, topic)
        n = len(c)
        carted = self.rng.random(len(views.session)) < 0.08 + 0.4 * views.affinity
        has_cart = np.bincount(views.session[carted], minlength=n) > 0
        purchased = has_cart & (self.rng.random(n) < 0.35)
        rows = _session_rows(views, carted, purchased, n, self.rng.poisson(1.5, n) + 1)
        cart_value = np.bincount(views.session[carted], weights=self.product_price[views.product[carted]], minlength=n)
        first_cart = np.full(n, -1)
        first_cart[views.session[carted][::-1]] = np.flatnonzero(carted)[::-1]
        bought = rows.event == PURCHASE
        rows.category[bought] = views.category[first_cart[rows.session[bought]]]
        rows.product[bought] = views.product[first_cart[rows.session[bought]]]
        rows.value[bought] = cart_value[rows.session[bought]]
        gaps = self.rng.exponential(40.0, len(rows.session)) + 1.0
        first_row = np.r_[True, rows.session[1:] != rows.session[:-1]]
        gaps[first_row] = 0.0
        elapsed = np.cumsum(gaps)
        elapsed -= np.maximum.accumulate(np.where(first_row, elapsed, 0.0))
        at = t[rows.session] + elapsed
        self.site.add(c=c[rows.session], ev=rows.event, t=at, cat=rows.category, product=rows.product, value=rows.value)

        is_cart = np.flatnonzero(rows.event == ADD_TO_CART)
        cart_sessions = rows.session[is_cart]
        last_cart = is_cart[np.append(cart_sessions[1:] != cart_sessions[:-1], True)[: len(is_cart)]]
        session = rows.session[last_cart]
        abandoned = last_cart[~purchased[session] & self.consent[c[session]]]
        low, high = self.rates.triggered_delay_minutes
        due = at[abandoned] + 60.0 * self.rng.uniform(low, high, len(abandoned))
        return c[rows.session[abandoned]], due, rows.category[abandoned]

    def _product_views(self, c: np.ndarray, topic: np.ndarray) -> _Views:
        """Product views per session, each in a category drawn from the customer's affinities (a session
        that follows a click on a campaign starts with a product of the campaign's topic)."""
        rng = self.rng
        n_views = rng.poisson(1.2, len(c)) + (topic >= 0)
        session = np.repeat(np.arange(len(c)), n_views)
        rank = np.arange(len(session)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
        u = rng.random(len(session))
        category = (u[:, None] > self.affinity_cum[c[session]]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        category = np.where((rank == 0) & (topic[session] >= 0), topic[session], category)
        product = category * _PRODUCTS_PER_CATEGORY + rng.integers(0, _PRODUCTS_PER_CATEGORY, len(session))
        cumulative = self.affinity_cum[c[session]]
        affinity = np.diff(cumulative, axis=1, prepend=0.0)[np.arange(len(session)), category]
        return _Views(session=session, rank=rank, category=category, product=product, affinity=affinity)

    # --- sending
    def hours(self) -> Iterator[int]:
        """Send hour by hour; yields after each hour (for the progress bar)."""
        assert self.schedule is not None, "call baseline_sessions first"
        sched_c, sched_t, sched_camp = self.schedule
        i = 0
        n_hours = round((self.end_s - self.start_s) / HOUR)
        for h in range(n_hours):
            hour_end = self.start_s + (h + 1) * HOUR
            j = int(np.searchsorted(sched_t, hour_end, side="left"))
            c, t, camp = sched_c[i:j], sched_t[i:j], sched_camp[i:j]
            i = j
            if self.pending:
                p_c, p_t, p_camp = (np.concatenate(x) for x in zip(*self.pending, strict=True))
                now = p_t < hour_end
                c, t, camp = np.r_[c, p_c[now]], np.r_[t, p_t[now]], np.r_[camp, p_camp[now]]
                self.pending = [(p_c[~now], p_t[~now], p_camp[~now])] if (~now).any() else []
            if len(c):
                self._send_hour(c, t, camp)
            yield h

    def _send_hour(self, c: np.ndarray, t: np.ndarray, camp: np.ndarray) -> None:
        order = np.argsort(t, kind="stable")
        c, t, camp = c[order], t[order], camp[order]
        triggered = self.camp_kind[camp] == TRIGGERED
        keep = self.suppressed_at[c] > t
        keep &= ~triggered | (self.last_triggered[c] <= t - DAY)
        candidates = np.flatnonzero(keep & triggered)
        _, first = np.unique(c[candidates], return_index=True)
        keep[np.setdiff1d(candidates, candidates[first])] = False
        c, t, camp = c[keep], t[keep], camp[keep]
        sent_triggered = self.camp_kind[camp] == TRIGGERED
        self.last_triggered[c[sent_triggered]] = t[sent_triggered]
        if len(c):
            self._send(c, t, camp)

    def _count_and_record_sends(self, c: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Sends to the same customer in the 7 days before each send (earlier ones in this batch included)."""
        n = len(c)
        order = np.lexsort((t, c))
        sorted_c = c[order]
        new_group = np.r_[True, sorted_c[1:] != sorted_c[:-1]]
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
        earlier = np.empty(n, dtype=np.int64)
        earlier[order] = np.arange(n) - group_start
        recent = (self.ring[c] > (t - 7 * DAY)[:, None]).sum(axis=1)
        for rank in range(int(earlier.max()) + 1 if n else 0):
            sel = earlier == rank
            who = c[sel]
            self.ring[who, self.ring_pos[who] % _RING] = t[sel]
            self.ring_pos[who] += 1
        return recent + earlier

    def sends_in_last_7_days(self, at_s: float) -> np.ndarray:
        return ((self.ring > at_s - 7 * DAY) & (self.ring < at_s)).sum(axis=1)

    def _log(
        self,
        sent: tuple[np.ndarray, np.ndarray, np.ndarray],
        event: int,
        rows: np.ndarray,
        at: np.ndarray,
        *,
        flag: Any = -1,
        bounce: Any = -1,
        ua: Any = -1,
        source: Any = -1,
    ) -> None:
        """Email events for the `rows` of a batch of sends (customer, message, campaign)."""
        c, msg, camp = sent
        self.email.add(
            c=c[rows],
            msg=msg[rows],
            camp=camp[rows],
            ev=event,
            t=at,
            flag=flag,
            bounce=bounce,
            ua=ua,
            source=source,
        )

    def _send(self, c: np.ndarray, t: np.ndarray, camp: np.ndarray) -> None:
        rng, rates, n = self.rng, self.rates, len(c)
        kind, topic = self.camp_kind[camp], self.camp_topic[camp]
        msg = np.arange(self.next_message, self.next_message + n)
        self.next_message += n
        sent = (c, msg, camp)
        sends7 = self._count_and_record_sends(c, t)
        self._log(sent, SENT, np.arange(n), t)

        hard = self.bad_address[c]
        bounced = hard | (rng.random(n) < rates.soft_bounce)
        bounce_t = t + rng.uniform(2.0, 120.0, n)
        b = np.flatnonzero(bounced)
        self._log(sent, BOUNCE, b, bounce_t[b], bounce=np.where(hard[b], 0, 1))
        self._suppress(c[hard], bounce_t[hard])
        delivered = ~bounced
        delivered_t = t + rng.uniform(1.0, 30.0, n)
        d = np.flatnonzero(delivered)
        self._log(sent, DELIVERED, d, delivered_t[d])
        self._machine_opens(sent, delivered, delivered_t)

        p_open = self.world.open_probability_at(c, t, kind, topic, sends7.astype(np.float64))
        u_open = rng.random(n)
        human = delivered & (u_open < p_open)
        h = np.flatnonzero(human)
        open_t = np.full(n, np.nan)
        open_t[h] = np.maximum(self._human_open_times(c[h], t[h]), delivered_t[h] + 5.0)
        self._log(sent, OPEN, h, open_t[h], **self._human_open_agent(c[h]), source=HUMAN)
        again = h[rng.random(len(h)) < rates.reopen]
        reopen_t = open_t[again] + rng.exponential(4 * HOUR, len(again))
        self._log(sent, OPEN, again, reopen_t, **self._human_open_agent(c[again]), source=HUMAN)

        p_click = sigmoid(-1.6 + 0.5 * self.world.affinity_effect(c[h], topic[h]) + 0.3 * (self.base[c[h]] + 0.7))
        clicked = np.zeros(n, dtype=bool)
        clicked[h] = rng.random(len(h)) < p_click
        k = np.flatnonzero(clicked)
        click_t = np.full(n, np.nan)
        click_t[k] = open_t[k] + 2.0 + rng.exponential(45.0, len(k))
        self._log(sent, CLICK, k, click_t[k], ua=self.device_ua[c[k]])
        cart_c, cart_t, cart_cat = self.sessions(c[k], click_t[k] + rng.uniform(3.0, 40.0, len(k)), topic[k])
        if len(cart_c):
            self.pending.append((cart_c, cart_t, self.cart_campaign[cart_cat]))

        unsubscribes = h[rng.random(len(h)) < 0.006 + 0.004 * sends7[h]]
        unsubscribe_t = open_t[unsubscribes] + 5.0 + rng.exponential(30.0, len(unsubscribes))
        self._log(sent, UNSUBSCRIBE, unsubscribes, unsubscribe_t)
        complaints = d[rng.random(len(d)) < rates.complaint]
        complaint_t = delivered_t[complaints] + rng.exponential(3 * HOUR, len(complaints))
        self._log(sent, COMPLAINT, complaints, complaint_t)
        self._suppress(c[unsubscribes], unsubscribe_t)
        self._suppress(c[complaints], complaint_t)

        offer, propensity, p_conv, converted = self._offers(c, t, kind, topic, u_open, open_t, click_t, msg)
        self.messages.add(
            msg=msg,
            c=c,
            camp=camp,
            t=t,
            sends7=sends7,
            p_open=p_open,
            human=human,
            delivered=delivered,
            o=offer,
            propensity=propensity,
            p_conv=p_conv,
            converted=converted,
        )

    def _human_open_agent(self, c: np.ndarray) -> dict[str, Any]:
        """The user agent and the ESP's flag of human opens: the device's, unflagged; for a proxied recipient
        of a realistic world, the proxy's, flagged as often as the proxy's own fetches."""
        if not self.realism.proxy_human_opens:
            return {"flag": 0, "ua": self.device_ua[c]}
        proxied = self.is_mpp[c]
        flags = _machine_flags(self.realism_rng, len(c), self.rates.mpp_flagged)
        return {"flag": np.where(proxied, flags, 0), "ua": np.where(proxied, _MPP_UA, self.device_ua[c])}

    def _prefetch_delays(self, delay: np.ndarray) -> np.ndarray:
        """Seconds from delivery to the proxy's fetch: the classic world's `delay`, or in a realistic world a
        share within minutes (log-uniform from a second) and the rest hours later (log-normal)."""
        realism, rng = self.realism, self.realism_rng
        if realism.prefetch_fast_share >= 1.0:
            return delay
        n = len(delay)
        fast = rng.random(n) < realism.prefetch_fast_share
        soon = np.exp(rng.uniform(0.0, np.log(PREFETCH_FAST_MAX_SECONDS), n))
        late = np.minimum(
            rng.lognormal(np.log(realism.prefetch_slow_median_hours * HOUR), 0.8, n), PREFETCH_MAX_HOURS * HOUR
        )
        return np.where(fast, soon, late)

    def _machine_opens(
        self, sent: tuple[np.ndarray, np.ndarray, np.ndarray], delivered: np.ndarray, delivered_t: np.ndarray
    ) -> None:
        """Every delivered email to an MPP customer is fetched by the proxy; scanners fetch within seconds (and
        in a realistic world follow some links too)."""
        rng, rates, c = self.rng, self.rates, sent[0]
        m = np.flatnonzero(delivered & self.is_mpp[c])
        delay = self._prefetch_delays(2.0 + np.minimum(rng.exponential(60.0, len(m)), 400.0))
        flag = _machine_flags(rng, len(m), rates.mpp_flagged)
        fetched_t = delivered_t[m] + delay
        self._log(sent, OPEN, m, fetched_t, flag=flag, ua=_MPP_UA, source=MPP)
        if self.realism.refetch_share > 0:
            again = self.realism_rng.random(len(m)) < self.realism.refetch_share
            refetch_t = fetched_t[again] + self.realism_rng.uniform(HOUR, 2 * DAY, int(again.sum()))
            flag = _machine_flags(self.realism_rng, int(again.sum()), rates.mpp_flagged)
            self._log(sent, OPEN, m[again], refetch_t, flag=flag, ua=_MPP_UA, source=MPP)
        s = np.flatnonzero(delivered & self.is_scanner[c])
        agent = _SCANNER_UA + rng.integers(0, len(SCANNER_USER_AGENTS), len(s))
        flag = _machine_flags(rng, len(s), rates.scanner_flagged)
        scanned_t = delivered_t[s] + rng.uniform(0.5, 15.0, len(s))
        self._log(sent, OPEN, s, scanned_t, flag=flag, ua=agent, source=SCANNER)
        if self.realism.scanner_click_share > 0:
            follows = self.realism_rng.random(len(s)) < self.realism.scanner_click_share
            click_t = scanned_t[follows] + self.realism_rng.uniform(0.5, 10.0, int(follows.sum()))
            self._log(sent, CLICK, s[follows], click_t, ua=agent[follows], source=SCANNER)

    def _human_open_times(self, c: np.ndarray, t: np.ndarray) -> np.ndarray:
        """When a person who opens does: an hour of the next 72 drawn by their activity, sooner likelier."""
        if not len(c):
            return np.empty(0)
        hours = np.arange(self.world.coefficients.open_window_hours)
        first_hour = np.floor(t / HOUR) * HOUR
        bin_start = first_hour[:, None] + HOUR * hours[None, :]
        weight = self.world.activity_at(c[:, None], bin_start + HOUR / 2)
        weight = weight * np.exp(-hours / self.rates.open_delay_decay_hours)[None, :]
        weight[:, 0] *= 1.0 - (t - first_hour) / HOUR
        cumulative = np.cumsum(weight, axis=1)
        u = self.rng.random(len(c)) * cumulative[:, -1]
        chosen = (cumulative < u[:, None]).sum(axis=1).clip(0, len(hours) - 1)
        lo = np.where(chosen == 0, t, bin_start[np.arange(len(c)), chosen])
        hi = bin_start[np.arange(len(c)), chosen] + HOUR
        return lo + self.rng.random(len(c)) * (hi - lo)

    def _suppress(self, c: np.ndarray, at: np.ndarray) -> None:
        np.minimum.at(self.suppressed_at, c, at)

    def _offers(
        self,
        c: np.ndarray,
        t: np.ndarray,
        kind: np.ndarray,
        topic: np.ndarray,
        u_open: np.ndarray,
        open_t: np.ndarray,
        click_t: np.ndarray,
        msg: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One offer per promotional email, chosen by the logged policy; conversions by the true probability.

        A conversion shares its uniform draw with the open (with probability `open_conversion_coupling`), so
        openers convert more often while both probabilities stay exactly the truth's.
        """
        rng, rates, n = self.rng, self.rates, len(c)
        offer, propensity = np.full(n, -1), np.full(n, np.nan)
        p_conv, converted = np.full(n, np.nan), np.zeros(n, dtype=bool)
        p = np.flatnonzero(kind == PROMOTIONAL)
        if not len(p):
            return offer, propensity, p_conv, converted
        probabilities = self.policy.probabilities(self.menu, self.interests[c[p]], topic[p], t[p])
        cumulative = np.cumsum(probabilities, axis=1)
        chosen = (cumulative < rng.random(len(p))[:, None] * cumulative[:, -1:]).sum(axis=1)
        chosen = chosen.clip(0, probabilities.shape[1] - 1)
        offer[p], propensity[p] = chosen, probabilities[np.arange(len(p)), chosen]
        p_conv[p] = self.world.conversion_probability_at(c[p], chosen)
        shared = rng.random(len(p)) < rates.open_conversion_coupling
        u_conv = np.where(shared, u_open[p], rng.random(len(p)))
        converted[p] = u_conv < p_conv[p]
        self.offer.add(c=c[p], o=chosen, msg=msg[p], ev=EXPOSED, t=t[p], value=np.nan, propensity=propensity[p])

        k = p[~np.isnan(click_t[p]) & (self.offer_kind[offer[p]] != "control")]
        k = k[rng.random(len(k)) < rates.offer_click_given_click]
        self.offer.add(c=c[k], o=offer[k], msg=msg[k], ev=OFFER_CLICKED, t=click_t[k], value=np.nan, propensity=np.nan)

        v = np.flatnonzero(converted)
        opened = ~np.isnan(open_t[v])
        delay = np.where(
            opened, open_t[v] - t[v] + rng.exponential(3 * HOUR, len(v)), rng.exponential(1.5 * DAY, len(v))
        )
        window = self.world.coefficients.conversion_window_days * DAY
        conv_t = t[v] + np.minimum(delay, window - 60.0)
        o = offer[v]
        basket = np.where(
            self.offer_kind[o] == "discount",
            np.nan_to_num(self.offer_price[o]) * (1 - self.offer_discount[o]) * rng.uniform(1.0, 2.0, len(v)),
            rng.lognormal(3.8, 0.5, len(v)),
        )
        value = np.round(basket, 2)
        self.offer.add(c=c[v], o=o, msg=msg[v], ev=CONVERTED, t=conv_t, value=value, propensity=np.nan)
        u = rng.random(len(v))
        sampled = (u[:, None] > self.affinity_cum[c[v]]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        category = np.where(self.offer_category[o] >= 0, self.offer_category[o], sampled)
        visit_t = conv_t - rng.uniform(60.0, 600.0, len(v))
        self.site.add(c=c[v], ev=SESSION_START, t=visit_t, cat=-1, product=-1, value=np.nan)
        self.site.add(c=c[v], ev=PURCHASE, t=conv_t, cat=category, product=-1, value=value)
        return offer, propensity, p_conv, converted


def _machine_flags(rng: np.random.Generator, n: int, flagged: float) -> np.ndarray:
    """The ESP's machine_open flag: true for a `flagged` share, else false or missing (1, 0, -1)."""
    u = rng.random(n)
    return np.where(u < flagged, 1, np.where(u < flagged + (1 - flagged) / 2, 0, -1))


# --- from rows to tables ---------------------------------------------------------------------------------
@dataclass
class _Tables:
    customers_csv: pd.DataFrame
    campaigns_csv: pd.DataFrame
    offers_csv: pd.DataFrame
    email_events: pa.Table
    site_events: pa.Table
    offer_events: pa.Table
    opens: pd.DataFrame
    clicks: pd.DataFrame
    messages: pd.DataFrame


def _assemble(run: _Run, rng: np.random.Generator, dirt_rng: np.random.Generator) -> _Tables:
    world, end_s = run.world, run.end_s
    params = world.customer_params
    customer_ids = params["customer_id"].to_numpy(dtype=object)
    campaign_ids = run.campaigns["campaign_id"].to_numpy(dtype=object)
    offer_ids = world.offer_params["offer_id"].to_numpy(dtype=object)

    email = run.email.columns(EMAIL_COLUMNS)
    keep = email["t"] < end_s
    email = {k: v[keep] for k, v in email.items()}
    order = np.lexsort((email["ev"], email["msg"], email["t"]))
    email = {k: v[order] for k, v in email.items()}
    email["event_id"] = np.arange(1, len(order) + 1)
    opens = _events_truth(email, customer_ids, OPEN)
    clicks = _events_truth(email, customer_ids, CLICK)
    email_table = _email_table(email, customer_ids, campaign_ids, run.campaigns, dirt_rng, run.rates)

    site = run.site.columns(SITE_COLUMNS)
    keep = site["t"] < end_s
    site = {k: v[keep] for k, v in site.items()}
    order = np.argsort(site["t"], kind="stable")
    site = {k: v[order] for k, v in site.items()}
    site_table = _site_table(site, customer_ids, dirt_rng, run.rates)

    offer = run.offer.columns(OFFER_COLUMNS)
    keep = offer["t"] < end_s
    offer = {k: v[keep] for k, v in offer.items()}
    order = np.lexsort((offer["ev"], offer["t"]))
    offer = {k: v[order] for k, v in offer.items()}
    offer_table = _offer_table(offer, customer_ids, offer_ids, dirt_rng, run.rates)

    return _Tables(
        customers_csv=_customers_csv(params, dirt_rng),
        campaigns_csv=_campaigns_csv(run.campaigns),
        offers_csv=_offers_csv(world.offer_params),
        email_events=email_table,
        site_events=site_table,
        offer_events=offer_table,
        opens=opens,
        clicks=clicks,
        messages=_messages_truth(run, customer_ids, campaign_ids, offer_ids),
    )


def format_ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """`prefix` + numbers zero-padded to `width` digits, as a string array."""
    digits = pc.utf8_lpad(pa.array(np.asarray(numbers, dtype=np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _strings(values: np.ndarray, codes: np.ndarray) -> pa.Array:
    """values[codes] as a string array, null where the code is negative."""
    codes = np.asarray(codes, dtype=np.int64)
    return pa.array(list(values), type=pa.string()).take(pa.array(codes, mask=codes < 0))


def _timestamps(seconds: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    micros = np.round(np.nan_to_num(seconds) * 1e6).astype(np.int64)
    return pa.array(micros, type=pa.timestamp("us", tz="UTC"), mask=null)


def _duplicated_order(n: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Row order with a `share` of rows delivered twice (each copy right after its original)."""
    copies = rng.choice(n, round(share * n), replace=False) if n else np.empty(0, np.int64)
    return np.sort(np.concatenate([np.arange(n), copies]), kind="stable")


def _email_table(
    email: dict[str, np.ndarray],
    customer_ids: np.ndarray,
    campaign_ids: np.ndarray,
    campaigns: pd.DataFrame,
    rng: np.random.Generator,
    rates: Rates,
) -> pa.Table:
    n = len(email["t"])
    names = list(EMAIL_EVENTS)
    name_code = email["ev"].astype(np.int64).copy()
    aliased = np.flatnonzero(rng.random(n) < rates.alias_share)
    for event, aliases in EMAIL_ALIASES.items():
        rows = aliased[name_code[aliased] == EMAIL_EVENTS.index(event)]
        codes = len(names) + rng.integers(0, len(aliases), len(rows))
        names.extend(aliases)
        name_code[rows] = codes
    landing = "https://shop.example.com/" + campaigns["topic"].fillna("home")
    urls = (landing + "?utm_campaign=" + campaigns["campaign_id"]).to_numpy()
    flag = email["flag"]
    columns = {
        "event_id": format_ids("ee-", email["event_id"], 9),
        "customer_id": _strings(customer_ids, email["c"]),
        "message_id": format_ids("m-", email["msg"], 8),
        "campaign_id": _strings(campaign_ids, email["camp"]),
        "event": _strings(np.array(names, dtype=object), name_code),
        "occurred_at": _timestamps(email["t"]),
        "machine_open": pa.array(flag == 1, mask=flag < 0),
        "bounce_type": _strings(np.array(["hard", "soft"], dtype=object), email["bounce"]),
        "user_agent": _strings(np.array(USER_AGENTS, dtype=object), email["ua"]),
        "url": _strings(urls, np.where(email["ev"] == CLICK, email["camp"], -1)),
        "decision_id": pa.nulls(n, pa.string()),
    }
    table = pa.table(columns)
    table = table.take(pa.array(_duplicated_order(n, rates.duplicate_email_rows, rng)))
    junk = _junk_rows(table, rng, {"event": ["deferred", "opne", "link_clicked", "block"]}, prefix="ee-bad-", count=24)
    unknown = _unknown_customer_rows(table, rng, len(customer_ids), 12, "ee-unk-", ("sent", "delivered"))
    return _interleave(table, [junk, unknown], rng)


def _site_table(
    site: dict[str, np.ndarray], customer_ids: np.ndarray, rng: np.random.Generator, rates: Rates
) -> pa.Table:
    n = len(site["t"])
    names = [*SITE_EVENTS, "Session_Start", "PAGE_VIEW", "Purchase"]
    name_code = site["ev"].astype(np.int64).copy()
    for alias, event in ((5, SESSION_START), (6, PAGE_VIEW), (7, PURCHASE)):
        rows = np.flatnonzero((name_code == event) & (rng.random(n) < rates.alias_share / 2))
        name_code[rows] = alias
    product_ids = np.array(
        [f"p-{c}-{j:03d}" for c in CATEGORIES for j in range(1, _PRODUCTS_PER_CATEGORY + 1)], dtype=object
    )
    event_ids = format_ids("se-", np.arange(1, n + 1), 9)
    no_id = pa.array(rng.random(n) < 0.01)
    value = site["value"]
    table = pa.table(
        {
            "event_id": pc.if_else(no_id, pa.scalar(None, pa.string()), event_ids),
            "customer_id": _strings(customer_ids, site["c"]),
            "event": _strings(np.array(names, dtype=object), name_code),
            "occurred_at": _timestamps(site["t"]),
            "category": _strings(np.array(CATEGORIES, dtype=object), site["cat"]),
            "product_id": _strings(product_ids, site["product"]),
            "value": pa.array(value, mask=np.isnan(value)),
        }
    )
    table = table.take(pa.array(_duplicated_order(n, rates.duplicate_other_rows, rng)))
    junk = _junk_rows(table, rng, {"event": ["add_to_wishlist", "search"]}, prefix="se-bad-", count=12)
    unknown = _unknown_customer_rows(table, rng, len(customer_ids), 20, "se-unk-", ("session_start", "page_view"))
    return _interleave(table, [junk, unknown], rng)


def _offer_table(
    offer: dict[str, np.ndarray],
    customer_ids: np.ndarray,
    offer_ids: np.ndarray,
    rng: np.random.Generator,
    rates: Rates,
) -> pa.Table:
    n = len(offer["t"])
    value, propensity = offer["value"], offer["propensity"]
    table = pa.table(
        {
            "event_id": format_ids("oe-", np.arange(1, n + 1), 8),
            "customer_id": _strings(customer_ids, offer["c"]),
            "offer_id": _strings(offer_ids, offer["o"]),
            "message_id": format_ids("m-", offer["msg"], 8),
            "event": _strings(np.array(OFFER_EVENTS, dtype=object), offer["ev"]),
            "occurred_at": _timestamps(offer["t"]),
            "value": pa.array(value, mask=np.isnan(value)),
            "propensity": pa.array(propensity, mask=np.isnan(propensity)),
            "decision_id": pa.nulls(n, pa.string()),
        }
    )
    table = table.take(pa.array(_duplicated_order(n, rates.duplicate_other_rows, rng)))
    junk = _junk_rows(table, rng, {"event": ["viewed", "redeemed"]}, prefix="oe-bad-", count=6)
    return _interleave(table, [junk], rng)


def _junk_rows(
    table: pa.Table, rng: np.random.Generator, bad_values: dict[str, list[str]], prefix: str, count: int
) -> pa.Table:
    """Copies of random rows, each broken one way: an unknown value, an empty customer_id, no time stamp."""
    if not table.num_rows:
        return table.slice(0, 0)
    rows = table.take(pa.array(rng.choice(table.num_rows, count))).to_pylist()
    for i, row in enumerate(rows):
        row["event_id"] = f"{prefix}{i + 1:04d}"
        breakage = i % 3
        if breakage == 0:
            column, values = next(iter(bad_values.items()))
            row[column] = values[i % len(values)]
        elif breakage == 1:
            row["customer_id"] = "" if i % 2 else "   "
        else:
            row["occurred_at"] = None
    return pa.Table.from_pylist(rows, schema=table.schema)


def _unknown_customer_rows(
    table: pa.Table,
    rng: np.random.Generator,
    n_customers: int,
    count: int,
    prefix: str,
    events: tuple[str, ...],
) -> pa.Table:
    """Rows for customer ids the customers table lacks: new ids, and look-alikes short of a leading zero."""
    if not table.num_rows:
        return table.slice(0, 0)
    rows = table.take(pa.array(rng.choice(table.num_rows, count))).to_pylist()
    for i, row in enumerate(rows):
        known = int(rng.integers(1, n_customers + 1))
        row["customer_id"] = f"c-{n_customers + 1 + i:06d}" if i % 2 else f"c-{known:05d}"
        row["event_id"] = f"{prefix}{i + 1:04d}"
        row["event"] = events[i % len(events)]
        for column in ("machine_open", "bounce_type", "user_agent", "url", "category", "product_id", "value"):
            if column in row:
                row[column] = None
        if "message_id" in row:
            row["message_id"] = f"m-unk-{i // len(events) + 1:04d}"
    return pa.Table.from_pylist(rows, schema=table.schema)


def _interleave(table: pa.Table, extras: list[pa.Table], rng: np.random.Generator) -> pa.Table:
    """Insert extra rows where their time stamps belong (rows without one at a random place)."""
    extra = pa.concat_tables(extras)
    if not extra.num_rows:
        return table
    times = table.column("occurred_at").cast(pa.int64()).to_numpy(zero_copy_only=False)
    extra_times = extra.column("occurred_at").cast(pa.int64())
    missing = extra_times.is_null().to_numpy(zero_copy_only=False)
    at = np.searchsorted(times, extra_times.fill_null(0).to_numpy(zero_copy_only=False), side="right") - 0.5
    at = np.where(missing, rng.integers(0, max(table.num_rows, 1), extra.num_rows) - 0.5, at)
    order = np.argsort(np.concatenate([np.arange(table.num_rows), at]), kind="stable")
    return pa.concat_tables([table, extra]).take(pa.array(order))


def _events_truth(email: dict[str, np.ndarray], customer_ids: np.ndarray, event: int) -> pd.DataFrame:
    """Every open (or click) in the data with who made it: a person, the privacy proxy or a scanner.

    `via_proxy`: a person's own open that arrived through the proxy (a proxied recipient of a realistic world).
    """
    rows = email["ev"] == event
    source = np.where(email["source"][rows] < 0, HUMAN, email["source"][rows])
    return pd.DataFrame(
        {
            "event_id": format_ids("ee-", email["event_id"][rows], 9).to_pandas(),
            "message_id": format_ids("m-", email["msg"][rows], 8).to_pandas(),
            "customer_id": customer_ids[email["c"][rows]],
            "occurred_at": pd.to_datetime(np.round(email["t"][rows] * 1e6).astype(np.int64), unit="us", utc=True),
            "is_machine": source != HUMAN,
            "source": np.array(["human", "mpp", "scanner"], dtype=object)[source],
            "via_proxy": (source == HUMAN) & (email["ua"][rows] == _MPP_UA),
        }
    )


def _messages_truth(
    run: _Run, customer_ids: np.ndarray, campaign_ids: np.ndarray, offer_ids: np.ndarray
) -> pd.DataFrame:
    m = run.messages.columns(MESSAGE_COLUMNS)
    campaigns = run.campaigns
    offer = m["o"].astype(np.int64)
    return pd.DataFrame(
        {
            "message_id": format_ids("m-", m["msg"], 8).to_pandas(),
            "customer_id": customer_ids[m["c"].astype(np.int64)],
            "campaign_id": campaign_ids[m["camp"].astype(np.int64)],
            "kind": campaigns["kind"].to_numpy()[m["camp"].astype(np.int64)],
            "topic": campaigns["topic"].to_numpy()[m["camp"].astype(np.int64)],
            "sent_at": pd.to_datetime(np.round(m["t"] * 1e6).astype(np.int64), unit="us", utc=True),
            "sends_in_prev_7d": m["sends7"].astype(np.int64),
            "delivered": m["delivered"].astype(bool),
            "open_probability": m["p_open"].astype(np.float64),
            "human_open_72h": m["human"].astype(bool),
            "offer_id": pd.Series(offer_ids[np.maximum(offer, 0)]).where(offer >= 0, None),
            "propensity": m["propensity"].astype(np.float64),
            "conversion_probability": m["p_conv"].astype(np.float64),
            "converted_7d": m["converted"].astype(bool),
        }
    )


def _iso(stamps: pd.Series) -> pd.Series:
    return stamps.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna("")


def _iso_local(stamps: pd.Series, zones: pd.Series) -> pd.Series:
    """ISO 8601 with the customer's own UTC offset (e.g. 2026-03-04T10:15:00+01:00)."""
    out = _iso(stamps)
    for zone, rows in zones.groupby(zones).groups.items():
        local = stamps[rows].dt.tz_convert(zone).dt.strftime("%Y-%m-%dT%H:%M:%S%z")
        out[rows] = local.str[:-2] + ":" + local.str[-2:]
    return out


def _customers_csv(params: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    n = len(params)
    country = params["country"].where(~((params["country"] == "GB") & (rng.random(n) < 0.1)), "UK")
    frame = pd.DataFrame(
        {
            "customer_id": params["customer_id"],
            "timezone": params["timezone_in_data"],
            "country": country,
            "signup_at": _iso(params["signup_at"]),
            "consent_email": np.where(params["consent_email"], "true", "false"),
            "consent_profiling": np.where(params["consent_profiling"], "true", "false"),
            "interests": params["interests"],
            "updated_at": _iso_local(params["updated_at"], params["timezone"]),
            "attr_loyalty_tier": params["attr_loyalty_tier"],
            "attr_age_band": params["attr_age_band"],
            "attr_account_type": params["attr_account_type"],
        }
    )
    stale = frame.sample(n=max(1, n // 300), random_state=rng.integers(2**31)) if n else frame.head(0)
    stale = stale.assign(
        updated_at=_iso(params.loc[stale.index, "updated_at"] - pd.Timedelta(days=30)),
        attr_loyalty_tier="bronze",
    )
    junk = pd.DataFrame(
        [
            {**frame.iloc[0].to_dict(), "customer_id": "", "updated_at": ""},
            {**frame.iloc[0].to_dict(), "customer_id": "c-broken-1", "signup_at": "2026-02-30T25:61:00Z"},
        ]
    )
    return pd.concat([frame, stale, junk], ignore_index=True)


def _campaigns_csv(campaigns: pd.DataFrame) -> pd.DataFrame:
    frame = campaigns[["campaign_id", "kind", "topic", "subject", "created_at"]].copy()
    frame["created_at"] = _iso(frame["created_at"])
    junk = pd.DataFrame(
        [
            {
                "campaign_id": "cmp-9001",
                "kind": "blast",
                "topic": "outdoor",
                "subject": "?",
                "created_at": "",
            },
            {
                "campaign_id": "cmp-9002",
                "kind": "newsletter",
                "topic": "",
                "subject": "?",
                "created_at": "last tuesday",
            },
        ]
    )
    return pd.concat([frame, junk], ignore_index=True)


def _offers_csv(offers: pd.DataFrame) -> pd.DataFrame:
    frame = offers[["offer_id", "kind", "category", "discount_pct", "price", "margin", "inventory"]].copy()
    frame["inventory"] = frame["inventory"].astype("Int64")
    frame["starts_at"] = _iso(offers["starts_at"])
    frame["ends_at"] = _iso(offers["ends_at"])
    return frame


def _write(out_dir: Path, world: World, tables: _Tables) -> dict[str, int]:
    """Write the data files and the truth; returns rows written per table."""
    # customers.csv: comma-separated with a byte-order mark (as spreadsheet exports write it); offers.csv uses
    # semicolons, so the ingest detects both delimiters on every simulated world.
    tables.customers_csv.to_csv(out_dir / "customers.csv", index=False, encoding="utf-8-sig")
    tables.campaigns_csv.to_csv(out_dir / "campaigns.csv", index=False, encoding="utf-8")
    tables.offers_csv.to_csv(out_dir / "offers.csv", sep=";", index=False, encoding="utf-8")
    parts_dir = out_dir / "email_events"
    parts_dir.mkdir(exist_ok=True)
    for old in parts_dir.glob("part-*.parquet"):
        old.unlink()
    for month, part in _monthly_parts(tables.email_events):
        pq.write_table(part, parts_dir / f"part-{month}.parquet")
    pq.write_table(tables.site_events, out_dir / "site_events.parquet")
    pq.write_table(tables.offer_events, out_dir / "offer_events.parquet")
    world.save(out_dir)
    truth_dir = out_dir / "truth"
    pq.write_table(pa.Table.from_pandas(tables.opens, preserve_index=False), truth_dir / "email_opens.parquet")
    pq.write_table(pa.Table.from_pandas(tables.clicks, preserve_index=False), truth_dir / "email_clicks.parquet")
    pq.write_table(pa.Table.from_pandas(tables.messages, preserve_index=False), truth_dir / "messages.parquet")
    return {
        "customers": len(tables.customers_csv),
        "campaigns": len(tables.campaigns_csv),
        "offers": len(tables.offers_csv),
        "email_events": tables.email_events.num_rows,
        "site_events": tables.site_events.num_rows,
        "offer_events": tables.offer_events.num_rows,
    }


def _monthly_parts(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Split by UTC month of occurred_at (a row without one goes with the row before it)."""
    micros = pd.Series(table.column("occurred_at").cast(pa.int64()).to_pandas()).ffill().bfill()
    months = micros.fillna(0).to_numpy(np.int64).astype("datetime64[us]").astype("datetime64[M]").astype(str)
    for month in dict.fromkeys(months):
        yield month, table.filter(pa.array(months == month))
