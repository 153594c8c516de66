"""The sender's constraints on send hours: quiet hours in local time, a per-hour cap, the global holdout.

Under a per-hour cap the batch's hours are one assignment: each recipient gets one hour of the window (or none
when no allowed hour has room), no hour gets more than its capacity, and the sum of the open probabilities at
the assigned hours is as high as the capacities allow. That is a transportation problem (a min-cost flow from
recipients to hours); `assign_hours` solves it exactly by successive shortest paths on the small graph of
hours, starting from everyone at their best allowed hour and moving the overflow of full hours along the
cheapest chains of moves. A result is integral by construction, and `optimality_gap` checks it: no chain of
moves that comes back to where it started (a negative cycle of the residual graph) could raise the total.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
import pandas as pd

HOLDOUT_SALT = "sendwise-global-holdout-v1"
_TOLERANCE = 1e-12


# --- the global holdout ---------------------------------------------------------------------------
def holdout_draw(customer_ids: Sequence[str], salt: str = HOLDOUT_SALT) -> np.ndarray:
    """A uniform number in [0, 1) per customer id, the same on every call and every machine (sha256 of the salt
    and the id): another salt draws another, independent holdout."""
    draws = np.empty(len(customer_ids))
    for i, customer_id in enumerate(customer_ids):
        digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
        draws[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return draws


def in_holdout(customer_ids: Sequence[str], share: float, salt: str = HOLDOUT_SALT) -> np.ndarray:
    """Whether each customer is in the global holdout of `share` of all customers, stably by id (and salt)."""
    if share <= 0.0:
        return np.zeros(len(customer_ids), dtype=bool)
    return holdout_draw(customer_ids, salt) < share


# --- quiet hours in local time --------------------------------------------------------------------
def local_window_clock(start: datetime, hours: int, zones: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """[n, hours] each: the local clock hour (0-23) and weekday (Monday 0) of each hour of the window in each
    row's zone (None or an unknown name: UTC), converted once per zone."""
    hour = np.empty((len(zones), hours), dtype=np.int64)
    weekday = np.empty((len(zones), hours), dtype=np.int64)
    by_zone: dict[str, list[int]] = {}
    for i, zone in enumerate(zones):
        by_zone.setdefault(zone or "UTC", []).append(i)
    for zone, rows in by_zone.items():
        hour[rows], weekday[rows] = _zone_window(start, hours, zone)
    return hour, weekday


@lru_cache(maxsize=4096)
def _zone_window(start: datetime, hours: int, zone: str) -> tuple[np.ndarray, np.ndarray]:
    """The local hours and weekdays of one window in one zone (windows repeat: every request of an hour)."""
    stamps = pd.date_range(start, periods=hours, freq="h", tz=UTC)
    try:
        local = stamps.tz_convert(zone)
    except (KeyError, ValueError):
        local = stamps
    hour, weekday = local.hour.to_numpy().astype(np.int64), local.dayofweek.to_numpy().astype(np.int64)
    hour.flags.writeable = weekday.flags.writeable = False
    return hour, weekday


def quiet(local_hours: np.ndarray, start: int, end: int) -> np.ndarray:
    """Whether each local hour is quiet: [start, end) on the clock, wrapping midnight when start > end."""
    if start < end:
        return (local_hours >= start) & (local_hours < end)
    return (local_hours >= start) | (local_hours < end)


def describe_quiet(start: int, end: int) -> str:
    """`22:00-06:59` for start 22, end 7."""
    return f"{start:02d}:00–{(end - 1) % 24:02d}:59"


# --- the per-hour cap -----------------------------------------------------------------------------
def hour_capacity(share: float, recipients: int) -> int:
    """The most recipients one hour may get: the share of the recipients that will be sent, rounded up."""
    return math.ceil(share * recipients - 1e-9) if recipients else 0


@dataclass
class Assignment:
    """One hour per row (-1: no allowed hour had room), and how the solution was reached."""

    hours: np.ndarray
    total: float
    augmentations: int


