"""Off-policy evaluation: what a policy would have earned, estimated from decisions another policy logged.

The logged data is one row per decision (unit): the action taken, the propensity with which the logging
policy took it, and the reward that followed. A target policy is either deterministic (one action per unit)
or stochastic (a probability for every action of every unit). Three estimators of its value, each with a
standard error from its per-unit terms:

- **IPS** (inverse propensity scoring): the mean of w·r with w = π(a|x) / p, unbiased when every action the
  target may take had a positive logging propensity;
- **SNIPS** (self-normalised IPS): Σ w·r / Σ w, slightly biased, usually less variable (it is invariant to
  adding a constant to every reward);
- **DR** (doubly robust): the reward model's value of the target policy plus the IPS correction of the model's
  error on the logged action, unbiased when the propensities are right whatever the model, and less variable
  the better the model.

Every estimate is a mean of per-unit terms (SNIPS through its linearisation), so its standard error is the
standard deviation of the terms over √n, or, where units share a cluster (several decisions about one
customer), the cluster-robust one computed from the sums of the terms by cluster. Confidence intervals are
normal, or percentile bootstrap over units (or clusters) with a seed. `difference` compares two policies on
the same logged units with a paired interval, which is far tighter than comparing their two intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

ESTIMATORS = ("IPS", "SNIPS", "DR")
BOOTSTRAP_CHUNK = 64


@dataclass(frozen=True)
class LoggedData:
    """Logged decisions: action index, propensity of that action under the logging policy, reward.

    `groups` (optional) names the cluster of each unit (e.g. the customer) for cluster-robust intervals.
    """

    actions: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    n_actions: int
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        actions = np.asarray(self.actions)
        propensities = np.asarray(self.propensities, dtype=float)
        rewards = np.asarray(self.rewards, dtype=float)
        n = len(actions)
        if n == 0:
            raise ValueError("logged data has no units")
        if len(propensities) != n or len(rewards) != n:
            raise ValueError(
                f"actions, propensities and rewards must have one entry per unit: got {n}, "
                f"{len(propensities)} and {len(rewards)}"
            )
        if not np.issubdtype(actions.dtype, np.integer) or actions.min() < 0 or actions.max() >= self.n_actions:
            raise ValueError(f"actions must be integer indices in [0, {self.n_actions}): got {actions[:5]}...")
        bad = ~((propensities > 0) & (propensities <= 1))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"propensities must be in (0, 1]: {int(bad.sum())} are not, the first at unit {first} "
                f"({propensities[first]!r})"
            )
        if not np.isfinite(rewards).all():
            raise ValueError("rewards must be finite numbers (no NaN)")
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"groups must have one entry per unit: got {len(self.groups)} for {n} units")
        object.__setattr__(self, "actions", actions.astype(np.int64))
        object.__setattr__(self, "propensities", propensities)
        object.__setattr__(self, "rewards", rewards)

    def __len__(self) -> int:
        return len(self.actions)

    def cluster_codes(self) -> np.ndarray:
        """A cluster index per unit (each unit its own cluster where no groups are given)."""
        if self.groups is None:
            return np.arange(len(self))
        return np.unique(np.asarray(self.groups), return_inverse=True)[1].reshape(-1)


@dataclass(frozen=True)
class PolicyValue:
    """An estimate of a policy's value with its standard error and confidence interval."""

    estimator: str
    value: float
    std_error: float
    low: float
    high: float
    n: int
    level: float = 0.95
    influence: np.ndarray | None = field(default=None, repr=False, compare=False)  # per-unit terms, mean = value
    clusters: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "std_error": self.std_error,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "level": self.level,
        }

    def text(self, digits: int = 4, scale: float = 1.0, unit: str = "") -> str:
        """`0.1834 [0.1760, 0.1908]`, optionally scaled (100 for percent points)."""
        v, lo, hi = (x * scale for x in (self.value, self.low, self.high))
        return f"{v:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


def target_probabilities(target: np.ndarray, n_actions: int) -> np.ndarray:
    """The target policy as an [n, n_actions] matrix of action probabilities.

    `target` is either one action index per unit (deterministic) or already such a matrix (stochastic, rows
    summing to 1).
    """
    target = np.asarray(target)
    if target.ndim == 1:
        if not np.issubdtype(target.dtype, np.integer) or target.min() < 0 or target.max() >= n_actions:
            raise ValueError(f"a deterministic target must give action indices in [0, {n_actions})")
        matrix = np.zeros((len(target), n_actions))
        matrix[np.arange(len(target)), target] = 1.0
        return matrix
    if target.ndim != 2 or target.shape[1] != n_actions:
        raise ValueError(f"a stochastic target must be an [n, {n_actions}] matrix, got shape {target.shape}")
    if (target < 0).any() or not np.allclose(target.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("a stochastic target's rows must be probabilities summing to 1")
    return target.astype(float)


def _weights(logged: LoggedData, target: np.ndarray) -> np.ndarray:
    probabilities = target_probabilities(target, logged.n_actions)
    if len(probabilities) != len(logged):
        raise ValueError(f"the target policy covers {len(probabilities)} units, the logged data {len(logged)}")
    return probabilities[np.arange(len(logged)), logged.actions] / logged.propensities


def z_score(level: float) -> float:
    """The normal quantile of a two-sided interval at `level` (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def _standard_error(influence: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of the mean of `influence`, cluster-robust (CR1) over `clusters`."""
    n = len(influence)
    centred = influence - influence.mean()
    sums = np.bincount(clusters, weights=centred)
    g = len(sums)
    if g < 2:
        return float("nan")
    return float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / n)


