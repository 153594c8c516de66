"""Off-policy estimators on logged data whose true policy values are known exactly.

The world: four kinds of customer (known shares), three actions, a known reward probability for every pair,
and a logging policy with known propensities that depend on the kind. A policy's true value is then a finite
sum, so every estimate and interval can be checked against it.
"""

from __future__ import annotations

import numpy as np
import pytest

from training import offpolicy
from training.offpolicy import LoggedData

SHARES = np.array([0.4, 0.3, 0.2, 0.1])
MEANS = np.array(  # P(reward | kind, action)
    [
        [0.10, 0.20, 0.05],
        [0.30, 0.10, 0.15],
        [0.05, 0.05, 0.40],
        [0.50, 0.20, 0.10],
    ]
)
BALANCED = np.array([[0.5, 0.3, 0.2], [0.3, 0.4, 0.3], [0.4, 0.4, 0.2], [0.2, 0.3, 0.5]])
# Skewed logging: the target's actions are rarely logged for some kinds (propensity 0.05).
SKEWED = np.array([[0.90, 0.05, 0.05], [0.05, 0.90, 0.05], [0.90, 0.05, 0.05], [0.05, 0.90, 0.05]])
TARGET = np.array([1, 0, 2, 0])  # the best action for each kind
TRUE_VALUE = float(SHARES @ MEANS[np.arange(4), TARGET])


def _log(rng: np.random.Generator, n: int, logging: np.ndarray, offset: float = 0.0) -> tuple[LoggedData, np.ndarray]:
    """n logged decisions; returns the data and the customer kinds (the context)."""
    kind = rng.choice(4, size=n, p=SHARES)
    cumulative = logging[kind].cumsum(axis=1)
    action = (rng.random(n)[:, None] > cumulative).sum(axis=1)
    reward = (rng.random(n) < MEANS[kind, action]).astype(float) + offset
    return LoggedData(action, logging[kind, action], reward, n_actions=3), kind


