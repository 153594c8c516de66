"""Each customer's daily rhythm, estimated by empirical Bayes with a prior learned from the population itself.

A quarter of site visits and a handful of opens say little about one person's best hour on their own: a
smoothed histogram of them follows the noise. But people are not each other's strangers: whatever the
population's daily rhythms look like (office hours, evenings, night shifts, commuters; weekends later for
some, earlier for others), each customer's rhythm is likely to look like somebody else's. So the prior is
built from the data:

- **Candidate rhythms** are the smoothed visit histograms (weekday and weekend per local hour, a circular
  Gaussian kernel) of the customers with the most visits, plus a flat day: shapes that occur in this
  population, not shapes anybody drew by hand.
- **How common each is** is the nonparametric maximum-likelihood prior over those candidates (Kiefer and
  Wolfowitz; EM on the mixing weights), fitted on everyone's evidence, and again per time zone, shrunk toward
  the global prior as if it had `ZONE_SHRINKAGE` more customers.
- **Each customer's rhythm** is the posterior mean of their activity at each hour **relative to their own
  peak** (1 at the peak, toward 0 where they are never around), given their own evidence, leaving out the
  candidate made from their own visits (it has already seen them: keeping it would give them their own
  smoothed histogram back, noise and all). Relative to the peak, not as a share of the day: the truth of an
  hour for sending is how far it falls short of the person's best, and a customer little is known about has
  an expected relative activity well below 1 at every hour, which a posterior mean of shares, renormalized,
  would hide (their flat day would look like a peak at every hour).

The evidence: site visits, each a draw from the rhythm at its local hour and day type; and the first reading
of each email (a person's open or click), a draw from the rhythm over the hours after the send weighted by
how soon people read (`ReadingDelays`, learned from the data), so a read at 09:00 of an email sent at 08:00
says "present then, given that the email had just arrived": the sender's schedule is divided out instead of
learned. docs/features.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

HOURS = 24
DAY_TYPES = 2
SLOTS = 7 * HOURS
"""Send slots: local weekday (Monday 0) × local hour."""
READ_WINDOW_HOURS = 72
KERNEL_SIGMA_HOURS = 2.0
"""Width of the kernel that turns a customer's visit counts into a candidate rhythm."""
OTHER_DAY_TYPE_WEIGHT = 0.1
"""A candidate's weekend borrows this much of its weekday's shape (weekend visits are few), and vice versa."""
CANDIDATE_FLOOR = 0.02
"""Share of a candidate's day spread evenly: nobody is never around."""
MIN_CANDIDATE_VISITS = 20
MIN_CANDIDATES = 500
"""Fewer customers than this with `MIN_CANDIDATE_VISITS`: the candidates are the ones with the most visits."""
MAX_CANDIDATES = 4_000
CANDIDATE_SEED = 20_261_205
PRIOR_ITERATIONS = 10
PRIOR_SUPPORT = 2_500
"""Candidates kept after the prior is fitted (the most common ones): the rest carry almost no weight."""
ZONE_SHRINKAGE = 50.0
"""A time zone's prior counts as this many customers of the global prior plus its own customers."""
PRIOR_FIT_CUSTOMERS = 25_000
"""The most customers the prior's mixing weights and the reading delays are fitted on: past it, a seeded uniform
sample of them. The prior describes the population, and a sample of this size estimates it as well as everyone
does (the worlds it was developed on had 10,000 customers); fitted on everyone it was the largest cost of the
feature build, growing with the customers."""
PRIOR_FIT_SEED = 20_261_206
DELAY_ITERATIONS = 25
POSTERIOR_CHUNK = 256
"""Rows whose [rows, candidates] posterior is worked on at once: small enough to stay in the processor's cache."""
LOG_NEGLIGIBLE = -80.0
"""A candidate whose prior weight × likelihood is less than exp(−80) of the row's likeliest counts as exactly that
much: below it float32 numbers turn subnormal, which the processor computes with many times slower, and no
posterior can tell the difference (2,500 candidates at exp(−80) are 4e−32 of the likeliest)."""
NO_OWNER = -1


