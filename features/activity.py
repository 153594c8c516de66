"""Each customer's daily rhythm, estimated by empirical Bayes over a bank of plausible activity shapes.

A quarter of site visits and a handful of opens say little about one person's best hour on their own; a
smoothed histogram of them follows the noise. Daily rhythms, though, have a common form: one or two bumps of
activity at some times of day, and on weekends the same bumps a little later. sendwise keeps a fixed bank of
such shapes (weekday and weekend share of activity per local hour), learns from all customers how common each
shape is (the nonparametric maximum-likelihood prior of Kiefer and Wolfowitz, by EM), and gives each customer
the posterior mean shape given their own evidence:

- site visits: each one a draw from the shape, at its local hour and day type;
- the first human open of each email: a draw from the shape over the hours after the send, weighted by how
  soon people open (an exponential with `OPEN_DELAY_HOURS`), so an open says "present then, given that the
  email had just arrived", which corrects for the sender's own schedule instead of learning it.

The prior is also fitted per time zone (shrunk toward the global one): a customer with no history gets the
rhythm of similar customers, not one global default. docs/features.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

HOURS = 24
SLOTS = 7 * HOURS
"""Send slots: local weekday (Monday 0) × local hour."""
BANK_SIZE = 20_000
BANK_SEED = 20_251_126
OPEN_DELAY_HOURS = 10.0
OPEN_WINDOW_HOURS = 72
PRIOR_ITERATIONS = 8
PRIOR_SUPPORT = 2_500
"""Shapes kept after the prior is fitted (the most common ones): the rest carry almost no weight."""
ZONE_SHRINKAGE = 50.0
"""A time zone's prior counts as this many customers of the global prior plus its own customers."""
CHUNK = 2_048


@dataclass
class Evidence:
    """Per customer: visits and first human opens by (day type, local hour), and the send slots of those opens."""

    visits: np.ndarray  # [n, 48]: weekday hours 0..23, then weekend hours
    opens: np.ndarray  # [n, 48]
    open_slots: np.ndarray  # [n, 168]: local weekday × local hour of the send that was opened

    @classmethod
    def zeros(cls, n: int) -> Evidence:
        return cls(
            np.zeros((n, 2 * HOURS), np.float32),
            np.zeros((n, 2 * HOURS), np.float32),
            np.zeros((n, SLOTS), np.float32),
        )

    def stacked(self) -> np.ndarray:
        """[n, 216]: the sufficient statistics the likelihood is linear in."""
        return np.concatenate([self.visits + self.opens, self.open_slots], axis=1).astype(np.float32)

    def amount(self) -> np.ndarray:
        """Visits and opens behind each estimate."""
        return self.visits.sum(axis=1) + self.opens.sum(axis=1)