def best_allowed(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Each row's best allowed hour (-1 where none is allowed)."""
    masked = np.where(allowed, scores, -np.inf)
    best = masked.argmax(axis=1) if scores.shape[1] else np.zeros(len(scores), dtype=np.int64)
    return np.where(allowed.any(axis=1), best, -1)


def _total(scores: np.ndarray, hours: np.ndarray) -> float:
    rows = np.flatnonzero(hours >= 0)
    return float(scores[rows, hours[rows]].sum())


class _HourGraph:
    """The residual graph on hours: moving one member of hour a to hour b costs scores[a] - scores[b].

    The last node stands for "not sent" (unlimited room, a score of -penalty): the penalty exceeds any chain of
    moves (each changes the total by at most 1 and a shortest chain visits each hour once), so the most
    recipients that the capacities allow are always sent, and only then is the total maximized.
    """

    def __init__(self, scores: np.ndarray, allowed: np.ndarray, capacity: np.ndarray, hours: np.ndarray) -> None:
        n, width = scores.shape
        penalty = float(width + 1)
        self.value = np.concatenate([np.where(allowed, scores, -np.inf), np.full((n, 1), -penalty)], axis=1)
        self.capacity = np.append(capacity.astype(np.int64), n)
        self.hours = np.where(hours >= 0, hours, width)
        self.counts = np.bincount(self.hours, minlength=width + 1)
        self.nodes = width + 1
        self.cost = np.full((self.nodes, self.nodes), np.inf)
        self.mover = np.full((self.nodes, self.nodes), -1, dtype=np.int64)
        for a in range(self.nodes):
            self._refresh(a)

    def _refresh(self, a: int, columns: np.ndarray | None = None) -> None:
        """The cheapest member of hour a to move to each hour (only `columns` when given)."""
        members = np.flatnonzero(self.hours == a)
        columns = np.arange(self.nodes) if columns is None else columns
        if len(members) == 0:
            self.cost[a, columns] = np.inf
            self.mover[a, columns] = -1
            return
        moves = self.value[members, a][:, None] - self.value[np.ix_(members, columns)]
        cheapest = moves.argmin(axis=0)
        self.cost[a, columns] = moves[cheapest, np.arange(len(columns))]
        self.mover[a, columns] = members[cheapest]
        self.cost[a, a] = np.inf

    def move(self, member: int, a: int, b: int) -> None:
        self.hours[member] = b
        self.counts[a] -= 1
        self.counts[b] += 1
        stale = np.flatnonzero(self.mover[a] == member)
        if len(stale):
            self._refresh(a, stale)
        row = self.value[member, b] - self.value[member]
        better = row < self.cost[b]
        better[b] = False
        self.cost[b, better] = row[better]
        self.mover[b, better] = member

    def shortest_from(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bellman-Ford from the given nodes: (distance, predecessor) of every node."""
        distance = np.where(sources, 0.0, np.inf)
        previous = np.full(self.nodes, -1, dtype=np.int64)
        for _ in range(self.nodes):
            through = distance[:, None] + self.cost
            via = through.argmin(axis=0)
            candidate = through[via, np.arange(self.nodes)]
            better = candidate < distance - _TOLERANCE
            if not better.any():
                break
            distance[better] = candidate[better]
            previous[better] = via[better]
        return distance, previous

    def negative_cycle_gain(self) -> float:
        """How much some cycle of moves could still raise the total (0 when the assignment is optimal).

        Room in an hour closes a cycle too (a member of a full hour moves there and leaves a place behind): the
        sink node is reached from every hour with room and reaches every hour, at no cost.
        """
        nodes = self.nodes + 1
        cost = np.full((nodes, nodes), np.inf)
        cost[: self.nodes, : self.nodes] = self.cost
        cost[: self.nodes, -1] = np.where(self.counts < self.capacity, 0.0, np.inf)
        cost[-1, : self.nodes] = np.where(self.counts > 0, 0.0, np.inf)
        distance = np.zeros(nodes)
        for _ in range(nodes):
            distance = np.minimum(distance, (distance[:, None] + cost).min(axis=0))
        relaxed = np.minimum(distance, (distance[:, None] + cost).min(axis=0))
        return float(max(0.0, (distance - relaxed).max()))


def assign_hours(scores: np.ndarray, allowed: np.ndarray, capacity: np.ndarray | int) -> Assignment:
    """The hour per row that maximizes the summed scores with at most `capacity` rows per hour.

    `scores` [n, hours] are open probabilities in [0, 1], `allowed` [n, hours] the hours each row may get (every
    row needs one), `capacity` one number or one per hour. Rows that cannot all fit get -1, as few as the
    capacities allow. Exact: successive shortest paths from the best-hour start, so no run of moves improves it.
    """
    n, width = scores.shape
    capacity = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (width,)).copy()
    start = best_allowed(scores, allowed)
    if n == 0 or (np.bincount(start[start >= 0], minlength=width) <= capacity).all():
        return Assignment(hours=start, total=_total(scores, start), augmentations=0)
    graph = _HourGraph(scores, allowed, capacity, start)
    augmentations = 0
    while True:
        over = graph.counts > graph.capacity
        if not over.any():
            break
        distance, previous = graph.shortest_from(over)
        room = np.where(graph.counts < graph.capacity, distance, np.inf)
        target = int(room.argmin())
        if not np.isfinite(room[target]):
            raise RuntimeError("no hour has room and 'not sent' is unreachable: the capacities are inconsistent")
        path = [target]
        while previous[path[-1]] >= 0 and len(path) <= graph.nodes:
            path.append(int(previous[path[-1]]))
        # From the target back to the full hour: each mover leaves a node that no earlier move has touched.
        for b, a in itertools.pairwise(path):
            graph.move(int(graph.mover[a, b]), a, b)
        augmentations += 1
    hours = np.where(graph.hours == width, -1, graph.hours)
    return Assignment(hours=hours, total=_total(scores, hours), augmentations=augmentations)


def optimality_gap(scores: np.ndarray, allowed: np.ndarray, capacity: np.ndarray | int, hours: np.ndarray) -> float:
    """By how much a cycle of moves could still raise the total of `hours` (0.0 for an optimal assignment)."""
    width = scores.shape[1]
    capacity = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (width,)).copy()
    return _HourGraph(scores, allowed, capacity, hours).negative_cycle_gain()


# --- one batch's send hours -----------------------------------------------------------------------
@dataclass
class HourPlan:
    """The send hour of every row of a batch under its constraints, and what it took.

    `hours` is -1 for a row that is not sent (blocked before, or no allowed hour had room). `best` is the row's
    best allowed hour, `choice` the hour the policy gives it without exploration (the best allowed hour, or
    under a cap the assigned one), `propensity` the probability of the chosen hour under the policy.
    """

    hours: np.ndarray
    best: np.ndarray
    choice: np.ndarray
    allowed_hours: np.ndarray
    propensity: np.ndarray
    capacity: int | None
    no_room: np.ndarray


def _kth_allowed(allowed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """For each row, the allowed hour picked uniformly by its draw in [0, 1) (-1 where none is allowed)."""
    counts = allowed.sum(axis=1)
    k = np.minimum((draws * counts).astype(np.int64), np.maximum(counts - 1, 0))
    picked = (np.cumsum(allowed, axis=1) > k[:, None]).argmax(axis=1)
    return np.where(counts > 0, picked, -1)


def plan_hours(
    curves: np.ndarray,
    allowed: np.ndarray,
    sendable: np.ndarray,
    explore: np.ndarray,
    draws: np.ndarray,
    explore_share: float,
    max_share_per_hour: float | None,
) -> HourPlan:
    """Send hours for a batch: exploration on a random allowed hour, the rest on their best allowed hour, or,
    under a per-hour cap, by the assignment that keeps the most expected opens.

    Explorers take their (random, allowed) hour first and count against the cap; when the hour drawn is full,
    the same draw picks among the allowed hours that still have room. Propensities are exact without a cap:
    share/A + (1 - share) on the hour the policy would choose, A being the row's number of allowed hours.
    Under a cap the hour the policy would choose depends on the rest of the batch, so they are approximate.
    """
    width = curves.shape[1]
    allowed = allowed & sendable[:, None]
    best = best_allowed(curves, allowed)
    counts = allowed.sum(axis=1)
    explore = explore & sendable & (counts > 0)
    hours = np.where(sendable, best, -1)
    capacity = None
    if max_share_per_hour is not None:
        capacity = hour_capacity(max_share_per_hour, int((sendable & (counts > 0)).sum()))
        room = np.full(width, capacity, dtype=np.int64)
        for i in np.flatnonzero(explore):
            open_hours = allowed[i] & (room > 0)
            h = int(_kth_allowed(open_hours[None, :], draws[i : i + 1])[0])
            hours[i] = h
            if h >= 0:
                room[h] -= 1
        rest = np.flatnonzero(sendable & ~explore & (counts > 0))
        hours[rest] = assign_hours(curves[rest], allowed[rest], room).hours
    else:
        hours[explore] = _kth_allowed(allowed[explore], draws[explore])
    choice = np.where(explore, best, hours)
    share = explore_share
    uniform = np.where(counts > 0, share / np.maximum(counts, 1), 0.0)
    propensity = uniform + np.where(hours == choice, 1.0 - share, 0.0)
    no_room = sendable & (counts > 0) & (hours < 0)
    return HourPlan(
        hours=hours,
        best=best,
        choice=choice,
        allowed_hours=counts,
        propensity=propensity,
        capacity=capacity,
        no_room=no_room,
    )