@dataclass
class Evidence:
    """Per customer: visits and first reads by (day type, local hour), and the send slots of those reads."""

    visits: np.ndarray  # [n, 48]: weekday hours 0..23, then weekend hours
    reads: np.ndarray  # [n, 48]
    read_slots: np.ndarray  # [n, 168]: local weekday × local hour of the send that was read

    @classmethod
    def zeros(cls, n: int) -> Evidence:
        return cls(
            np.zeros((n, DAY_TYPES * HOURS), np.float32),
            np.zeros((n, DAY_TYPES * HOURS), np.float32),
            np.zeros((n, SLOTS), np.float32),
        )

    def stacked(self) -> np.ndarray:
        """[n, 216]: the sufficient statistics the likelihood is linear in."""
        return np.concatenate([self.visits + self.reads, self.read_slots], axis=1).astype(np.float32)

    def amount(self) -> np.ndarray:
        """Visits and reads behind each estimate."""
        return self.visits.sum(axis=1) + self.reads.sum(axis=1)

    def select(self, rows: np.ndarray) -> Evidence:
        return Evidence(self.visits[rows], self.reads[rows], self.read_slots[rows])

    def visits_only(self) -> Evidence:
        return Evidence(self.visits, np.zeros_like(self.reads), np.zeros_like(self.read_slots))