def _von_mises(centers: np.ndarray, weights: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    hours = np.arange(HOURS) + 0.5
    angle = 2 * np.pi * (hours[None, None, :] - centers[:, :, None]) / HOURS
    bumps = np.exp(kappa[:, :, None] * (np.cos(angle) - 1.0))
    bumps /= bumps.sum(axis=2, keepdims=True)
    return (weights[:, :, None] * bumps).sum(axis=1)


def shape_bank(size: int = BANK_SIZE, seed: int = BANK_SEED) -> np.ndarray:
    """[size, 48] candidate rhythms: weekday then weekend share of activity per local hour (each half sums to 1).

    One or two bumps anywhere in the day, broad or narrow, over a floor of activity at any hour; on weekends
    the bumps move later by up to three hours, sometimes trade places, and an early one may become a late
    morning. Nothing here says which shapes are common: the prior learns that from the data.
    """
    rng = np.random.default_rng(seed)
    two = rng.random(size) < 0.5
    centers = rng.uniform(0.0, HOURS, (size, 2))
    first = np.where(two, rng.uniform(0.5, 0.9, size), 1.0)
    weights = np.stack([first, 1.0 - first], axis=1)
    kappa = rng.uniform(1.0, 6.0, (size, 2))
    floor = rng.uniform(0.02, 0.15, (size, 1))
    weekday = (1.0 - floor) * _von_mises(centers, weights, kappa) + floor / HOURS
    weekend_centers = centers + rng.uniform(-0.5, 3.0, (size, 1))
    late_morning = (weekend_centers < 11.0) & (rng.random((size, 2)) < 0.3)
    weekend_centers = np.where(late_morning, rng.uniform(9.5, 11.5, (size, 2)), weekend_centers)
    swapped = rng.random((size, 1)) < 0.3
    weekend_weights = np.where(swapped, weights[:, ::-1], weights)
    weekend_kappa = kappa * rng.uniform(0.6, 1.0, (size, 1))
    weekend = (1.0 - floor) * _von_mises(weekend_centers, weekend_weights, weekend_kappa) + floor / HOURS
    return np.concatenate([weekday, weekend], axis=1)


def _open_normalizers(shapes: np.ndarray) -> np.ndarray:
    """[m, 168]: for a send in each local slot, the shape's weight over the open window, soon counting more."""
    lag = np.arange(OPEN_WINDOW_HOURS)
    soon = np.exp(-lag / OPEN_DELAY_HOURS)
    out = np.zeros((len(shapes), SLOTS))
    for weekday in range(7):
        for hour in range(HOURS):
            t = hour + lag
            day = (weekday + t // HOURS) % 7
            column = t % HOURS + HOURS * (day >= 5)
            out[:, weekday * HOURS + hour] = shapes[:, column] @ soon
    return out


@dataclass
class RhythmPrior:
    """The fitted prior: shapes, their log-likelihood weights, and how common each is, globally and per zone."""

    shapes: np.ndarray  # [m, 48]
    log_terms: np.ndarray  # [m, 216]: log shape, then −log open normalizer
    weights: np.ndarray  # [m]
    zone_weights: dict[str, np.ndarray]
    zone_customers: dict[str, int]

    def weights_for(self, zones: np.ndarray) -> np.ndarray:
        """[n, m] prior weights of each row's time zone (the global prior for a zone not seen)."""
        out = np.empty((len(zones), len(self.weights)), np.float32)
        out[:] = self.weights
        for zone, weights in self.zone_weights.items():
            out[zones == zone] = weights
        return out

    def posterior_mean(self, evidence: Evidence, zones: np.ndarray) -> np.ndarray:
        """[n, 48] each customer's expected rhythm given their evidence and their zone's prior."""
        stacked = evidence.stacked()
        out = np.empty((len(stacked), 2 * HOURS), np.float32)
        zones = np.asarray(zones, dtype=object)
        for start in range(0, len(stacked), CHUNK):
            part = slice(start, start + CHUNK)
            posterior = _responsibilities(stacked[part], self.log_terms, self.weights_for(zones[part]))
            out[part] = posterior @ self.shapes
        return out

    def zone_means(self) -> pd.DataFrame:
        """One row per zone (and "" for the global prior): the expected rhythm of a customer without history."""
        zones = ["", *sorted(self.zone_weights)]
        weights = np.stack([self.weights, *(self.zone_weights[z] for z in zones[1:])])
        means = weights @ self.shapes
        return pd.DataFrame(
            {
                "timezone": zones,
                "weekday": list(means[:, :HOURS].astype(np.float32)),
                "weekend": list(means[:, HOURS:].astype(np.float32)),
                "customers": [sum(self.zone_customers.values()), *(self.zone_customers[z] for z in zones[1:])],
            }
        )


def _responsibilities(stacked: np.ndarray, log_terms: np.ndarray, prior: np.ndarray) -> np.ndarray:
    log_likelihood = stacked @ log_terms.T
    log_likelihood -= log_likelihood.max(axis=1, keepdims=True)
    posterior = np.exp(log_likelihood) * prior
    posterior /= posterior.sum(axis=1, keepdims=True)
    return posterior.astype(np.float32)


def _log_terms(shapes: np.ndarray) -> np.ndarray:
    return np.concatenate([np.log(shapes), -np.log(_open_normalizers(shapes))], axis=1).astype(np.float32)


def fit_prior(evidence: Evidence, zones: np.ndarray, bank: np.ndarray | None = None) -> RhythmPrior:
    """How common each shape of the bank is among these customers (EM on the mixing weights only)."""
    shapes = shape_bank() if bank is None else bank
    log_terms = _log_terms(shapes)
    zones = np.asarray(zones, dtype=object)
    informed = evidence.amount() > 0
    stacked = evidence.stacked()[informed]
    weights = np.full(len(shapes), 1.0 / len(shapes), np.float32)
    if len(stacked):
        for _ in range(PRIOR_ITERATIONS):
            total = np.zeros(len(shapes), np.float64)
            for start in range(0, len(stacked), CHUNK):
                total += _responsibilities(stacked[start : start + CHUNK], log_terms, weights).sum(axis=0)
            weights = (total / len(stacked)).astype(np.float32)
    keep = np.sort(np.argsort(-weights)[: min(PRIOR_SUPPORT, len(weights))])
    shapes, log_terms, weights = shapes[keep], log_terms[keep], weights[keep] / weights[keep].sum()
    zone_weights: dict[str, np.ndarray] = {}
    zone_customers: dict[str, int] = {}
    informed_zones = zones[informed]
    for zone in sorted(set(informed_zones)):
        members = stacked[informed_zones == zone]
        total = np.zeros(len(shapes), np.float64)
        for start in range(0, len(members), CHUNK):
            total += _responsibilities(members[start : start + CHUNK], log_terms, weights).sum(axis=0)
        zone_weights[zone] = ((total + ZONE_SHRINKAGE * weights) / (len(members) + ZONE_SHRINKAGE)).astype(np.float32)
        zone_customers[zone] = len(members)
    return RhythmPrior(shapes, log_terms, weights, zone_weights, zone_customers)