def _estimate(name: str, value: float, influence: np.ndarray, logged: LoggedData, level: float) -> PolicyValue:
    clusters = logged.cluster_codes()
    se = _standard_error(influence, clusters)
    z = z_score(level)
    return PolicyValue(
        estimator=name,
        value=float(value),
        std_error=se,
        low=float(value - z * se),
        high=float(value + z * se),
        n=len(logged),
        level=level,
        influence=influence,
        clusters=clusters,
    )


def ips(logged: LoggedData, target: np.ndarray, level: float = 0.95) -> PolicyValue:
    """Inverse propensity scoring: mean of π(a|x)/p · r."""
    terms = _weights(logged, target) * logged.rewards
    return _estimate("IPS", terms.mean(), terms, logged, level)


def snips(logged: LoggedData, target: np.ndarray, level: float = 0.95) -> PolicyValue:
    """Self-normalised IPS: Σ w·r / Σ w, with the delta-method standard error."""
    w = _weights(logged, target)
    if w.sum() <= 0:
        raise ValueError("the target policy never takes a logged action: SNIPS is undefined")
    value = float(np.sum(w * logged.rewards) / np.sum(w))
    influence = value + w * (logged.rewards - value) / w.mean()
    return _estimate("SNIPS", value, influence, logged, level)


def doubly_robust(logged: LoggedData, target: np.ndarray, predicted: np.ndarray, level: float = 0.95) -> PolicyValue:
    """Doubly robust: Σ_a π(a|x) q̂(x, a) + w · (r − q̂(x, a_logged)).

    `predicted` is the reward model's prediction for every unit and action, an [n, n_actions] matrix.
    """
    predicted = np.asarray(predicted, dtype=float)
    if predicted.shape != (len(logged), logged.n_actions):
        raise ValueError(f"predicted rewards must be [n, n_actions] = {(len(logged), logged.n_actions)}")
    probabilities = target_probabilities(target, logged.n_actions)
    w = probabilities[np.arange(len(logged)), logged.actions] / logged.propensities
    model_value = np.sum(probabilities * predicted, axis=1)
    terms = model_value + w * (logged.rewards - predicted[np.arange(len(logged)), logged.actions])
    return _estimate("DR", terms.mean(), terms, logged, level)


def direct_method(logged: LoggedData, target: np.ndarray, predicted: np.ndarray, level: float = 0.95) -> PolicyValue:
    """The reward model's value of the target policy alone (biased by the model's errors; for comparison)."""
    probabilities = target_probabilities(target, logged.n_actions)
    terms = np.sum(probabilities * np.asarray(predicted, dtype=float), axis=1)
    return _estimate("DM", terms.mean(), terms, logged, level)


def evaluate(
    logged: LoggedData, target: np.ndarray, predicted: np.ndarray | None = None, level: float = 0.95
) -> dict[str, PolicyValue]:
    """IPS, SNIPS and (where a reward model's predictions are given) DR estimates of one target policy."""
    values = {"IPS": ips(logged, target, level), "SNIPS": snips(logged, target, level)}
    if predicted is not None:
        values["DR"] = doubly_robust(logged, target, predicted, level)
    return values


def difference(a: PolicyValue, b: PolicyValue, level: float | None = None) -> PolicyValue:
    """a − b for two estimates on the same logged units, with the paired (cluster-robust) interval."""
    if a.influence is None or b.influence is None or a.clusters is None or len(a.influence) != len(b.influence):
        raise ValueError("difference needs two estimates computed on the same logged units")
    level = a.level if level is None else level
    influence = a.influence - b.influence
    se = _standard_error(influence, a.clusters)
    value = a.value - b.value
    z = z_score(level)
    return PolicyValue(
        estimator=f"{a.estimator} difference",
        value=value,
        std_error=se,
        low=value - z * se,
        high=value + z * se,
        n=a.n,
        level=level,
        influence=influence,
        clusters=a.clusters,
    )


def bootstrap_policy_value(
    logged: LoggedData,
    target: np.ndarray,
    estimator: str = "IPS",
    predicted: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of IPS, SNIPS or DR, vectorised over resamples of units (or clusters)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    probabilities = target_probabilities(target, logged.n_actions)
    rows = np.arange(len(logged))
    w = probabilities[rows, logged.actions] / logged.propensities
    if estimator == "DR":
        if predicted is None:
            raise ValueError("DR needs the reward model's predictions")
        predicted = np.asarray(predicted, dtype=float)
        numerator = np.sum(probabilities * predicted, axis=1) + w * (logged.rewards - predicted[rows, logged.actions])
        denominator = np.ones(len(logged))
    elif estimator == "IPS":
        numerator, denominator = w * logged.rewards, np.ones(len(logged))
    else:
        numerator, denominator = w * logged.rewards, w
    clusters = logged.cluster_codes()
    top = np.bincount(clusters, weights=numerator)
    bottom = np.bincount(clusters, weights=denominator)
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_resamples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, n_resamples - start)
        chosen = rng.integers(0, len(top), (size, len(top)))
        values.append(top[chosen].sum(axis=1) / bottom[chosen].sum(axis=1))
    stacked = np.concatenate(values)
    tail = (1 - level) / 2
    return float(np.quantile(stacked, tail)), float(np.quantile(stacked, 1 - tail))