def _slot_columns() -> np.ndarray:
    """[168, 72]: the (day type, local hour) column of each hour after a send in each local slot."""
    out = np.zeros((SLOTS, READ_WINDOW_HOURS), dtype=np.int64)
    lag = np.arange(READ_WINDOW_HOURS)
    for weekday in range(7):
        for hour in range(HOURS):
            t = hour + lag
            day = (weekday + t // HOURS) % 7
            out[weekday * HOURS + hour] = t % HOURS + HOURS * (day >= 5)
    return out


SLOT_COLUMNS = _slot_columns()


@dataclass
class ReadingDelays:
    """How soon people read an email after it is sent: the weight of each hour after the send, learned from
    the data (`fit`), apart from when they are around (their rhythm)."""

    weights: np.ndarray  # [72], sums to 1

    @classmethod
    def flat(cls) -> ReadingDelays:
        return cls(np.full(READ_WINDOW_HOURS, 1.0 / READ_WINDOW_HOURS))

    @classmethod
    def fit(cls, customer: np.ndarray, slot: np.ndarray, lag: np.ndarray, rhythms: np.ndarray) -> ReadingDelays:
        """The delay weights g that best explain reads at `lag` hours after sends in `slot`, given each reader's
        rhythm: the maximum of Σ log(r(slot + lag) g(lag) / Σ_l r(slot + l) g(l)), by its fixed point."""
        if not len(lag):
            return cls.flat()
        counts = np.bincount(lag, minlength=READ_WINDOW_HOURS).astype(np.float64)
        around = rhythms[customer[:, None], SLOT_COLUMNS[slot]].astype(np.float64)  # [reads, 72]
        g = np.full(READ_WINDOW_HOURS, 1.0 / READ_WINDOW_HOURS)
        for _ in range(DELAY_ITERATIONS):
            exposure = (around / (around @ g)[:, None]).sum(axis=0)
            g = np.where(exposure > 0, counts / np.maximum(exposure, 1e-12), 0.0) + 1e-6
            g /= g.sum()
        return cls(g)

    def normalizers(self, shapes: np.ndarray) -> np.ndarray:
        """[m, 168]: for a send in each local slot, each shape's weight over the read window."""
        return np.einsum("msl,l->ms", shapes[:, SLOT_COLUMNS], self.weights)


def _circular_smooth(counts: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian kernel smoothing along the last axis (24 local hours), wrapping midnight."""
    offsets = np.arange(-12, 12)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    out = np.zeros_like(counts, dtype=np.float64)
    for offset, weight in zip(offsets, weights, strict=True):
        out += weight * np.roll(counts, offset, axis=-1)
    return out


def candidate_rhythms(visits: np.ndarray, seed: int = CANDIDATE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """([m, 48] candidate rhythms, [m] the customer row each was made from, -1 for the flat day).

    The smoothed visit histograms of the customers with at least `MIN_CANDIDATE_VISITS` visits (at most
    `MAX_CANDIDATES`, a seeded sample), or of the `MIN_CANDIDATES` with the most where too few have that many.
    """
    total = visits.sum(axis=1)
    rich = np.flatnonzero(total >= MIN_CANDIDATE_VISITS)
    if len(rich) < MIN_CANDIDATES:
        rich = np.argsort(-total, kind="stable")[:MIN_CANDIDATES]
        rich = np.sort(rich[total[rich] > 0])
    if len(rich) > MAX_CANDIDATES:
        rich = np.sort(np.random.default_rng(seed).choice(rich, MAX_CANDIDATES, replace=False))
    days = _circular_smooth(visits[rich].reshape(-1, DAY_TYPES, HOURS).astype(np.float64), KERNEL_SIGMA_HOURS)
    own = days / np.maximum(days.sum(axis=2, keepdims=True), 1e-12)
    shapes = own + OTHER_DAY_TYPE_WEIGHT * own[:, ::-1]
    shapes /= shapes.sum(axis=2, keepdims=True)
    shapes = (1.0 - CANDIDATE_FLOOR) * shapes + CANDIDATE_FLOOR / HOURS
    flat = np.full((1, DAY_TYPES * HOURS), 1.0 / HOURS)
    return (
        np.concatenate([shapes.reshape(-1, DAY_TYPES * HOURS), flat]).astype(np.float32),
        np.append(rich, NO_OWNER),
    )


def _owner_columns(rows: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """The column of each row's own candidate (made from that customer's visits), -1 where it has none."""
    order = np.argsort(owners, kind="stable")
    at = np.minimum(np.searchsorted(owners[order], rows), len(order) - 1)
    return np.where(owners[order][at] == rows, order[at], -1)


@dataclass
class _SparseEvidence:
    """The evidence without its zeros (most customers have a few visits and reads in a handful of hours), row by
    row as in a CSR matrix, and the prior each row is weighed by."""

    starts: np.ndarray  # [n + 1]: row i's nonzeros are at starts[i]:starts[i + 1]
    columns: np.ndarray  # [nnz]
    values: np.ndarray  # [nnz]
    priors: np.ndarray  # [n]: row of the prior's log weights

    @classmethod
    def of(cls, stacked: np.ndarray, priors: np.ndarray) -> _SparseEvidence:
        rows, columns = np.nonzero(stacked)
        starts = np.zeros(len(stacked) + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=len(stacked)), out=starts[1:])
        return cls(starts, columns.astype(np.int64), stacked[rows, columns].astype(np.float32), priors.astype(np.int64))

    def log_posterior(self, rows: slice, log_terms: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
        """[rows, m]: each candidate's log prior weight plus the log-likelihood of the row's evidence."""
        first, last = rows.indices(len(self.priors))[:2]
        out = np.empty((last - first, log_terms.shape[1]), np.float32)
        _log_posterior(first, self.starts, self.columns, self.values, self.priors, log_terms, log_weights, out)
        return out


@numba.njit(cache=True, nogil=True)
def _log_posterior(
    first: int,
    starts: np.ndarray,
    columns: np.ndarray,
    values: np.ndarray,
    priors: np.ndarray,
    log_terms: np.ndarray,
    log_weights: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """out[i] = log_weights[prior of row first + i] + Σ value × log_terms[column] over the row's nonzeros: a
    few sums of candidate rows per customer rather than a product with all 216 columns."""
    for i in range(out.shape[0]):
        row = first + i
        prior = priors[row]
        for c in range(out.shape[1]):
            out[i, c] = log_weights[prior, c]
        for k in range(starts[row], starts[row + 1]):
            value, column = values[k], columns[k]
            for c in range(out.shape[1]):
                out[i, c] += value * log_terms[column, c]


def _log_weights(weights: list[np.ndarray]) -> np.ndarray:
    """[priors, m] log prior weights (-inf for none)."""
    with np.errstate(divide="ignore"):
        return np.log(np.stack(weights).astype(np.float64)).astype(np.float32)


def _weighted_likelihoods(log_posterior: np.ndarray, own: np.ndarray) -> np.ndarray:
    """[n, m] each candidate's prior weight × the likelihood of the row's evidence (`log_posterior`, overwritten),
    relative to the row's largest; 0 for the row's own candidate (`own`: its column, -1 for none). Normalized,
    the posterior."""
    mine = np.flatnonzero(own >= 0)
    log_posterior[mine, own[mine]] = -np.inf
    log_posterior -= log_posterior.max(axis=1, keepdims=True)
    np.maximum(log_posterior, LOG_NEGLIGIBLE, out=log_posterior)
    likelihoods = np.exp(log_posterior, out=log_posterior)
    likelihoods[mine, own[mine]] = 0.0
    return likelihoods


def _posterior_totals(
    stacked: np.ndarray, rows: np.ndarray, log_terms: np.ndarray, owners: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """[m] the posterior weight of each candidate summed over the rows of `stacked` (customers `rows`, their own
    candidates left out), under the prior `weights`."""
    terms, log_weights = np.ascontiguousarray(log_terms.T, dtype=np.float32), _log_weights([weights])
    own = _owner_columns(rows, owners)
    evidence = _SparseEvidence.of(stacked, np.zeros(len(stacked), np.int64))
    total = np.zeros(len(weights), np.float64)
    for start in range(0, len(stacked), POSTERIOR_CHUNK):
        part = slice(start, start + POSTERIOR_CHUNK)
        likelihoods = _weighted_likelihoods(evidence.log_posterior(part, terms, log_weights), own[part])
        total += (1.0 / likelihoods.sum(axis=1)) @ likelihoods
    return total


def _log_terms(shapes: np.ndarray, delays: ReadingDelays) -> np.ndarray:
    return np.concatenate([np.log(shapes), -np.log(delays.normalizers(shapes))], axis=1).astype(np.float32)


@dataclass
class RhythmPrior:
    """The fitted prior: candidates, who each was made from, their log-likelihood terms, and how common each
    is, globally and per zone."""

    shapes: np.ndarray  # [m, 48]
    owners: np.ndarray  # [m] customer row of each candidate (-1: none)
    log_terms: np.ndarray  # [m, 216]: log shape, then −log read normalizer
    weights: np.ndarray  # [m]
    zone_weights: dict[str, np.ndarray]
    zone_customers: dict[str, int]
    delays: ReadingDelays

    def relative_shapes(self) -> np.ndarray:
        """[m, 48] each candidate's activity relative to its peak, weekdays and weekends apart."""
        days = self.shapes.reshape(-1, DAY_TYPES, HOURS)
        return (days / days.max(axis=2, keepdims=True)).reshape(-1, DAY_TYPES * HOURS)

    def posterior_mean(self, evidence: Evidence, zones: np.ndarray, customers: np.ndarray | None = None) -> np.ndarray:
        """[n, 48] each customer's expected activity relative to their peak, per day type and local hour, given
        their evidence and their zone's prior; `customers` are their rows in the table the candidates were made
        from (their own candidate is left out)."""
        stacked = evidence.stacked()
        rows = np.full(len(stacked), NO_OWNER - 1) if customers is None else np.asarray(customers, dtype=np.int64)
        own = _owner_columns(rows, self.owners)
        known = list(self.zone_weights)
        prior_rows = pd.Index(known, dtype=object).get_indexer(np.asarray(zones, dtype=object)) + 1  # 0: global
        terms = np.ascontiguousarray(self.log_terms.T, dtype=np.float32)
        log_weights = _log_weights([self.weights, *(self.zone_weights[z] for z in known)])
        sparse_evidence = _SparseEvidence.of(stacked, prior_rows)
        out = np.empty((len(stacked), DAY_TYPES * HOURS), np.float32)
        relative = self.relative_shapes()
        for start in range(0, len(stacked), POSTERIOR_CHUNK):
            part = slice(start, start + POSTERIOR_CHUNK)
            likelihoods = _weighted_likelihoods(sparse_evidence.log_posterior(part, terms, log_weights), own[part])
            out[part] = (likelihoods @ relative) / likelihoods.sum(axis=1, keepdims=True)
        return out

    def zone_means(self) -> pd.DataFrame:
        """One row per zone (and "" for the global prior): the expected rhythm of a customer without history
        (activity relative to their peak, as `posterior_mean`)."""
        zones = ["", *sorted(self.zone_weights)]
        weights = np.stack([self.weights, *(self.zone_weights[z] for z in zones[1:])])
        means = weights @ self.relative_shapes()
        return pd.DataFrame(
            {
                "timezone": zones,
                "weekday": list(means[:, :HOURS].astype(np.float32)),
                "weekend": list(means[:, HOURS:].astype(np.float32)),
                "customers": [sum(self.zone_customers.values()), *(self.zone_customers[z] for z in zones[1:])],
            }
        )


def _em(
    stacked: np.ndarray, rows: np.ndarray, log_terms: np.ndarray, owners: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Mixing weights after `PRIOR_ITERATIONS` EM steps from `weights`."""
    for _ in range(PRIOR_ITERATIONS):
        total = _posterior_totals(stacked, rows, log_terms, owners, weights)
        weights = (total / max(len(stacked), 1)).astype(np.float32)
    return weights


def _fit_rows(rows: np.ndarray) -> np.ndarray:
    """`rows`, or a seeded uniform sample of `PRIOR_FIT_CUSTOMERS` of them, in order."""
    if len(rows) <= PRIOR_FIT_CUSTOMERS:
        return rows
    return np.sort(np.random.default_rng(PRIOR_FIT_SEED).choice(rows, PRIOR_FIT_CUSTOMERS, replace=False))


def fit_prior(
    evidence: Evidence,
    zones: np.ndarray,
    reads: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> RhythmPrior:
    """The candidates and how common each is among these customers (rows of `evidence`).

    `reads` = (customer row, send slot, hours after the send) of every first read, to learn the reading delays:
    from the rhythms the visits alone give, then the prior is fitted again on all the evidence. The mixing
    weights and the delays are fitted on at most `PRIOR_FIT_CUSTOMERS` customers (`_fit_rows`).
    """
    shapes, owners = candidate_rhythms(evidence.visits)
    zones = np.asarray(zones, dtype=object)
    informed = np.flatnonzero(evidence.amount() > 0)
    weights = np.full(len(shapes), 1.0 / len(shapes), np.float32)
    delays = ReadingDelays.flat()
    if reads is not None and len(reads[0]):
        visits_only = evidence.visits_only()
        seen = _fit_rows(np.flatnonzero(visits_only.amount() > 0))
        weights = _em(visits_only.select(seen).stacked(), seen, _log_terms(shapes, delays), owners, weights)
        prior = RhythmPrior(shapes, owners, _log_terms(shapes, delays), weights, {}, {}, delays)
        readers = _fit_rows(np.unique(reads[0]))
        rhythms = np.zeros((len(evidence.visits), DAY_TYPES * HOURS), np.float32)
        rhythms[readers] = prior.posterior_mean(visits_only.select(readers), np.full(len(readers), ""), readers)
        by_reader = np.isin(reads[0], readers)
        delays = ReadingDelays.fit(reads[0][by_reader], reads[1][by_reader], reads[2][by_reader], rhythms)
    log_terms = _log_terms(shapes, delays)
    fit = _fit_rows(informed)
    if len(fit):
        weights = _em(evidence.select(fit).stacked(), fit, log_terms, owners, weights)
    keep = np.sort(np.argsort(-weights, kind="stable")[: min(PRIOR_SUPPORT, len(weights))])
    if owners[-1] == NO_OWNER and len(shapes) - 1 not in keep:
        keep = np.append(keep, len(shapes) - 1)  # the flat day stays: somewhere to go for the unusual
    shapes, owners, log_terms = shapes[keep], owners[keep], log_terms[keep]
    weights = weights[keep] / max(float(weights[keep].sum()), 1e-12)
    zone_weights: dict[str, np.ndarray] = {}
    zone_customers: dict[str, int] = {}
    informed_zones = zones[informed]
    for zone in sorted(set(informed_zones)):
        everyone_there = informed[informed_zones == zone]
        members = _fit_rows(everyone_there)
        total = _posterior_totals(evidence.select(members).stacked(), members, log_terms, owners, weights)
        zone_weights[zone] = ((total + ZONE_SHRINKAGE * weights) / (len(members) + ZONE_SHRINKAGE)).astype(np.float32)
        zone_customers[zone] = len(everyone_there)
    return RhythmPrior(shapes, owners, log_terms, weights.astype(np.float32), zone_weights, zone_customers, delays)
