"""The simulator's daily-rhythm families: how a simulated person's activity is spread over their local day.

A family is a recipe for drawing rhythms: bumps of activity at typical local hours on weekdays, and what the
weekend does to them (later for some people, earlier for others, or a different day altogether). Each person
of a family gets the bumps with their own jitter, weights and widths, over a floor of activity at any hour.

The families come in two sets. The **development** set is what sendwise's features and models may be looked
at against while they are built; the **held-out** set (night shifts, commuters, office afternoons, weekends
earlier than weekdays, ...) is only ever used to judge them. Nothing in `features/`, `training/` or `serving/`
reads this module: the models learn every rhythm from the data.

`classic` is the simulator's first generator (one or two bumps at common times of day, weekends later), kept
draw for draw so that a classic world of a given seed is the same world it always was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOURS = 24


@dataclass(frozen=True)
class Bump:
    """A bump of activity around a local hour: its share of the day and how narrow it is (von Mises κ)."""

    hour: float
    weight: float
    kappa: tuple[float, float]


@dataclass(frozen=True)
class Family:
    """A recipe for rhythms.

    Weekday bumps move by N(0, `jitter`) hours per person and bump; their weights vary by a Dirichlet with
    `weight_concentration` around the recipe's. On weekends every bump moves by U(`weekend_shift`) hours (one
    draw per person; negative is earlier) and widens by `weekend_widen`, unless the family has `weekend_bumps`
    of its own. `floor` is the share of activity spread evenly over the day.
    """

    name: str
    weekday: tuple[Bump, ...]
    weekend_shift: tuple[float, float] = (0.5, 2.5)
    weekend_bumps: tuple[Bump, ...] = ()
    weekend_widen: float = 0.8
    jitter: float = 0.7
    weight_concentration: float = 30.0
    floor: tuple[float, float] = (0.03, 0.09)


DEVELOPMENT: tuple[Family, ...] = (
    Family(
        "office",
        (Bump(10.0, 0.4, (2.5, 5.0)), Bump(15.0, 0.6, (2.0, 4.0))),
        weekend_bumps=(Bump(12.0, 1.0, (1.5, 3.0)),),
    ),
    Family("evening", (Bump(20.5, 0.8, (2.0, 5.0)), Bump(7.5, 0.2, (3.0, 6.0))), weekend_shift=(0.5, 2.5)),
    Family("early riser", (Bump(6.0, 0.7, (2.5, 5.0)), Bump(18.0, 0.3, (2.0, 4.0))), weekend_shift=(1.5, 3.0)),
    Family("lunch break", (Bump(12.5, 0.6, (4.0, 7.0)), Bump(21.0, 0.4, (2.0, 4.0))), weekend_shift=(0.0, 1.5)),
)
"""Families sendwise may be developed against (with `classic`)."""

HELD_OUT: tuple[Family, ...] = (
    Family(
        "night shift",
        (Bump(23.0, 0.5, (2.0, 4.0)), Bump(3.5, 0.5, (2.0, 4.0))),
        weekend_shift=(-5.0, -2.0),
        jitter=1.0,
    ),
    Family(
        "commuter",
        (Bump(7.25, 0.35, (5.0, 9.0)), Bump(12.5, 0.2, (4.0, 8.0)), Bump(18.0, 0.45, (5.0, 9.0))),
        weekend_bumps=(Bump(13.0, 1.0, (1.2, 2.5)),),
        jitter=0.5,
    ),
    Family(
        "office afternoon",
        (Bump(13.5, 0.5, (2.0, 3.5)), Bump(16.5, 0.5, (2.0, 3.5))),
        weekend_bumps=(Bump(9.5, 0.7, (2.0, 4.0)), Bump(17.0, 0.3, (1.5, 3.0))),
    ),
    Family("weekend earlier", (Bump(21.5, 1.0, (2.0, 5.0)),), weekend_shift=(-13.0, -11.0)),
    Family("late night", (Bump(1.0, 0.75, (2.0, 4.0)), Bump(20.0, 0.25, (2.0, 4.0))), weekend_shift=(0.5, 3.0)),
    Family(
        "split day",
        (
            Bump(6.5, 0.25, (4.0, 7.0)),
            Bump(11.0, 0.25, (4.0, 7.0)),
            Bump(15.5, 0.25, (4.0, 7.0)),
            Bump(20.5, 0.25, (4.0, 7.0)),
        ),
        weekend_shift=(-1.0, 2.0),
        jitter=0.5,
    ),
)
"""Families nothing is tuned on: the targets are judged on worlds drawn from these."""

SETS: dict[str, tuple[Family, ...]] = {"development": DEVELOPMENT, "heldout": HELD_OUT}
CHOICES = ("classic", "development", "heldout")


def von_mises_mixture(
    centers: np.ndarray, weights: np.ndarray, kappa: np.ndarray, floor: np.ndarray | float
) -> np.ndarray:
    """[n, 24] share of the day per local hour: bumps on the 24-hour circle over a floor (rows sum to 1).

    `centers`, `weights` and `kappa` are [n, bumps]; `floor` is [n] or a scalar.
    """
    hours = np.arange(HOURS) + 0.5
    angle = 2 * np.pi * (hours[None, None, :] - centers[:, :, None]) / HOURS
    bumps = np.exp(kappa[:, :, None] * (np.cos(angle) - 1.0))
    bumps /= bumps.sum(axis=2, keepdims=True)
    floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), (len(centers),))[:, None]
    mixture = (1.0 - floor) * (weights[:, :, None] * bumps).sum(axis=1) + floor / HOURS
    return mixture / mixture.sum(axis=1, keepdims=True)


def _bumps(
    rng: np.random.Generator, bumps: tuple[Bump, ...], n: int, jitter: float, concentration: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centers = np.array([b.hour for b in bumps])[None, :] + rng.normal(0.0, jitter, (n, len(bumps)))
    recipe = np.array([b.weight for b in bumps])
    weights = rng.dirichlet(concentration * recipe / recipe.sum(), n) if len(bumps) > 1 else np.ones((n, 1))
    low = np.array([b.kappa[0] for b in bumps])
    high = np.array([b.kappa[1] for b in bumps])
    kappa = low + (high - low) * rng.random((n, len(bumps)))
    return centers, weights, kappa


def draw(rng: np.random.Generator, family: Family, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Weekday and weekend rhythms ([n, 24] each, rows sum to 1) of `n` people of `family`."""
    centers, weights, kappa = _bumps(rng, family.weekday, n, family.jitter, family.weight_concentration)
    floor = rng.uniform(*family.floor, n)
    weekday = von_mises_mixture(centers, weights, kappa, floor)
    if family.weekend_bumps:
        w_centers, w_weights, w_kappa = _bumps(rng, family.weekend_bumps, n, family.jitter, family.weight_concentration)
    else:
        shift = rng.uniform(*family.weekend_shift, (n, 1))
        w_centers, w_weights, w_kappa = centers + shift, weights, kappa * family.weekend_widen
    weekend = von_mises_mixture(w_centers, w_weights, w_kappa, floor)
    return weekday, weekend


def draw_population(rng: np.random.Generator, families: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weekday rhythms, weekend rhythms and each person's family name, for a `development` or `heldout` world
    (families equally common)."""
    chosen = SETS[families]
    which = rng.integers(0, len(chosen), n)
    weekday = np.empty((n, HOURS))
    weekend = np.empty((n, HOURS))
    for k, family in enumerate(chosen):
        rows = np.flatnonzero(which == k)
        weekday[rows], weekend[rows] = draw(rng, family, len(rows))
    names = np.array([family.name for family in chosen], dtype=object)[which]
    return weekday, weekend, names
