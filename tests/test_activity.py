"""The daily-rhythm prior learned from the population: reading delays, candidates, leave-one-out posteriors."""

from __future__ import annotations

import numpy as np
import pytest

import features.activity as activity
from features.activity import (
    HOURS,
    READ_WINDOW_HOURS,
    SLOT_COLUMNS,
    Evidence,
    ReadingDelays,
    candidate_rhythms,
    fit_prior,
)


def _bump(center: float, width: float = 1.5) -> np.ndarray:
    hours = np.arange(HOURS) + 0.5
    distance = np.minimum(np.abs(hours - center), HOURS - np.abs(hours - center))
    day = np.exp(-0.5 * (distance / width) ** 2) + 0.02
    return day / day.sum()


def _population(n: int, rng: np.random.Generator, visits: float) -> tuple[np.ndarray, Evidence]:
    """People of three kinds (mornings, evenings, nights; weekends two hours later), each with Poisson
    visits drawn from their own rhythm."""
    centers = rng.choice([8.0, 20.0, 2.0], n) + rng.normal(0.0, 0.5, n)
    rhythms = np.stack([np.concatenate([_bump(c), _bump(c + 2.0)]) for c in centers])
    counts = rng.poisson(visits * rhythms * np.r_[np.full(HOURS, 5 / 7), np.full(HOURS, 2 / 7)] * 2)
    evidence = Evidence.zeros(n)
    evidence.visits[:] = counts
    return rhythms, evidence


def test_reading_delays_are_learned_apart_from_when_people_are_around() -> None:
    """Reads drawn from rhythm × a known delay curve: the fit finds the delay curve, not the rhythm."""
    rng = np.random.default_rng(1)
    rhythms = np.stack([np.concatenate([_bump(c), _bump(c)]) for c in rng.uniform(0, 24, 400)])
    true = np.exp(-np.arange(READ_WINDOW_HOURS) / 6.0)
    true /= true.sum()
    customer = rng.integers(0, len(rhythms), 20_000)
    slot = rng.integers(0, 7 * HOURS, len(customer))
    weight = rhythms[customer[:, None], SLOT_COLUMNS[slot]] * true[None, :]
    cumulative = np.cumsum(weight, axis=1)
    lag = (cumulative < rng.random(len(customer))[:, None] * cumulative[:, -1:]).sum(axis=1)
    fitted = ReadingDelays.fit(customer, slot, lag, rhythms).weights
    assert np.abs(fitted - true).sum() < 0.08
    naive = np.bincount(lag, minlength=READ_WINDOW_HOURS) / len(lag)
    assert np.abs(fitted - true).sum() < 0.5 * np.abs(naive - true).sum()


def test_candidates_come_from_the_customers_with_the_most_visits() -> None:
    rng = np.random.default_rng(2)
    _, evidence = _population(3000, rng, visits=25.0)
    shapes, owners = candidate_rhythms(evidence.visits)
    assert owners[-1] == -1 and np.allclose(shapes[-1], 1.0 / HOURS)  # the flat day
    assert (evidence.visits[owners[:-1]].sum(axis=1) >= 20).all()
    assert np.allclose(shapes[:, :HOURS].sum(axis=1), 1.0) and np.allclose(shapes[:, HOURS:].sum(axis=1), 1.0)


def test_posterior_beats_each_customers_own_histogram_and_leaves_their_candidate_out() -> None:
    rng = np.random.default_rng(3)
    rhythms, evidence = _population(3000, rng, visits=12.0)
    zones = np.full(len(rhythms), "Europe/Berlin", dtype=object)
    prior = fit_prior(evidence, zones)
    posterior = prior.posterior_mean(evidence, zones, np.arange(len(rhythms)))

    def efficiency(estimate: np.ndarray) -> float:
        chosen = estimate[:, :HOURS].argmax(axis=1)
        return float(rhythms[np.arange(len(rhythms)), chosen].sum() / rhythms[:, :HOURS].max(axis=1).sum())

    own = evidence.visits + 1e-3 * rng.random(evidence.visits.shape)  # ties broken at random
    assert efficiency(posterior) > efficiency(own) + 0.05
    assert efficiency(posterior) > 0.9
    # A customer with a candidate of their own is not handed it back (it has seen their visits).
    top = int(np.argmax(np.where(prior.owners >= 0, prior.weights, -1.0)))  # the most common candidate
    owner = int(prior.owners[top])
    with_own = prior.posterior_mean(evidence.select(np.array([owner])), zones[:1], None)
    without = prior.posterior_mean(evidence.select(np.array([owner])), zones[:1], np.array([owner]))
    own_candidate = prior.relative_shapes()[top]
    assert np.abs(own_candidate - with_own[0]).sum() < np.abs(own_candidate - without[0]).sum()


def test_the_rhythm_is_activity_relative_to_the_peak_and_uncertainty_lowers_it() -> None:
    """A customer the evidence pins down is near 1 at their peak; one nothing is known of is well below 1 at
    every hour (their peak could be anywhere): what a send at any hour can expect of them."""
    rng = np.random.default_rng(4)
    _, evidence = _population(3000, rng, visits=25.0)
    zones = np.full(3000, "UTC", dtype=object)
    prior = fit_prior(evidence, zones)
    known = prior.posterior_mean(evidence, zones, np.arange(3000))
    unknown = prior.posterior_mean(Evidence.zeros(1), zones[:1])
    assert (known.reshape(-1, 2, HOURS).max(axis=2) <= 1.0 + 1e-6).all()
    assert np.median(known[:, :HOURS].max(axis=1)) > 0.8
    assert unknown[0, :HOURS].max() < 0.7