def _replicate(seed: int, reps: int, n: int, logging: np.ndarray, offset: float = 0.0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    return [_log(rng, n, logging, offset) for _ in range(reps)]


def test_true_value_is_the_best_policy_value() -> None:
    assert pytest.approx(0.4 * 0.20 + 0.3 * 0.30 + 0.2 * 0.40 + 0.1 * 0.50) == TRUE_VALUE


def test_every_estimate_covers_the_true_value_on_a_large_log() -> None:
    logged, kind = _log(np.random.default_rng(0), 20_000, BALANCED)
    target = TARGET[kind]
    values = offpolicy.evaluate(logged, target, predicted=MEANS[kind])
    for name, value in values.items():
        assert value.low < TRUE_VALUE < value.high, f"{name} {value.text()} misses {TRUE_VALUE:.4f}"
        assert value.high - value.low < 0.03, f"{name} interval too wide: {value.text()}"
    assert values["DR"].std_error < values["IPS"].std_error  # a right model removes the reward noise it explains


def test_intervals_cover_at_their_nominal_rate() -> None:
    covered = {"IPS": 0, "SNIPS": 0, "DR": 0}
    logs = _replicate(seed=1, reps=400, n=1_500, logging=BALANCED)
    for logged, kind in logs:
        values = offpolicy.evaluate(logged, TARGET[kind], predicted=np.clip(MEANS[kind] + 0.05, 0, 1))
        for name, value in values.items():
            covered[name] += value.low <= TRUE_VALUE <= value.high
    for name, hits in covered.items():
        assert 0.91 <= hits / len(logs) <= 0.985, f"{name} covered the truth in {hits}/{len(logs)} logs"


def test_snips_is_less_variable_than_ips_when_propensities_are_skewed() -> None:
    # rewards of 1 or 2: IPS carries the noise of the weights times the rewards' level; SNIPS cancels it.
    logs = _replicate(seed=2, reps=400, n=2_000, logging=SKEWED, offset=1.0)
    ips = np.array([offpolicy.ips(logged, TARGET[kind]).value for logged, kind in logs])
    snips = np.array([offpolicy.snips(logged, TARGET[kind]).value for logged, kind in logs])
    assert snips.std() < 0.5 * ips.std(), f"SNIPS sd {snips.std():.4f} vs IPS sd {ips.std():.4f}"
    assert abs(ips.mean() - (TRUE_VALUE + 1)) < 4 * ips.std() / np.sqrt(len(ips))  # IPS is unbiased
    assert abs(snips.mean() - (TRUE_VALUE + 1)) < 0.01  # SNIPS' bias is small next to its spread


def test_doubly_robust_is_unbiased_with_a_wrong_but_decent_model() -> None:
    wrong = np.clip(MEANS + np.array([0.12, -0.08, 0.10]), 0, 1)  # off by up to 12 points, still ordered sensibly
    logs = _replicate(seed=3, reps=400, n=2_000, logging=SKEWED)
    dr, ips, direct = [], [], []
    for logged, kind in logs:
        dr.append(offpolicy.doubly_robust(logged, TARGET[kind], wrong[kind]).value)
        ips.append(offpolicy.ips(logged, TARGET[kind]).value)
        direct.append(offpolicy.direct_method(logged, TARGET[kind], wrong[kind]).value)
    dr_, ips_, direct_ = np.array(dr), np.array(ips), np.array(direct)
    assert abs(direct_.mean() - TRUE_VALUE) > 0.03  # the model alone is biased...
    assert abs(dr_.mean() - TRUE_VALUE) < 3 * dr_.std() / np.sqrt(len(dr_))  # ...DR corrects it
    assert dr_.std() < ips_.std()  # and a decent model still lowers the variance


def test_a_stochastic_target_equal_to_the_logging_policy_gives_the_logged_mean() -> None:
    logged, kind = _log(np.random.default_rng(4), 5_000, BALANCED)
    value = offpolicy.ips(logged, BALANCED[kind])
    assert value.value == pytest.approx(logged.rewards.mean())
    uniform = offpolicy.ips(logged, np.full((len(logged), 3), 1 / 3))
    true_uniform = float(SHARES @ MEANS.mean(axis=1))
    assert uniform.low < true_uniform < uniform.high


def test_clustered_units_widen_the_interval_to_what_the_clusters_say() -> None:
    logged, kind = _log(np.random.default_rng(5), 4_000, BALANCED)
    alone = offpolicy.ips(logged, TARGET[kind])
    copies = 4  # each decision logged four times: four times the rows, no more information
    repeated = np.repeat(np.arange(len(logged)), copies)
    duplicated = LoggedData(
        logged.actions[repeated], logged.propensities[repeated], logged.rewards[repeated], 3, groups=repeated
    )
    clustered = offpolicy.ips(duplicated, TARGET[kind][repeated])
    naive = offpolicy.ips(
        LoggedData(duplicated.actions, duplicated.propensities, duplicated.rewards, 3), TARGET[kind][repeated]
    )
    assert clustered.value == pytest.approx(alone.value)
    assert clustered.std_error == pytest.approx(alone.std_error, rel=0.01)
    assert naive.std_error == pytest.approx(alone.std_error / np.sqrt(copies), rel=0.02)


def test_paired_difference_is_tighter_than_two_separate_intervals() -> None:
    logged, kind = _log(np.random.default_rng(6), 6_000, BALANCED)
    near = TARGET.copy()
    near[3] = 1  # differs from the target for one kind in ten only
    a, b = offpolicy.ips(logged, TARGET[kind]), offpolicy.ips(logged, near[kind])
    difference = offpolicy.difference(a, b, level=0.999)  # one draw: a 99.9% interval, not a coin with 5% odds
    truth = float(SHARES[3] * (MEANS[3, 0] - MEANS[3, 1]))
    assert difference.low < truth < difference.high, f"{difference.text()} misses {truth:.4f}"
    assert difference.std_error < 0.5 * np.hypot(a.std_error, b.std_error)


def test_bootstrap_interval_agrees_with_the_normal_one_and_is_seeded() -> None:
    logged, kind = _log(np.random.default_rng(7), 8_000, BALANCED)
    target = TARGET[kind]
    for estimator in offpolicy.ESTIMATORS:
        normal = offpolicy.evaluate(logged, target, predicted=MEANS[kind])[estimator]
        low, high = offpolicy.bootstrap_policy_value(
            logged, target, estimator, predicted=MEANS[kind], n_resamples=800, seed=11
        )
        width = normal.high - normal.low
        assert abs(low - normal.low) < 0.12 * width and abs(high - normal.high) < 0.12 * width, estimator
        again = offpolicy.bootstrap_policy_value(
            logged, target, estimator, predicted=MEANS[kind], n_resamples=800, seed=11
        )
        assert again == (low, high)


@pytest.mark.parametrize(
    ("actions", "propensities", "rewards", "message"),
    [
        ([0, 1], [0.5, 0.0], [1.0, 0.0], "propensities must be in \\(0, 1\\]"),
        ([0, 1], [0.5, 1.5], [1.0, 0.0], "propensities must be in \\(0, 1\\]"),
        ([0, 3], [0.5, 0.5], [1.0, 0.0], "action"),
        ([0, 1], [0.5], [1.0, 0.0], "one entry per unit"),
        ([0, 1], [0.5, 0.5], [1.0, np.nan], "finite"),
    ],
)
def test_bad_logged_data_is_refused_with_a_reason(actions, propensities, rewards, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        LoggedData(np.array(actions), np.array(propensities), np.array(rewards), n_actions=3)


def test_bad_targets_are_refused_with_a_reason() -> None:
    logged = LoggedData(np.array([0, 1]), np.array([0.5, 0.5]), np.array([1.0, 0.0]), n_actions=3)
    with pytest.raises(ValueError, match="summing to 1"):
        offpolicy.ips(logged, np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="action indices"):
        offpolicy.ips(logged, np.array([0, 5]))
    with pytest.raises(ValueError, match="covers 3 units"):
        offpolicy.ips(logged, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="n_actions"):
        offpolicy.doubly_robust(logged, np.array([0, 1]), np.zeros((2, 2)))
