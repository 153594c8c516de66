"""The simulated customers: where they live, their daily rhythms, their tastes and their true parameters.

`make_customers` draws one row per customer: the attributes the shop exports (zone, country, consents,
declared interests, loyalty tier, ...) and the parameters only the truth knows (base open propensity,
fatigue, rhythms, category affinities, price sensitivity, whether a proxy or a scanner reads their mail).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sendwise.simulator import families
from sendwise.simulator.options import Rates, Realism
from sendwise.simulator.records import DEVICE_USER_AGENTS
from sendwise.simulator.truth import CATEGORIES, DAY

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
CLASSIC_FLOOR = 0.06
"""Share of a classic rhythm spread evenly over the day."""


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
    weekday = families.von_mises_mixture(centers, weights, kappa, CLASSIC_FLOOR)
    weekend_centers = centers + rng.uniform(0.5, 2.5, (n, 1))
    late_morning = (weekend_centers < 11.0) & (rng.random((n, 1)) < 0.35)
    weekend_centers = np.where(late_morning, rng.normal(10.5, 0.5, (n, 2)), weekend_centers)
    swap = (rng.random(n) < 0.3) & two_peaks
    weekend_weights = np.where(swap[:, None], weights[:, ::-1], weights)
    weekend = families.von_mises_mixture(weekend_centers, weekend_weights, 0.8 * kappa, CLASSIC_FLOOR)
    return weekday, weekend


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