def test_no_visits_at_all_gives_the_flat_day() -> None:
    evidence = Evidence.zeros(50)
    prior = fit_prior(evidence, np.full(50, "UTC", dtype=object))
    rhythm = prior.posterior_mean(evidence, np.full(50, "UTC", dtype=object), np.arange(50))
    assert np.allclose(rhythm, 1.0)  # at its peak at every hour: nothing to tell the hours apart
    assert list(prior.zone_means()["timezone"]) == [""]


def test_a_prior_fitted_on_a_sample_of_the_customers_serves_everyone_as_well(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `PRIOR_FIT_CUSTOMERS` the mixing weights are fitted on a seeded sample: the rhythms everyone gets
    choose hours as well as with a prior fitted on all of them, and each zone still counts all its customers."""
    import features.activity as activity

    rng = np.random.default_rng(5)
    rhythms, evidence = _population(3000, rng, visits=12.0)
    zones = np.where(np.arange(3000) % 3 == 0, "UTC", "Asia/Tokyo").astype(object)
    full = fit_prior(evidence, zones)
    monkeypatch.setattr(activity, "PRIOR_FIT_CUSTOMERS", 600)
    sampled = fit_prior(evidence, zones)
    assert sampled.zone_customers == full.zone_customers == {"Asia/Tokyo": 2000, "UTC": 1000}

    def efficiency(prior: activity.RhythmPrior) -> float:
        chosen = prior.posterior_mean(evidence, zones, np.arange(3000))[:, :HOURS].argmax(axis=1)
        return float(rhythms[np.arange(3000), chosen].sum() / rhythms[:, :HOURS].max(axis=1).sum())

    assert efficiency(sampled) > 0.9
    assert efficiency(sampled) > efficiency(full) - 0.01
    assert not np.allclose(sampled.weights, full.weights)  # it was fitted on other rows


def _exact_posteriors(
    prior: activity.RhythmPrior, evidence: Evidence, zones: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """[n, m] the posterior straight from its definition, in float64: every candidate, every row's own left out."""
    log_likelihood = evidence.stacked().astype(np.float64) @ prior.log_terms.T.astype(np.float64)
    log_likelihood[rows[:, None] == prior.owners[None, :]] = -np.inf
    weights = np.stack([prior.zone_weights.get(z, prior.weights) for z in zones]).astype(np.float64)
    posterior = np.exp(log_likelihood - log_likelihood.max(axis=1, keepdims=True)) * weights
    return posterior / posterior.sum(axis=1, keepdims=True)


def _exact_posterior(
    prior: activity.RhythmPrior, evidence: Evidence, zones: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    return _exact_posteriors(prior, evidence, zones, rows) @ prior.relative_shapes().astype(np.float64)


def test_the_fast_posterior_is_the_exact_one() -> None:
    """The posterior is computed on the evidence's nonzeros, a few hundred rows at a time, with candidates far
    less likely than a row's likeliest counted as exp(-80) of it: on customers with little, some and a lot of
    (decayed, non-integer) evidence, in zones with a prior of their own and one without, it is the definition's."""
    rng = np.random.default_rng(6)
    _, evidence = _population(900, rng, visits=15.0)
    evidence.visits[::7] = 0.0  # some know nothing
    evidence.visits[1::9] *= 40.0  # some are pinned down: most candidates are far below their likeliest
    reads = rng.poisson(0.05, evidence.read_slots.shape).astype(np.float32) * rng.uniform(0.2, 1.0, (900, 1))
    evidence.read_slots[:] = reads
    evidence.reads[:] = rng.poisson(0.1, evidence.reads.shape) * 0.7
    zones = rng.choice(np.array(["UTC", "Asia/Tokyo", "Europe/Berlin"], dtype=object), 900)
    first_reads = (rng.integers(0, 900, 2000), rng.integers(0, 7 * HOURS, 2000), rng.integers(0, 12, 2000))
    prior = fit_prior(evidence, zones, first_reads)
    assert len(prior.zone_weights) == 3 and (prior.owners >= 0).sum() > 100
    asked = np.where(zones == "Europe/Berlin", "America/Lima", zones)  # a zone without a prior: the global one
    rows = np.arange(900)
    fast = prior.posterior_mean(evidence, asked, rows)
    exact = _exact_posterior(prior, evidence, asked, rows)
    # float32 log-likelihoods of hundreds of visits (thousands in log) round at about 1e-4 relative
    assert np.abs(fast - exact).max() < 1e-4
    strangers = prior.posterior_mean(evidence, asked)  # not the customers the candidates were made from
    assert np.abs(strangers - _exact_posterior(prior, evidence, asked, np.full(900, -2))).max() < 1e-4
    assert np.abs(strangers - fast).max() > 1e-2  # leaving their own candidate out does move some
    # The prior's fit sums the posteriors over customers the same way.
    everyone = np.full(900, "", dtype=object)
    totals = activity._posterior_totals(evidence.stacked(), rows, prior.log_terms, prior.owners, prior.weights)
    exact_totals = _exact_posteriors(prior, evidence, everyone, rows).sum(axis=0)
    assert np.abs(totals - exact_totals).max() < 1e-3 and abs(totals.sum() - 900) < 1e-3
